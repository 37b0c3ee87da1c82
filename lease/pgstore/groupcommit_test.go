package pgstore

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// Concurrent conditional writes share commits, but one caller's conflict
// (a taken request id, a stale version) fails only that caller: every
// other write of the same group is stored.
func TestGroupCommitConflictsStayOwn(t *testing.T) {
	c, _ := replicas(t, 1)
	var mu sync.Mutex
	biggest := 0
	s, err := Open(bg, c, WithCommitObserver(func(n int, _ time.Duration, _ error) {
		mu.Lock()
		biggest = max(biggest, n)
		mu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const n = 40
	ls := make([]lease.Lease, n)
	for i := range ls {
		ls[i] = testLease(t, lease.StateCreating)
	}
	ls[1].RequestID, ls[2].RequestID = "same-key", "same-key" // one of them must lose
	versions := make([]int64, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range ls {
		wg.Go(func() { versions[i], errs[i] = s.Create(bg, ls[i], time.Minute) })
	}
	wg.Wait()
	lost, lostIdx := 0, -1
	for i, err := range errs {
		switch {
		case (i == 1 || i == 2) && errors.Is(err, lease.ErrRequestExists):
			lost, lostIdx = lost+1, i
		case err != nil:
			t.Errorf("Create %d: %v", i, err)
		}
	}
	if lost != 1 {
		t.Fatalf("%d of the two creates with one request id lost, want 1", lost)
	}
	mu.Lock()
	t.Logf("the largest commit carried %d writes", biggest)
	if biggest < 2 {
		t.Error("no commit carried more than one write: the group commit was not exercised")
	}
	mu.Unlock()
	if _, err := s.Create(bg, ls[0], time.Minute); !errors.Is(err, lease.ErrExists) || errors.Is(err, lease.ErrRequestExists) {
		t.Errorf("Create of a taken id: %v, want ErrExists", err)
	}

	// Activate all at once, one of them at a stale version.
	for i := range ls {
		if i == lostIdx {
			continue
		}
		wg.Go(func() {
			l := ls[i]
			l.State = lease.StateActive
			v := versions[i]
			if i == 5 {
				v-- // stale
			}
			versions[i], errs[i] = s.PutIfVersion(bg, l, v, 0)
		})
	}
	wg.Wait()
	for i := range ls {
		got, err := s.Get(bg, ls[i].ID)
		switch {
		case i == 5:
			if !errors.Is(errs[i], lease.ErrConflict) || err != nil || got.State != lease.StateCreating {
				t.Errorf("the stale write: %v; stored %s, %v", errs[i], got.State, err)
			}
		case i == lostIdx:
			if !errors.Is(err, lease.ErrNotFound) {
				t.Errorf("the lost create stored something: %+v, %v", got, err)
			}
		case errs[i] != nil || err != nil || got.State != lease.StateActive:
			t.Errorf("lease %d: activation %v; stored %s, %v", i, errs[i], got.State, err)
		}
	}
}
