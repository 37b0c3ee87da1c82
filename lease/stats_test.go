package lease

import (
	"context"
	"testing"
	"time"
)

func TestStats(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	restored := makeLease(t, clock.Now(), time.Minute, time.Hour)
	restored.State = StateRevoking
	restored.Role = "writer"
	env := newEnv(t, func(c *Config) { c.Now = clock.Now }, restored)
	env.clock = clock
	if err := env.m.Load(ctx); err != nil {
		t.Fatal(err)
	}
	loadedAt := clock.Now()
	// The restored REVOKING lease is dropped by the expiry loop, which
	// does not run here: it stays REVOKING.
	a := env.issue(t, time.Minute, time.Hour)
	b := env.issue(t, time.Minute, time.Hour)
	env.issue(t, time.Minute, time.Hour)

	s := env.m.Stats()
	want := map[State]int{StateCreating: 0, StateActive: 3, StateRevoking: 1}
	for st, n := range want {
		if s.ByState[st] != n {
			t.Errorf("ByState[%s] = %d, want %d", st, s.ByState[st], n)
		}
	}
	if s.ByRole["readonly"] != 3 || s.ByRole["writer"] != 1 {
		t.Errorf("ByRole = %v, want readonly 3, writer 1", s.ByRole)
	}
	if !s.OldestRevoking.Equal(loadedAt) {
		t.Errorf("OldestRevoking = %v, want %v", s.OldestRevoking, loadedAt)
	}

	// A failing drop leaves b REVOKING since now; the revoked a is gone.
	clock.Advance(time.Second)
	failedAt := clock.Now()
	env.backend.set(func(fb *fakeBackend) {
		fb.dropErr = func(l Lease, n int) error {
			if l.ID == b.ID {
				return errDB
			}
			return nil
		}
	})
	if _, err := env.m.Revoke(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := env.m.Revoke(ctx, b.ID); err == nil {
		t.Fatal("revoke b: want the drop's error")
	}
	if _, err := env.m.Revoke(ctx, restored.ID); err != nil {
		t.Fatal(err)
	}
	s = env.m.Stats()
	if s.ByState[StateActive] != 1 || s.ByState[StateRevoking] != 1 {
		t.Errorf("ByState = %v, want 1 ACTIVE, 1 REVOKING", s.ByState)
	}
	if s.ByRole["readonly"] != 2 || s.ByRole["writer"] != 0 {
		t.Errorf("ByRole = %v, want readonly 2 and no writer", s.ByRole)
	}
	if !s.OldestRevoking.Equal(failedAt) {
		t.Errorf("OldestRevoking = %v, want %v", s.OldestRevoking, failedAt)
	}

	env.backend.set(func(fb *fakeBackend) { fb.dropErr = nil })
	if _, err := env.m.Revoke(ctx, b.ID); err != nil {
		t.Fatal(err)
	}
	if s = env.m.Stats(); !s.OldestRevoking.IsZero() || s.ByState[StateRevoking] != 0 {
		t.Errorf("after recovery: %+v, want no REVOKING lease", s)
	}
}

// TestRevokingQueueCompacts: leases that pass through REVOKING while an
// older one stays stuck do not pile up.
func TestRevokingQueueCompacts(t *testing.T) {
	var q revokingQueue
	stuck := &entry{st: uint8(StateRevoking)}
	q.push(stuck, time.Unix(1, 0), 1)
	for i := range 1000 {
		e := &entry{st: uint8(StateRevoking)}
		q.push(e, time.Unix(int64(i+2), 0), 2)
		e.gone = true
	}
	if n := len(q.items) - q.head; n > 130 {
		t.Errorf("queue holds %d items for 1 live one", n)
	}
	if got := q.oldest(); !got.Equal(time.Unix(1, 0)) {
		t.Errorf("oldest = %v", got)
	}
}
