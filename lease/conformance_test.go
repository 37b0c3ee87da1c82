package lease_test

import (
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/leasetest"
)

func TestConformance(t *testing.T) {
	leasetest.Run(t, leasetest.Harness{
		Open:      func(*testing.T) lease.Store { return lease.NewMemStore() },
		NoReopen:  "a MemStore keeps nothing across Close: it is for tests, never a broker",
		NoCorrupt: "a MemStore holds decoded leases, there are no bytes to damage",
		NoMissing: "a MemStore is made, never opened from somewhere",
	})
}

// TestSharedConformance runs the SharedStore suite on views of one
// MemStore (the replicas) on a fake clock.
func TestSharedConformance(t *testing.T) {
	var mu sync.Mutex
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	leasetest.RunShared(t, leasetest.SharedHarness{
		Open: func(*testing.T) func(*testing.T, string) lease.SharedStore {
			s := lease.NewMemStore()
			s.SetClock(clock)
			return func(_ *testing.T, replica string) lease.SharedStore { return s.Shared(replica) }
		},
		Now: clock,
		Sleep: func(d time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			now = now.Add(d)
		},
	})
}
