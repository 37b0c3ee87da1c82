package pgstore

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// nopBackend drops and extends nothing.
type nopBackend struct{}

func (nopBackend) Drop(context.Context, lease.Lease) error   { return nil }
func (nopBackend) Extend(context.Context, lease.Lease) error { return nil }

// A replica's memory does not grow with the leases the store holds (issue
// 10): a lease.Shared running on a store of 100,000 leases, listing one
// owner's, counting them for metrics and claiming, holds what it held on
// an empty one. The in-memory lease.Manager holds ~280 B per lease
// (docs/performance.md §4): 27 MB for these.
func TestSharedMemoryFlat(t *testing.T) {
	if testing.Short() {
		t.Skip("puts 100,000 leases")
	}
	const n = 100_000
	_, ss := replicas(t, 1)
	s := ss[0]
	m, err := lease.NewShared(lease.Config{Store: s, Backend: nopBackend{}, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()

	work := func() {
		t.Helper()
		if _, err := m.List(bg, lease.Query{Owner: "spiffe://example.org/someone"}); err != nil {
			t.Fatal(err)
		}
		m.Stats()
		time.Sleep(300 * time.Millisecond) // a few claim rounds
	}
	heap := func() uint64 {
		runtime.GC()
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	work()
	before := heap()

	ls := make([]lease.Lease, n)
	for i := range ls {
		ls[i] = testLease(t, lease.StateActive) // expiring in an hour: none due
	}
	if err := s.PutAll(bg, ls); err != nil {
		t.Fatal(err)
	}
	ls = nil
	time.Sleep(2 * time.Second) // past the Stats cache
	work()
	if st := m.Stats(); st.ByState[lease.StateActive] != n {
		t.Fatalf("Stats counts %d ACTIVE leases, want %d", st.ByState[lease.StateActive], n)
	}
	after := heap()
	growth := int64(after) - int64(before)
	t.Logf("heap %d KiB with an empty store, %d KiB with %d leases in it (%+d KiB)", before>>10, after>>10, n, growth>>10)
	// A bound far below a byte per lease: what is left is noise (pools,
	// caches of the runtime), not leases.
	if growth > 2<<20 {
		t.Errorf("the heap grew by %d KiB with %d leases in the store: a replica must not hold them", growth>>10, n)
	}
}
