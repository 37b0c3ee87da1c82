package broker

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// racingStore is a lease.Store whose Denied runs during, once, a write
// that the replica reading makes meanwhile.
type racingStore struct {
	lease.Store
	during func()
}

func (s *racingStore) Denied(ctx context.Context) (map[string]time.Time, error) {
	out, err := s.Store.Denied(ctx)
	if f := s.during; f != nil {
		s.during = nil
		f() // after the read: the write is missing from out
	}
	return out, err
}

// Replicas sharing a store: reload takes what another replica changed, and
// never undoes what this replica wrote while it read.
func TestRegistryReload(t *testing.T) {
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	at := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	x, y := "spiffe://example.org/x", "spiffe://example.org/y"
	mem := lease.NewMemStore()
	store := &racingStore{Store: mem}
	r, err := openRegistry(ctx, store, "")
	if err != nil {
		t.Fatal(err)
	}
	r.shared = true
	other, err := openRegistry(ctx, mem, "")
	if err != nil {
		t.Fatal(err)
	}
	other.shared = true

	if err := other.deny(ctx, x, at); err != nil {
		t.Fatal(err)
	}
	if err := r.allowed(x); err != nil {
		t.Fatalf("before the reload: %v", err)
	}
	if err := r.reload(ctx, log); err != nil {
		t.Fatal(err)
	}
	if err := r.allowed(x); !errors.Is(err, errDeregistered) {
		t.Fatalf("after the reload, deregistered elsewhere: %v, want errDeregistered", err)
	}

	// This replica denies y while it reads: the read is repeated.
	store.during = func() {
		if err := r.deny(ctx, y, at); err != nil {
			t.Error(err)
		}
	}
	if err := r.reload(ctx, log); err != nil {
		t.Fatal(err)
	}
	if err := r.allowed(y); !errors.Is(err, errDeregistered) {
		t.Fatalf("own deny during a reload undone: %v", err)
	}

	// Lifted elsewhere; this replica's copy lags but its allow writes
	// through all the same, and its deny too.
	if _, err := other.allow(ctx, y); err != nil {
		t.Fatal(err)
	}
	if err := r.deny(ctx, y, at); err != nil {
		t.Fatal(err)
	}
	wantDenied(t, mem, map[string]time.Time{x: at, y: at})
	if _, err := other.allow(ctx, x); err != nil {
		t.Fatal(err)
	}
	if err := other.deny(ctx, x, at); err != nil { // other's copy says x is allowed: it writes
		t.Fatal(err)
	}
	if was, err := r.allow(ctx, x); err != nil || !was {
		t.Fatalf("allow = %v, %v", was, err)
	}
	if _, err := other.allow(ctx, y); err != nil {
		t.Fatal(err)
	}
	wantDenied(t, mem, map[string]time.Time{})
	if err := r.reload(ctx, log); err != nil {
		t.Fatal(err)
	}
	if err := r.allowed(y); err != nil {
		t.Fatalf("after the reload, lifted elsewhere: %v", err)
	}
}

// With a shared store, the SPIRE sweep revokes only while its replica
// leads; taking the leadership over, it sweeps the last listing at once.
// Listings still reach the registry either way (admission needs them).
func TestSweepRevokesOnlyWhileLeading(t *testing.T) {
	_, sweep, m, b, now := listServer(t)
	sweep.shared = true
	kept, gone := "spiffe://example.org/kept", "spiffe://example.org/gone"
	issueFor(t, m, kept, *now)
	issueFor(t, m, gone, *now)
	listing := map[string]time.Time{kept: *now}
	drops := func() int {
		b.mu.Lock()
		defer b.mu.Unlock()
		return len(b.drops)
	}

	sweep.observe(context.Background(), *now, listing)
	if n := drops(); n != 0 {
		t.Fatalf("%d leases revoked by a replica that does not lead", n)
	}
	if reg, ok := sweep.registry.registered(gone); !ok || reg {
		t.Fatalf("registered(gone) = %v, %v: the listing did not reach the registry", reg, ok)
	}

	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- sweep.lead(ctx) }()
	deadline := time.Now().Add(5 * time.Second)
	for drops() != 1 {
		if time.Now().After(deadline) {
			t.Fatal("taking the leadership over did not sweep the last listing")
		}
		time.Sleep(5 * time.Millisecond)
	}
	issueFor(t, m, gone, *now)
	sweep.observe(context.Background(), now.Add(time.Second), listing)
	if n := drops(); n != 2 {
		t.Fatalf("%d leases revoked while leading, want 2", n)
	}

	stop()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	issueFor(t, m, gone, *now)
	sweep.observe(context.Background(), now.Add(2*time.Second), listing)
	if n := drops(); n != 2 {
		t.Fatalf("%d leases revoked, want still 2 after the leadership ended", n)
	}
}
