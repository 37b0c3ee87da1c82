package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// sharedEnv is N Shared managers (replicas) on one MemStore, one fake
// backend and one fake clock (the store's and the replicas').
type sharedEnv struct {
	store   *MemStore
	backend *fakeBackend
	clock   *fakeClock
	rs      []*Shared
}

func newSharedEnv(t *testing.T, n int, tweak func(*Config)) *sharedEnv {
	t.Helper()
	env := &sharedEnv{store: NewMemStore(), backend: newFakeBackend(), clock: newFakeClock()}
	env.store.SetClock(env.clock.Now)
	for i := range n {
		cfg := Config{
			Store:   env.store.Shared(fmt.Sprintf("replica-%d", i)),
			Backend: env.backend,
			Now:     env.clock.Now,
			Logger:  slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
		}
		if tweak != nil {
			tweak(&cfg)
		}
		m, err := NewShared(cfg)
		if err != nil {
			t.Fatalf("NewShared: %v", err)
		}
		t.Cleanup(m.wg.Wait)
		env.rs = append(env.rs, m)
	}
	return env
}

func (env *sharedEnv) issue(t *testing.T, r int, ttl, maxTTL time.Duration) Lease {
	t.Helper()
	l, err := env.rs[r].Issue(bg, makeLease(t, env.clock.Now(), ttl, maxTTL), waitIntent)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	return l
}

// tick makes replica r claim and start what is due, and waits for it.
func (env *sharedEnv) tick(t *testing.T, r int) int {
	t.Helper()
	if _, _, err := env.rs[r].claim(bg); err != nil {
		t.Fatalf("claim: %v", err)
	}
	n := env.rs[r].ProcessDue(bg)
	env.rs[r].wg.Wait()
	return n
}

func TestSharedNeedsSharedStore(t *testing.T) {
	if _, err := NewShared(Config{Store: NewMemStore(), Backend: newFakeBackend()}); !errors.Is(err, errNoShared) {
		t.Fatalf("NewShared on a plain Store: %v, want errNoShared", err)
	}
}

// Every call works through every replica: issued on 0, renewed on 1,
// listed on 2, revoked on 1.
func TestSharedCrossReplica(t *testing.T) {
	env := newSharedEnv(t, 3, nil)
	l := env.issue(t, 0, time.Minute, time.Hour)
	if l.State != StateActive {
		t.Fatalf("issued %s", l.State)
	}
	env.clock.Advance(10 * time.Second)
	r, err := env.rs[1].Renew(bg, l.ID, 5*time.Minute)
	if err != nil {
		t.Fatalf("Renew on replica 1: %v", err)
	}
	if want := env.clock.Now().Add(5 * time.Minute); !r.ExpireTime.Equal(want) {
		t.Fatalf("renewed to %s, want %s", r.ExpireTime, want)
	}
	ls, err := env.rs[2].List(bg, Query{Owner: l.Owner})
	if err != nil || len(ls) != 1 || !ls[0].ExpireTime.Equal(r.ExpireTime) {
		t.Fatalf("List on replica 2 = %+v, %v; want the renewed lease", ls, err)
	}
	if got, err := env.rs[2].FindRequest(bg, l.Owner, "none"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("FindRequest of an unknown id = %+v, %v", got, err)
	}
	ended, err := env.rs[1].Revoke(bg, l.ID)
	if err != nil || ended.State != StateRevoked {
		t.Fatalf("Revoke on replica 1 = %s, %v", ended.State, err)
	}
	if n := env.backend.Drops(l.ID); n != 1 {
		t.Fatalf("%d drops, want 1", n)
	}
	if _, err := env.rs[0].Get(bg, l.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("Get after revoke: %v", err)
	}
	if _, err := env.rs[2].Revoke(bg, l.ID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Revoke: %v", err)
	}
}

// Due leases are claimed by one replica each and dropped exactly once,
// whichever replicas poll.
func TestSharedExpirySplitAcrossReplicas(t *testing.T) {
	env := newSharedEnv(t, 3, func(c *Config) { c.RevokeRate = 1000; c.RevokeConcurrency = 16 })
	var ids []string
	for i := range 100 {
		ids = append(ids, env.issue(t, i%3, time.Minute+time.Duration(i)*time.Millisecond, time.Hour).ID)
	}
	env.clock.Advance(time.Minute + time.Second)
	for round := 0; round < 10 && env.store.Len() > 0; round++ {
		for r := range env.rs {
			env.tick(t, r)
		}
	}
	if n := env.store.Len(); n != 0 {
		t.Fatalf("%d leases left after expiry", n)
	}
	for _, id := range ids {
		if n := env.backend.Drops(id); n != 1 {
			t.Errorf("lease %s dropped %d times", id, n)
		}
	}
}

// A replica that claimed a lease must not revoke it once another replica
// renewed it: the renew bumps the version and the claimer's REVOKING
// write conflicts.
func TestSharedRenewFencesClaimer(t *testing.T) {
	env := newSharedEnv(t, 2, nil)
	l := env.issue(t, 0, time.Minute, time.Hour)
	env.clock.Advance(time.Minute - 500*time.Millisecond) // within the lookahead
	if n, _, err := env.rs[0].claim(bg); err != nil || n != 1 {
		t.Fatalf("claim = %d, %v; want the lease", n, err)
	}
	if _, err := env.rs[1].Renew(bg, l.ID, time.Hour); err != nil {
		t.Fatalf("Renew through the other replica: %v", err)
	}
	env.clock.Advance(time.Second) // the old expiry has passed
	if n := env.rs[0].ProcessDue(bg); n != 1 {
		t.Fatalf("ProcessDue started %d", n)
	}
	env.rs[0].wg.Wait()
	if n := env.backend.Drops(l.ID); n != 0 {
		t.Fatalf("the renewed lease's user was dropped %d times", n)
	}
	got, err := env.rs[1].Get(bg, l.ID)
	if err != nil || got.State != StateActive {
		t.Fatalf("after the fenced expiry: %+v, %v", got, err)
	}
}

// A replica cut off from the store drops nothing: its REVOKING write
// fails, and the lease is revoked by another once the claim lapses.
func TestSharedStoreLossDropsNothing(t *testing.T) {
	env := newSharedEnv(t, 2, nil)
	l := env.issue(t, 0, time.Minute, time.Hour)
	env.clock.Advance(time.Minute)
	if n, _, err := env.rs[0].claim(bg); err != nil || n != 1 {
		t.Fatalf("claim = %d, %v", n, err)
	}
	env.store.SetFailPut(func(Lease) error { return errors.New("network cut") })
	env.rs[0].ProcessDue(bg)
	env.rs[0].wg.Wait()
	if n := env.backend.Drops(l.ID); n != 0 {
		t.Fatalf("dropped %d times without recording REVOKING", n)
	}
	env.store.SetFailPut(nil)
	// Claimed by replica 0: replica 1 must wait for the claim to lapse.
	if n := env.tick(t, 1); n != 0 {
		t.Fatalf("replica 1 started %d revocations of a claimed lease", n)
	}
	env.clock.Advance(env.rs[0].claimTTL() + time.Millisecond)
	env.tick(t, 1)
	if n := env.backend.Drops(l.ID); n != 1 || env.store.Len() != 0 {
		t.Fatalf("after the claim lapsed: %d drops, %d leases left", n, env.store.Len())
	}
}

// An issuance whose replica died (the CREATING record stays, claimed by
// it) is cleaned up by another once the hold lapses, not before.
func TestSharedAbandonedCreation(t *testing.T) {
	env := newSharedEnv(t, 2, nil)
	l := makeLease(t, env.clock.Now(), time.Minute, time.Hour)
	l.State = StateCreating
	dead := env.store.Shared("dead-replica")
	if _, err := dead.Create(bg, l, 2*defaultIssueTimeout); err != nil {
		t.Fatal(err)
	}
	if _, err := env.rs[1].Revoke(bg, l.ID); !errors.Is(err, ErrWrongState) {
		t.Fatalf("Revoke of a CREATING lease: %v", err)
	}
	env.clock.Advance(2*defaultIssueTimeout - time.Millisecond)
	env.tick(t, 1)
	if n := env.backend.Drops(l.ID); n != 0 {
		t.Fatalf("dropped %d times while its hold lasts", n)
	}
	env.clock.Advance(2 * time.Millisecond)
	env.tick(t, 1)
	if n := env.backend.Drops(l.ID); n != 1 || env.store.Len() != 0 {
		t.Fatalf("after the hold: %d drops, %d leases left", n, env.store.Len())
	}
}

// A replica too slow to activate (its hold lapsed and another replica
// claimed the record) hands out nothing, and the user is dropped.
func TestSharedSlowIssuanceFenced(t *testing.T) {
	env := newSharedEnv(t, 2, nil)
	l := makeLease(t, env.clock.Now(), time.Minute, time.Hour)
	var once sync.Once
	_, err := env.rs[0].Issue(bg, l, func(ctx context.Context, intent func(context.Context) error) error {
		if err := intent(ctx); err != nil {
			return err
		}
		once.Do(func() {
			env.clock.Advance(2*defaultIssueTimeout + time.Millisecond)
			env.tick(t, 1) // the other replica claims and drops it
		})
		return nil
	})
	if !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, ErrConflict) {
		t.Fatalf("Issue after its hold lapsed: %v", err)
	}
	if env.store.Len() != 0 || env.backend.Drops(l.ID) < 1 {
		t.Fatalf("%d leases left, %d drops", env.store.Len(), env.backend.Drops(l.ID))
	}
}

// A failed drop leaves the lease REVOKING with its backoff as a hold; any
// replica retries it after the backoff, and the metrics see it.
func TestSharedFailedDropRetriedByAnyReplica(t *testing.T) {
	env := newSharedEnv(t, 2, nil)
	l := env.issue(t, 0, time.Minute, time.Hour)
	env.backend.set(func(b *fakeBackend) {
		b.dropErr = func(_ Lease, n int) error {
			if n == 1 {
				return errors.New("database down")
			}
			return nil
		}
	})
	if _, err := env.rs[0].Revoke(bg, l.ID); err == nil {
		t.Fatal("Revoke with a failing drop succeeded")
	}
	got, err := env.rs[1].Get(bg, l.ID)
	if err != nil || got.State != StateRevoking || got.Attempts != 1 || got.LastError == "" {
		t.Fatalf("after a failed drop: %+v, %v", got, err)
	}
	if st := env.rs[1].Stats(); st.ByState[StateRevoking] != 1 || st.OldestRevoking.IsZero() {
		t.Fatalf("Stats = %+v", st)
	}
	if n := env.tick(t, 1); n != 0 {
		t.Fatalf("retried %d before the backoff", n)
	}
	env.clock.Advance(defaultBackoffBase + time.Millisecond)
	env.tick(t, 1)
	if n := env.backend.Drops(l.ID); n != 2 || env.store.Len() != 0 {
		t.Fatalf("after the backoff: %d drops, %d left", n, env.store.Len())
	}
}

// Concurrent Revoke calls on one replica share one drop.
func TestSharedConcurrentRevokeOneDrop(t *testing.T) {
	env := newSharedEnv(t, 1, nil)
	l := env.issue(t, 0, time.Minute, time.Hour)
	release := make(chan struct{})
	env.backend.set(func(b *fakeBackend) { b.dropHook = func(context.Context, Lease) { <-release } })
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() { _, errs[i] = env.rs[0].Revoke(bg, l.ID) })
	}
	time.Sleep(50 * time.Millisecond)
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("Revoke %d: %v", i, err)
		}
	}
	if n := env.backend.Drops(l.ID); n != 1 {
		t.Fatalf("%d drops, want 1", n)
	}
}

// An idempotency key is unique among all replicas' leases.
func TestSharedRequestIDAcrossReplicas(t *testing.T) {
	env := newSharedEnv(t, 2, nil)
	l := makeLease(t, env.clock.Now(), time.Minute, time.Hour)
	l.RequestID = "req-1"
	if _, err := env.rs[0].Issue(bg, l, waitIntent); err != nil {
		t.Fatal(err)
	}
	l2 := makeLease(t, env.clock.Now(), time.Minute, time.Hour)
	l2.RequestID = "req-1"
	if _, err := env.rs[1].Issue(bg, l2, waitIntent); !errors.Is(err, ErrRequestExists) {
		t.Fatalf("second issuance with the key: %v", err)
	}
	got, err := env.rs[1].FindRequest(bg, l.Owner, "req-1")
	if err != nil || got.ID != l.ID {
		t.Fatalf("FindRequest = %+v, %v", got, err)
	}
	if env.store.Len() != 1 {
		t.Fatalf("%d leases stored", env.store.Len())
	}
}

// Run revokes on time with the real clock, on whichever replica runs.
func TestSharedRunRealClock(t *testing.T) {
	store := NewMemStore()
	backend := newFakeBackend()
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	var rs []*Shared
	for i := range 3 {
		m, err := NewShared(Config{Store: store.Shared(fmt.Sprint(i)), Backend: backend, PollInterval: 50 * time.Millisecond, Lookahead: 100 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, m)
		wg.Go(func() { _ = m.Run(ctx) })
	}
	defer func() { cancel(); wg.Wait() }()
	now := time.Now()
	var ids []string
	for i := range 30 {
		l, err := rs[i%3].Issue(bg, makeLease(t, now, 200*time.Millisecond, time.Hour), waitIntent)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, l.ID)
	}
	deadline := time.Now().Add(10 * time.Second)
	for store.Len() > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if store.Len() != 0 {
		t.Fatalf("%d leases left", store.Len())
	}
	for _, id := range ids {
		if n := backend.Drops(id); n != 1 {
			t.Errorf("%s dropped %d times", id, n)
		}
	}
}

// A replica whose claim came back full claims again as soon as its queue
// has room, not a poll interval later: 100 due leases with BatchSize 8 and
// a 10 s poll interval are all revoked within seconds (a poll-paced loop
// would take two minutes), each once.
func TestSharedRunWorksThroughBacklog(t *testing.T) {
	store := NewMemStore()
	backend := newFakeBackend()
	m, err := NewShared(Config{Store: store.Shared("a"), Backend: backend, BatchSize: 8, PollInterval: 10 * time.Second,
		Lookahead: 100 * time.Millisecond, RevokeConcurrency: 4, RevokeRate: 10000})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var ids []string
	for range 100 {
		l, err := m.Issue(bg, makeLease(t, now, 300*time.Millisecond, time.Hour), waitIntent)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, l.ID)
	}
	time.Sleep(time.Until(now.Add(300 * time.Millisecond)))
	ctx, cancel := context.WithCancel(bg)
	var wg sync.WaitGroup
	wg.Go(func() { _ = m.Run(ctx) })
	defer func() { cancel(); wg.Wait() }()
	start := time.Now()
	for store.Len() > 0 && time.Since(start) < 9*time.Second {
		time.Sleep(10 * time.Millisecond)
	}
	if n := store.Len(); n != 0 {
		t.Fatalf("%d of 100 due leases left after %s: claims wait for the poll interval", n, time.Since(start).Round(time.Millisecond))
	}
	t.Logf("100 due leases revoked in %s with BatchSize 8 and a 10s poll interval", time.Since(start).Round(time.Millisecond))
	for _, id := range ids {
		if n := backend.Drops(id); n != 1 {
			t.Errorf("%s dropped %d times", id, n)
		}
	}
}
