package pgstore

import (
	"slices"
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

// The writes of a shared store are reported the same way; those that
// conflict wrote nothing and are not.
func TestCommitObserverShared(t *testing.T) {
	c := testConfig(t)
	if err := Init(bg, c); err != nil {
		t.Fatalf("Init: %v", err)
	}
	var (
		mu      sync.Mutex
		commits []int
	)
	s, err := Open(bg, c, WithCommitObserver(func(n int, took time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if err != nil {
			t.Errorf("commit of %d writes failed: %v", n, err)
		}
		commits = append(commits, n)
	}))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()

	l := testLease(t, lease.StateCreating)
	v, err := s.Create(bg, l, time.Minute) // 1
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(bg, l, time.Minute); err == nil { // taken: none
		t.Fatal("second Create succeeded")
	}
	l.State, l.ExpireTime = lease.StateActive, time.Now().Add(-time.Second)
	if v, err = s.PutIfVersion(bg, l, v, 0); err != nil { // 1
		t.Fatal(err)
	}
	if _, err := s.PutIfVersion(bg, l, v+5, 0); err == nil { // conflict: none
		t.Fatal("PutIfVersion at a wrong version succeeded")
	}
	if err := s.Put(bg, testLease(t, lease.StateRevoking)); err != nil { // 1
		t.Fatal(err)
	}
	cl, err := s.ClaimDue(bg, lease.ClaimRequest{Limit: 10, TTL: time.Minute}) // 2
	if err != nil || len(cl.Leases) != 2 {
		t.Fatalf("ClaimDue = %d leases, %v; want 2", len(cl.Leases), err)
	}
	if _, err := s.ClaimDue(bg, lease.ClaimRequest{Limit: 10, TTL: time.Minute}); err != nil { // nothing due: none
		t.Fatal(err)
	}
	if err := s.DeleteIfVersion(bg, l.ID, v); err == nil { // conflict (claimed since): none
		t.Fatal("DeleteIfVersion at a stale version succeeded")
	}
	for _, c := range cl.Leases {
		if c.Lease.ID == l.ID {
			if err := s.DeleteIfVersion(bg, l.ID, c.Version); err != nil { // 1
				t.Fatal(err)
			}
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []int{1, 1, 1, 2, 1}; !slices.Equal(commits, want) {
		t.Errorf("commits reported %v, want %v", commits, want)
	}
}
