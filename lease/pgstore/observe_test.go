package pgstore

import (
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// TestCommitObserver: each Put and Delete is reported as a commit of one
// write, a PutAll as one commit of all its leases, and a failed write with
// its error.
func TestCommitObserver(t *testing.T) {
	c := testConfig(t)
	if err := Init(bg, c); err != nil {
		t.Fatalf("Init: %v", err)
	}
	var (
		mu      sync.Mutex
		commits []int
		failed  int
	)
	s, err := Open(bg, c, WithCommitObserver(func(n int, took time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if took <= 0 {
			t.Errorf("commit of %d writes took %v", n, took)
		}
		if err != nil {
			failed++
			return
		}
		commits = append(commits, n)
	}))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()

	a, b := testLease(t, lease.StateActive), testLease(t, lease.StateActive)
	for _, l := range []lease.Lease{a, b} {
		if err := s.Put(bg, l); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutAll(bg, []lease.Lease{testLease(t, lease.StateActive), testLease(t, lease.StateActive), testLease(t, lease.StateActive)}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(bg, a.ID); err != nil {
		t.Fatal(err)
	}
	// A write the server refuses: a table that is gone.
	exec(t, c, `DROP TABLE `+quoteIdent(c.Schema)+`.leases`)
	if err := s.Put(bg, testLease(t, lease.StateActive)); err == nil {
		t.Fatal("Put into a dropped table succeeded")
	}

	mu.Lock()
	defer mu.Unlock()
	want := []int{1, 1, 3, 1}
	if len(commits) != len(want) {
		t.Fatalf("commits reported %v, want %v", commits, want)
	}
	for i := range want {
		if commits[i] != want[i] {
			t.Fatalf("commits reported %v, want %v", commits, want)
		}
	}
	if failed != 1 {
		t.Errorf("failed commits reported: %d, want 1", failed)
	}
}
