package pgstore

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// TestLead: of two stores competing for one leadership, one runs fn at a
// time; when the leader's lock session is killed, its fn is told
// (ErrNotLeading) and the other takes over; another name is led
// independently.
func TestLead(t *testing.T) {
	c, rs := replicas(t, 2)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	timing := LeadTiming{Retry: 100 * time.Millisecond, Check: 100 * time.Millisecond}

	var running atomic.Int32 // fns running now, over both stores
	var overlap atomic.Bool
	started := make(chan int, 8)
	lost := make(chan error, 8)
	done := make(chan struct{}, 2)
	for i, s := range rs {
		go func() {
			defer func() { done <- struct{}{} }()
			_ = s.Lead(ctx, "registry", timing, func(ctx context.Context) error {
				if running.Add(1) > 1 {
					overlap.Store(true)
				}
				defer running.Add(-1)
				started <- i
				<-ctx.Done()
				if err := context.Cause(ctx); errors.Is(err, ErrNotLeading) {
					lost <- err
				}
				return nil
			})
		}()
	}
	first := <-started
	// Another name has a leader of its own at the same time.
	other := make(chan struct{})
	go func() {
		_ = rs[0].Lead(ctx, "reconciler", timing, func(ctx context.Context) error {
			close(other)
			<-ctx.Done()
			return nil
		})
	}()
	select {
	case <-other:
	case <-time.After(5 * time.Second):
		t.Fatal("the leadership of another name was not taken")
	}
	select {
	case i := <-started:
		t.Fatalf("store %d leads too while store %d leads", i, first)
	case <-time.After(500 * time.Millisecond):
	}

	// Kill the leader's lock session: it must learn of it, and the other
	// store must take over.
	k1, k2 := leadKey1, leadKey2(c.Schema, "registry")
	exec(t, c, `SELECT pg_terminate_backend(pid) FROM pg_locks
		WHERE locktype = 'advisory' AND classid = $1 AND objid = $2 AND objsubid = 2`, k1, k2)
	select {
	case err := <-lost:
		t.Logf("the leader was told: %v", err)
	case <-time.After(5 * time.Second):
		t.Fatal("the leader whose session was killed was not told")
	}
	select {
	case i := <-started:
		t.Logf("store %d leads after store %d lost it", i, first)
	case <-time.After(5 * time.Second):
		t.Fatal("nobody took over the leadership")
	}
	if overlap.Load() {
		t.Error("two stores ran fn at the same time")
	}
	cancel()
	<-done
	<-done
}
