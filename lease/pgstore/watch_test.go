package pgstore

import (
	"context"
	"testing"
	"time"
)

// TestWatchDenied: a replica watching the denylist hears of a Deny and an
// Allow committed by another within a second, and again after its
// listening connection was killed.
func TestWatchDenied(t *testing.T) {
	c, rs := replicas(t, 2)
	a, b := rs[0], rs[1]
	ctx, cancel := context.WithCancel(context.Background())
	calls := make(chan struct{}, 16)
	done := make(chan error, 1)
	go func() {
		done <- b.WatchDenied(ctx, func() { calls <- struct{}{} })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("WatchDenied: %v", err)
		}
	}()
	wait := func(what string, within time.Duration) {
		t.Helper()
		select {
		case <-calls:
		case <-time.After(within):
			t.Fatalf("%s: no call within %s", what, within)
		}
	}
	wait("listening", 5*time.Second)

	id := "spiffe://example.org/orders/api"
	start := time.Now()
	if err := a.Deny(bg, id, time.Now()); err != nil {
		t.Fatal(err)
	}
	wait("deny", time.Second)
	t.Logf("deny heard by the other replica after %v", time.Since(start).Round(time.Millisecond))
	if d, err := b.Denied(bg); err != nil || d[id].IsZero() {
		t.Fatalf("the watcher's store does not see the deny: %v %v", d, err)
	}
	if err := a.Allow(bg, id); err != nil {
		t.Fatal(err)
	}
	wait("allow", time.Second)

	// The listening connection dies: the watcher connects again and calls
	// changed, since notifications sent meanwhile are lost.
	exec(t, c, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
		WHERE query LIKE 'LISTEN %' AND datname = current_database()`)
	wait("reconnected", 5*time.Second)
	if err := a.Deny(bg, id, time.Now()); err != nil {
		t.Fatal(err)
	}
	wait("deny after reconnect", time.Second)
}
