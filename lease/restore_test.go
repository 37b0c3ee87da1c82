package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"
)

// deferredEnv is a Manager on a store that checked its records when opened
// (a Verifier, as boltstore.Store) holding stored, restored with DeferLoad.
// The same path on a real bbolt file is tested in lease/boltstore.
func deferredEnv(t *testing.T, stored ...Lease) (*Manager, *fakeBackend, *fakeClock, verifiedStore) {
	t.Helper()
	s := verifiedStore{MemStore: NewMemStore()}
	if err := PutAll(context.Background(), s, stored); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	backend, clock := newFakeBackend(), newFakeClock()
	m, err := NewManager(Config{Store: s, Backend: backend, Now: clock.Now,
		Logger: slog.New(slog.NewTextHandler(testWriter{t}, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return m, backend, clock, s
}

func TestDeferLoad(t *testing.T) {
	clock := newFakeClock()
	old := makeLease(t, clock.Now(), time.Hour, 2*time.Hour)
	old.State = StateActive
	overdue := makeLease(t, clock.Now().Add(-2*time.Hour), time.Hour, 2*time.Hour)
	overdue.State = StateActive
	m, backend, _, _ := deferredEnv(t, old, overdue)
	ctx := context.Background()
	if err := m.DeferLoad(ctx); err != nil {
		t.Fatalf("DeferLoad: %v", err)
	}
	if err := m.DeferLoad(ctx); err == nil {
		t.Error("second DeferLoad succeeded")
	}
	select {
	case <-m.Restored():
		t.Fatal("Restored closed before Run")
	default:
	}

	// Before the restore: issuing works, the expiry loop does nothing, and
	// whatever needs the old leases waits.
	fresh := makeLease(t, clock.Now(), time.Hour, 2*time.Hour)
	if err := m.begin(ctx, fresh); err != nil {
		t.Fatalf("Begin before restore: %v", err)
	}
	if _, err := m.activate(ctx, fresh.ID); err != nil {
		t.Fatalf("Activate before restore: %v", err)
	}
	gone := makeLease(t, clock.Now(), time.Hour, 2*time.Hour)
	if err := m.begin(ctx, gone); err != nil {
		t.Fatal(err)
	}
	if _, err := m.activate(ctx, gone.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Revoke(ctx, gone.ID); err != nil {
		t.Fatalf("Revoke of a lease issued during the restore: %v", err)
	}
	if n := m.ProcessDue(ctx); n != 0 {
		t.Errorf("ProcessDue before restore started %d", n)
	}
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	if _, err := m.Renew(short, old.ID, time.Minute); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Renew of a restoring lease = %v, want to wait until ctx ends", err)
	}
	cancel()
	got := make(chan bool)
	go func() {
		_, ok := get(m, old.ID)
		got <- ok
	}()
	select {
	case <-got:
		t.Fatal("Get of a restoring lease returned before the restore")
	case <-time.After(20 * time.Millisecond):
	}

	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error)
	go func() { done <- m.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	if ok := <-got; !ok {
		t.Error("Get after the restore: not found")
	}
	<-m.Restored()

	var ids []string
	for _, l := range list(t, m, nil) {
		ids = append(ids, l.ID)
	}
	for _, want := range []string{old.ID, fresh.ID} {
		if !slices.Contains(ids, want) {
			t.Errorf("List lacks %s", want)
		}
	}
	if slices.Contains(ids, gone.ID) {
		t.Errorf("lease revoked during the restore came back")
	}
	// The restored index holds the leases begun meanwhile too.
	checkIndex(t, m)
	if own, err := m.List(ctx, Query{Owner: fresh.Owner, After: fresh.ID[:31]}); err != nil || len(own) == 0 {
		t.Errorf("List by owner after the restore: %v %v", own, err)
	}
	// The overdue restored lease is revoked by the running loop.
	deadline := time.Now().Add(5 * time.Second)
	for backend.Drops(overdue.ID) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("overdue restored lease never revoked")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A store whose check at open found a record that would not load is
// refused by DeferLoad itself, before anything is served. (boltstore's
// TestDeferLoadRefusesUndecodableRecord does it with a damaged file.)
func TestDeferLoadRefusesUndecodableStore(t *testing.T) {
	clock := newFakeClock()
	good := makeLease(t, clock.Now(), time.Hour, 2*time.Hour)
	good.State = StateActive
	s := verifiedStore{MemStore: NewMemStore(good), invalid: fmt.Errorf("record %q: %w", "0000", ErrStoreCorrupt)}
	m, err := NewManager(Config{Store: s, Backend: newFakeBackend(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DeferLoad(context.Background()); !errors.Is(err, ErrStoreCorrupt) {
		t.Errorf("DeferLoad = %v, want ErrStoreCorrupt", err)
	}
}

// A deferred restore that fails leaves nothing that looks like an answer:
// Run returns the error, and List and Get return it instead of a partial or
// empty list (which an orphan reconciler would take for "no leases").
func TestDeferLoadFailureIsReported(t *testing.T) {
	clock := newFakeClock()
	l := makeLease(t, clock.Now(), time.Hour, 2*time.Hour)
	l.State = StateActive
	m, _, _, s := deferredEnv(t, l)
	if err := m.DeferLoad(context.Background()); err != nil {
		t.Fatal(err)
	}
	// The store fails under the restore: closed, as by a dying disk.
	s.Close()
	if err := m.Run(context.Background()); err == nil {
		t.Fatal("Run over a failing restore returned nil")
	}
	<-m.Restored()
	if ls, err := m.List(context.Background(), Query{}); err == nil {
		t.Errorf("List after a failed restore = %d leases, nil error", len(ls))
	}
	if _, err := m.Get(context.Background(), l.ID); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Get after a failed restore = %v, want the restore's error", err)
	}
	if _, err := m.Revoke(context.Background(), l.ID); err == nil || errors.Is(err, ErrNotFound) {
		t.Errorf("Revoke after a failed restore = %v, want the restore's error", err)
	}
}

func TestDeferLoadUncheckedStoreLoadsAtOnce(t *testing.T) {
	clock := newFakeClock()
	l := makeLease(t, clock.Now(), time.Hour, 2*time.Hour)
	l.State = StateActive
	env := newEnv(t, nil, l)
	if err := env.m.DeferLoad(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-env.m.Restored():
	default:
		t.Fatal("MemStore: not restored when DeferLoad returned")
	}
	mustState(t, env.m, l.ID, StateActive)
}
