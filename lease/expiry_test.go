package lease

import (
	"context"
	"errors"
	"math"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestLoad(t *testing.T) {
	clock := newFakeClock()
	now := clock.Now()
	mk := func(state State, expireIn time.Duration) Lease {
		l := makeLease(t, now.Add(-2*time.Hour), 0, 10*time.Hour)
		l.ExpireTime = now.Add(expireIn)
		l.State = state
		return l
	}
	var (
		creatingOK   = mk(StateCreating, time.Hour)
		creatingFail = mk(StateCreating, time.Hour)
		active       = mk(StateActive, time.Hour)
		overdue      = mk(StateActive, -time.Hour)
		revoking     = mk(StateRevoking, time.Hour)
	)
	revoking.Attempts, revoking.LastError = 3, "earlier failure"

	env := newEnv(t, func(c *Config) { c.Now = clock.Now },
		creatingOK, creatingFail, active, overdue, revoking)
	env.clock = clock
	env.backend.set(func(b *fakeBackend) {
		b.dropErr = func(l Lease, n int) error {
			if l.ID == creatingFail.ID && n == 1 {
				return errDB
			}
			return nil
		}
	})
	if err := env.m.Load(bg); err != nil {
		t.Fatalf("Load: %v", err)
	}

	t.Run("creating dropped and deleted", func(t *testing.T) {
		if env.backend.Drops(creatingOK.ID) != 1 {
			t.Error("not dropped")
		}
		if _, ok := get(env.m, creatingOK.ID); ok {
			t.Error("still in memory")
		}
		if _, ok := storedLease(env.store, creatingOK.ID); ok {
			t.Error("still stored")
		}
	})
	t.Run("creating whose drop failed is revoking", func(t *testing.T) {
		got := mustState(t, env.m, creatingFail.ID, StateRevoking)
		if got.LastError != errDB.Error() || got.Attempts != 1 {
			t.Errorf("lease = %+v", got)
		}
		if s, _ := storedLease(env.store, creatingFail.ID); s.State != StateRevoking || s.LastError == "" {
			t.Errorf("stored = %+v", s)
		}
		if _, ok := env.m.queuedAt(creatingFail.ID); !ok {
			t.Error("not queued for retry")
		}
	})
	t.Run("active queued at expiry", func(t *testing.T) {
		mustState(t, env.m, active.ID, StateActive)
		if at, ok := env.m.queuedAt(active.ID); !ok || !at.Equal(active.ExpireTime) {
			t.Errorf("queued at %v, %v; want %v", at, ok, active.ExpireTime)
		}
	})
	t.Run("revoking queued now", func(t *testing.T) {
		got := mustState(t, env.m, revoking.ID, StateRevoking)
		if got.Attempts != 3 {
			t.Errorf("attempts = %d", got.Attempts)
		}
		if at, ok := env.m.queuedAt(revoking.ID); !ok || at.After(now) {
			t.Errorf("queued at %v, %v; want now", at, ok)
		}
	})
	t.Run("ProcessDue revokes the overdue and the revoking", func(t *testing.T) {
		if n := env.drain(); n != 2 {
			t.Fatalf("started %d, want 2", n)
		}
		for _, id := range []string{overdue.ID, revoking.ID} {
			if _, ok := get(env.m, id); ok {
				t.Errorf("%s not revoked", id)
			}
		}
		mustState(t, env.m, active.ID, StateActive)
		if env.backend.Drops(active.ID) != 0 {
			t.Error("dropped a lease before its expiry")
		}
		if got := env.store.Len(); got != 2 { // active + creatingFail
			t.Errorf("stored %d, want 2", got)
		}
	})
	t.Run("second Load refused", func(t *testing.T) {
		if err := env.m.Load(bg); err == nil {
			t.Error("second Load succeeded")
		}
	})
}

func TestLoadErrors(t *testing.T) {
	bad := makeLease(t, time.Now(), time.Hour, time.Hour)
	bad.State = StateRevoked // never stored by this package
	tests := []struct {
		name    string
		leases  []Lease
		scanErr bool
		wantErr error
	}{
		{name: "scan fails", scanErr: true, wantErr: ErrStoreUnavailable},
		{name: "unknown state", leases: []Lease{bad}, wantErr: ErrStoreCorrupt},
		{name: "bad id", leases: []Lease{{ID: "x", State: StateActive}}, wantErr: ErrStoreCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newEnv(t, nil, tt.leases...)
			if tt.scanErr {
				env.store.SetFailScan(func() error { return errDB })
			}
			if err := env.m.Load(bg); !errors.Is(err, tt.wantErr) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			if got := list(t, env.m, nil); len(got) != 0 {
				t.Errorf("failed Load left %d leases", len(got))
			}
			if env.backend.TotalDrops() != 0 {
				t.Error("failed Load dropped users")
			}
		})
	}
}

// TestOverdueStormRateLimited: after the clock jumps hours ahead (or the
// broker restarts after downtime), every lease is overdue. ProcessDue never
// starts more than the token bucket and the batch size allow, and in the end
// revokes them all.
func TestOverdueStormRateLimited(t *testing.T) {
	const (
		leases    = 300
		rate      = 20.0
		batchSize = 8
		tick      = 150 * time.Millisecond
	)
	clock := newFakeClock()
	var stored []Lease
	for i := 0; i < leases; i++ {
		l := makeLease(t, clock.Now(), time.Duration(i)*time.Second, 24*time.Hour)
		l.State = StateActive
		stored = append(stored, l)
	}
	env := newEnv(t, func(c *Config) {
		c.Now = clock.Now
		c.RevokeRate = rate
		c.BatchSize = batchSize
		c.RevokeConcurrency = 100
	}, stored...)
	env.clock = clock
	if err := env.m.Load(bg); err != nil {
		t.Fatal(err)
	}
	clock.Advance(5 * time.Hour)
	start := clock.Now()
	burst := min(batchSize, int(math.Ceil(rate)))
	total := 0
	for i := 0; total < leases; i++ {
		if i > 10*leases {
			t.Fatalf("only %d of %d revoked after %d wake-ups", total, leases, i)
		}
		n := env.drain()
		if n > batchSize {
			t.Fatalf("wake-up %d started %d > batch size %d", i, n, batchSize)
		}
		total += n
		// Token bucket: in any window, at most burst + rate × elapsed.
		elapsed := clock.Now().Sub(start).Seconds()
		if limit := float64(burst) + rate*elapsed; float64(total) > limit+1e-9 {
			t.Fatalf("after %.2fs: %d started, limit %.1f", elapsed, total, limit)
		}
		clock.Advance(tick)
	}
	if got := env.backend.TotalDrops(); got != leases {
		t.Errorf("drops = %d, want %d", got, leases)
	}
	if env.store.Len() != 0 || len(list(t, env.m, nil)) != 0 {
		t.Error("leases left after the storm")
	}
	for _, l := range stored {
		if n := env.backend.Drops(l.ID); n != 1 {
			t.Fatalf("lease %s dropped %d times", l.ID, n)
		}
	}
}

func TestProcessDueConcurrencyBound(t *testing.T) {
	env := newEnv(t, func(c *Config) { c.RevokeConcurrency = 3; c.RevokeRate = 1000; c.BatchSize = 100 })
	for i := 0; i < 10; i++ {
		env.issue(t, time.Minute, time.Hour)
	}
	env.clock.Advance(time.Hour)
	release := make(chan struct{})
	var running, peak atomic.Int32
	env.backend.set(func(b *fakeBackend) {
		b.dropHook = func(context.Context, Lease) {
			n := running.Add(1)
			for {
				p := peak.Load()
				if n <= p || peak.CompareAndSwap(p, n) {
					break
				}
			}
			<-release
			running.Add(-1)
		}
	})
	if n := env.m.ProcessDue(bg); n != 3 {
		t.Fatalf("first wake-up started %d, want 3", n)
	}
	if n := env.m.ProcessDue(bg); n != 0 {
		t.Fatalf("wake-up with all slots busy started %d", n)
	}
	close(release)
	env.m.wg.Wait()
	for env.drain() > 0 {
	}
	if p := peak.Load(); p > 3 {
		t.Errorf("peak concurrent drops = %d, want <= 3", p)
	}
	if got := env.backend.TotalDrops(); got != 10 {
		t.Errorf("drops = %d, want 10", got)
	}
}

func TestProcessDueSkipsBusyLease(t *testing.T) {
	env := newEnv(t, nil)
	l := env.issue(t, time.Minute, time.Hour)
	env.clock.Advance(time.Minute)
	// Hold the lease as a slow Renew or Revoke would.
	e := env.m.leases[l.ID]
	e.opc() <- struct{}{}
	if n := env.drain(); n != 0 {
		t.Fatalf("started %d on a busy lease", n)
	}
	at, ok := env.m.queuedAt(l.ID)
	if !ok || !at.After(env.clock.Now()) {
		t.Fatalf("busy lease queued at %v, %v; want shortly after now", at, ok)
	}
	e.unlock()
	env.clock.Advance(busyRetry)
	if n := env.drain(); n != 1 {
		t.Fatalf("started %d after release, want 1", n)
	}
	if _, ok := get(env.m, l.ID); ok {
		t.Error("lease not revoked")
	}
}

func TestExpiredStateReported(t *testing.T) {
	env := newEnv(t, nil)
	l := env.issue(t, time.Minute, time.Hour)
	release := make(chan struct{})
	entered := make(chan struct{})
	env.backend.set(func(b *fakeBackend) {
		b.dropHook = func(context.Context, Lease) { close(entered); <-release }
	})
	env.clock.Advance(time.Minute)
	if n := env.m.ProcessDue(bg); n != 1 {
		t.Fatalf("started %d", n)
	}
	<-entered
	got := mustState(t, env.m, l.ID, StateRevoking)
	if !got.Expired {
		t.Error("expiry-driven revocation not marked Expired")
	}
	if s, _ := storedLease(env.store, l.ID); s.State != StateRevoking || !s.Expired {
		t.Errorf("stored = %+v, want REVOKING expired", s)
	}
	// A Revoke now joins the expiry's attempt.
	done := make(chan Lease)
	go func() {
		fin, err := env.m.Revoke(bg, l.ID)
		if err != nil && !errors.Is(err, ErrNotFound) {
			t.Errorf("Revoke: %v", err)
		}
		done <- fin
	}()
	close(release)
	if fin := <-done; fin.ID != "" && fin.State != StateExpired {
		t.Errorf("joined Revoke got state %s, want EXPIRED", fin.State)
	}
	env.m.wg.Wait()
	if n := env.backend.Drops(l.ID); n != 1 {
		t.Errorf("drops = %d, want 1", n)
	}
}

// TestRun uses the real clock with short expiries: Run revokes what
// expires, wakes early for a lease queued ahead of the others, and returns
// when ctx ends.
func TestRun(t *testing.T) {
	store, backend := NewMemStore(), newFakeBackend()
	m, err := NewManager(Config{Store: store, Backend: backend})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Load(bg); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()

	issue := func(ttl time.Duration) Lease {
		l := makeLease(t, time.Now(), ttl, time.Hour)
		if err := m.begin(bg, l); err != nil {
			t.Fatal(err)
		}
		if _, err := m.activate(bg, l.ID); err != nil {
			t.Fatal(err)
		}
		return l
	}
	long := issue(time.Hour)
	var short []Lease
	for i := 0; i < 5; i++ {
		short = append(short, issue(time.Duration(10+5*i)*time.Millisecond))
	}
	gone := func() bool {
		for _, l := range short {
			if _, ok := get(m, l.ID); ok {
				return false
			}
		}
		return true
	}
	deadline := time.Now().Add(10 * time.Second)
	for !gone() {
		if time.Now().After(deadline) {
			t.Fatalf("only %d of %d expired leases revoked", backend.TotalDrops(), len(short))
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if got := backend.TotalDrops(); got != len(short) {
		t.Errorf("drops = %d, want %d", got, len(short))
	}
	mustState(t, m, long.ID, StateActive)
	if store.Len() != 1 {
		t.Errorf("stored %d, want 1", store.Len())
	}
	if err := m.Run(bg); err == nil {
		t.Error("second Run succeeded")
	}
}

// TestRunWaitsForRevocations: Run returns only after the revocations it
// started have returned.
func TestRunWaitsForRevocations(t *testing.T) {
	store, backend := NewMemStore(), newFakeBackend()
	m, err := NewManager(Config{Store: store, Backend: backend})
	if err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	var returned atomic.Bool
	backend.set(func(b *fakeBackend) {
		b.dropHook = func(ctx context.Context, _ Lease) {
			close(entered)
			<-ctx.Done() // a drop that hangs until shutdown
			time.Sleep(20 * time.Millisecond)
			returned.Store(true)
		}
	})
	l := makeLease(t, time.Now(), time.Millisecond, time.Hour)
	if err := m.begin(bg, l); err != nil {
		t.Fatal(err)
	}
	if _, err := m.activate(bg, l.ID); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(bg)
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("expiry loop never dropped the expired lease")
	}
	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v", err)
	}
	if !returned.Load() {
		t.Fatal("Run returned before its revocation goroutine")
	}
	// The cancelled drop counts as a failed attempt; the lease waits for a
	// retry (after a restart, Load retries REVOKING leases).
	got := mustState(t, m, l.ID, StateRevoking)
	if got.Attempts != 1 || got.LastError == "" {
		t.Errorf("lease = %+v", got)
	}
}

func TestTokenBucket(t *testing.T) {
	start := newFakeClock().Now()
	tests := []struct {
		name  string
		steps []time.Duration // clock offsets from start, one per step
		takes []int           // tokens taken at each step (all available if -1)
		want  []int           // available before taking, at each step
	}{
		{name: "starts full", steps: []time.Duration{0}, takes: []int{-1}, want: []int{10}},
		{name: "refills at rate", steps: []time.Duration{0, 100 * time.Millisecond, 350 * time.Millisecond},
			takes: []int{-1, -1, -1}, want: []int{10, 2, 5}},
		{name: "jump forward caps at burst", steps: []time.Duration{0, 5 * time.Hour}, takes: []int{-1, 0}, want: []int{10, 10}},
		{name: "clock back then forward counts once", steps: []time.Duration{0, -time.Hour, -time.Hour + 200*time.Millisecond},
			takes: []int{-1, 0, 0}, want: []int{10, 0, 4}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := newTokenBucket(20, 10, start)
			for i, off := range tt.steps {
				now := start.Add(off)
				got := b.available(now)
				if got != tt.want[i] {
					t.Fatalf("step %d: available = %d, want %d", i, got, tt.want[i])
				}
				n := tt.takes[i]
				if n < 0 {
					n = got
				}
				for j := 0; j < n; j++ {
					b.take(now)
				}
				if got-n < 1 {
					if w := b.wait(now); w <= 0 || w > 50*time.Millisecond {
						t.Fatalf("step %d: wait = %v, want in (0, 50ms]", i, w)
					}
				}
			}
		})
	}
}

// TestOnEnd: the hook sees every ended lease once, with expired set only
// for the one the expiry loop revoked.
func TestOnEnd(t *testing.T) {
	var mu sync.Mutex
	ended := map[string]bool{}
	states := map[string]State{}
	env := newEnv(t, func(c *Config) {
		c.OnEnd = func(l Lease, expired bool) {
			mu.Lock()
			defer mu.Unlock()
			if _, dup := ended[l.ID]; dup {
				t.Errorf("OnEnd called twice for %s", l.ID)
			}
			ended[l.ID], states[l.ID] = expired, l.State
		}
	})
	short := env.issue(t, time.Minute, time.Hour)
	long := env.issue(t, time.Hour, time.Hour)
	if _, err := env.m.Revoke(bg, long.ID); err != nil {
		t.Fatal(err)
	}
	env.clock.Advance(time.Minute)
	if n := env.m.ProcessDue(bg); n != 1 {
		t.Fatalf("started %d, want 1", n)
	}
	env.m.wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	want := map[string]bool{short.ID: true, long.ID: false}
	wantState := map[string]State{short.ID: StateExpired, long.ID: StateRevoked}
	for id, exp := range want {
		if got, ok := ended[id]; !ok || got != exp || states[id] != wantState[id] {
			t.Errorf("lease %s: OnEnd (called %v, expired %v, state %s), want expired %v, state %s", id, ok, got, states[id], exp, wantState[id])
		}
	}
}
