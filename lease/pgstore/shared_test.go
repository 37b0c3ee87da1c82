package pgstore

import (
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/leasetest"
)

// TestSharedConformance runs the lease.SharedStore suite on a real
// PostgreSQL with password auth: each subtest's replicas are stores opened
// with Open on one schema of its own, on the database's clock (real
// time, the test machine's: short holds are slept through).
func TestSharedConformance(t *testing.T) {
	serverConfig(t) // skip, with the reason, before any subtest
	leasetest.RunShared(t, leasetest.SharedHarness{
		Open: func(t *testing.T) func(t *testing.T, replica string) lease.SharedStore {
			c := testConfig(t)
			if err := Init(bg, c); err != nil {
				t.Fatalf("Init: %v", err)
			}
			return func(t *testing.T, replica string) lease.SharedStore {
				rc := c
				rc.Replica = replica
				s, err := Open(bg, rc)
				if err != nil {
					t.Fatalf("Open: %v", err)
				}
				return s
			}
		},
		Now:   time.Now,
		Sleep: time.Sleep,
		Hold:  200 * time.Millisecond,
	})
}
