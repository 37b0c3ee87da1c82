// Package leasetest is the conformance suite of lease.Store: every store
// (lease/boltstore, lease.MemStore, a shared PostgreSQL store) must pass
// Run. It checks the Store contract through the Store interface and,
// through a lease.Manager with a fake Backend, that a restart on the store
// restores every state as package lease documents.
//
// A store's test calls Run with a Harness:
//
//	func TestConformance(t *testing.T) {
//		leasetest.Run(t, leasetest.Harness{
//			Open:   func(t *testing.T) lease.Store { ... },
//			Reopen: func(t *testing.T, s lease.Store) lease.Store { ... },
//			...
//		})
//	}
//
// What a store cannot do (be reopened, be corrupted, be missing) the
// harness says with a reason, and the subtests that need it are skipped
// with that reason; without either, they fail.
//
// A lease.SharedStore (lease/pgstore) must pass RunShared too, with a
// SharedHarness that opens several stores (replicas) on one backing store
// and says how to let time pass on the stores' clock (shared.go).
package leasetest

import (
	"testing"

	"github.com/credbroker/credbroker/lease"
)

// Harness makes, and where it can reopens and breaks, the stores Run tests.
type Harness struct {
	// Open returns a new, empty store. Required. Run closes every store
	// it gets from the harness.
	Open func(t *testing.T) lease.Store

	// Reopen, if set, closes s and opens the same store again, as a
	// broker's restart does, and returns it.
	Reopen func(t *testing.T, s lease.Store) lease.Store
	// NoReopen is why the store cannot be reopened (required when Reopen
	// is nil): the subtests that need it are skipped with it.
	NoReopen string

	// Corrupt, if set, closes s, damages what it stored so that the lease
	// with id can no longer be read back (its record undecodable, as a bad
	// disk or a bad write leaves it), and opens the store again. It returns
	// the reopened store, or the error with which opening it failed, which
	// must then wrap lease.ErrStoreCorrupt.
	Corrupt func(t *testing.T, s lease.Store, id string) (lease.Store, error)
	// NoCorrupt is why the store's data cannot be damaged (required when
	// Corrupt is nil).
	NoCorrupt string

	// OpenMissing, if set, opens a store that does not exist, the way a
	// broker opens its store, and returns the error: it must wrap
	// lease.ErrStoreMissing (a store that vanished is lost leases, never
	// "no leases").
	OpenMissing func(t *testing.T) error
	// NoMissing is why the store cannot be missing (required when
	// OpenMissing is nil).
	NoMissing string
}

// skipWithout skips t with reason when the harness lacks an ability, and
// fails it if the harness gives no reason either: nothing is skipped
// silently.
func skipWithout(t *testing.T, has bool, ability, reason string) {
	t.Helper()
	if has {
		return
	}
	if reason == "" {
		t.Fatalf("leasetest: the harness has no %s and gives no reason (set Harness.No%s)", ability, ability)
	}
	t.Skipf("the harness has no %s: %s", ability, reason)
}
