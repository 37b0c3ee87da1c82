package lease_test

import (
	"testing"

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
