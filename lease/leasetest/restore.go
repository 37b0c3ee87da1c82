package leasetest

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// clock is a settable clock for lease.Config.Now.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// eventually polls cond until it holds, or fails t after a while.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func gone(s lease.Store, id string) bool {
	_, err := s.Get(bg, id)
	return errors.Is(err, lease.ErrNotFound)
}

// testRestore restarts a Manager on a store holding every state: CREATING
// is dropped and deleted, ACTIVE queued at its expiry (an overdue one
// revoked at once), REVOKING retried at once.
func testRestore(t *testing.T, h Harness, deferred bool) {
	e := open(t, h)
	owner := "spiffe://example.org/a"
	creating := newLease(t, lease.StateCreating, owner)
	active := newLease(t, lease.StateActive, owner)
	overdue := newLease(t, lease.StateActive, owner)
	overdue.ExpireTime = base.Add(-time.Minute)
	revoking := newLease(t, lease.StateRevoking, owner)
	revoking.LastError, revoking.Attempts = "drop: connection refused", 2
	put(t, e.s, creating, active, overdue, revoking)
	if deferred && h.Reopen != nil {
		e.reopen(t) // a Verifier checks its records at open
	}

	clk := &clock{now: base.UTC()}
	backend := NewBackend()
	m, err := lease.NewManager(lease.Config{Store: e.s, Backend: backend, Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	stopRun := func() {}
	if deferred {
		if err := m.DeferLoad(bg); err != nil {
			t.Fatalf("DeferLoad: %v", err)
		}
		ctx, cancel := context.WithCancel(bg)
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		stopRun = func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
		defer stopRun()
		select {
		case <-m.Restored():
		case <-time.After(10 * time.Second):
			t.Fatal("restore never finished")
		}
	} else if err := m.Load(bg); err != nil {
		t.Fatalf("Load: %v", err)
	}

	// CREATING: dropped and deleted by the restore itself.
	if n := backend.Drops(creating.ID); n != 1 {
		t.Errorf("CREATING lease dropped %d times, want 1", n)
	}
	mustBeGone(t, e.s, creating.ID)
	if _, err := m.Get(bg, creating.ID); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("Manager.Get of the CREATING lease = %v, want ErrNotFound", err)
	}
	if l, err := m.Get(bg, active.ID); err != nil || l.State != lease.StateActive {
		t.Errorf("ACTIVE lease restored as %+v, %v", l, err)
	}

	// Overdue ACTIVE and REVOKING: revoked at once.
	if !deferred {
		if n := m.ProcessDue(bg); n != 2 {
			t.Errorf("ProcessDue started %d revocations, want 2 (overdue, REVOKING)", n)
		}
	}
	eventually(t, "the overdue and REVOKING leases to be dropped and deleted", func() bool {
		return backend.Drops(overdue.ID) == 1 && backend.Drops(revoking.ID) == 1 &&
			gone(e.s, overdue.ID) && gone(e.s, revoking.ID)
	})

	// ACTIVE: queued at its expiry, not before.
	if n := backend.Drops(active.ID); n != 0 {
		t.Fatalf("ACTIVE lease dropped %d times before its expiry", n)
	}
	mustGet(t, e.s, active)
	clk.Advance(time.Hour + time.Second)
	if !deferred {
		if n := m.ProcessDue(bg); n != 1 {
			t.Errorf("ProcessDue at expiry started %d revocations, want 1", n)
		}
	}
	eventually(t, "the ACTIVE lease to be revoked at its expiry", func() bool {
		return backend.Drops(active.ID) == 1 && gone(e.s, active.ID)
	})
	if got := scan(t, e.s, lease.Filter{}); len(got) != 0 {
		t.Errorf("%d records left after every lease ended", len(got))
	}
}
