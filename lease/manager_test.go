package lease

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"testing"
	"time"
)

var bg = context.Background()

func TestNewManagerConfig(t *testing.T) {
	store, backend := NewMemStore(), newFakeBackend()
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{name: "defaults", cfg: Config{Store: store, Backend: backend}},
		{name: "no store", cfg: Config{Backend: backend}, wantErr: true},
		{name: "no backend", cfg: Config{Store: store}, wantErr: true},
		{name: "negative concurrency", cfg: Config{Store: store, Backend: backend, RevokeConcurrency: -1}, wantErr: true},
		{name: "negative rate", cfg: Config{Store: store, Backend: backend, RevokeRate: -1}, wantErr: true},
		{name: "NaN rate", cfg: Config{Store: store, Backend: backend, RevokeRate: math.NaN()}, wantErr: true},
		{name: "max below base", cfg: Config{Store: store, Backend: backend, BackoffBase: time.Minute, BackoffMax: time.Second}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewManager(tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			c := m.cfg
			if c.RevokeConcurrency != 4 || c.BatchSize != 64 || c.RevokeRate != 50 ||
				c.BackoffBase != time.Second || c.BackoffMax != time.Minute || c.Now == nil || c.Logger == nil {
				t.Errorf("defaults not applied: %+v", c)
			}
		})
	}
}

func TestNewIDValidID(t *testing.T) {
	seen := map[string]bool{}
	for i := 0; i < 100; i++ {
		id, err := NewID()
		if err != nil {
			t.Fatal(err)
		}
		if !ValidID(id) || seen[id] {
			t.Fatalf("NewID = %q (valid %v, repeated %v)", id, ValidID(id), seen[id])
		}
		seen[id] = true
	}
	tests := []struct {
		in   string
		want bool
	}{
		{"0123456789abcdef0123456789abcdef", true},
		{"0123456789ABCDEF0123456789abcdef", false},
		{"0123456789abcdef0123456789abcde", false},
		{"0123456789abcdef0123456789abcdef0", false},
		{"0123456789abcdef0123456789abcdeg", false},
		{"", false},
		{"../../../../../../../../etc/passw", false},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			if got := ValidID(tt.in); got != tt.want {
				t.Errorf("ValidID(%q) = %v", tt.in, got)
			}
		})
	}
}

func TestLifecycle(t *testing.T) {
	env := newEnv(t, nil)
	m := env.m
	l := env.newLease(t, time.Hour, 24*time.Hour)

	if err := m.begin(bg, l); err != nil {
		t.Fatal(err)
	}
	mustState(t, m, l.ID, StateCreating)
	if s, _ := storedLease(env.store, l.ID); s.State != StateCreating {
		t.Errorf("stored state after Begin = %s", s.State)
	}
	if _, ok := m.queuedAt(l.ID); ok {
		t.Error("CREATING lease is queued")
	}

	act, err := m.activate(bg, l.ID)
	if err != nil {
		t.Fatal(err)
	}
	if act.State != StateActive || !act.ExpireTime.Equal(l.ExpireTime) {
		t.Errorf("Activate = %+v", act)
	}
	if s, _ := storedLease(env.store, l.ID); s.State != StateActive {
		t.Errorf("stored state after Activate = %s", s.State)
	}
	if at, ok := m.queuedAt(l.ID); !ok || !at.Equal(l.ExpireTime) {
		t.Errorf("queued at %v, %v; want %v", at, ok, l.ExpireTime)
	}

	env.clock.Advance(30 * time.Minute)
	ren, err := m.Renew(bg, l.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if want := env.clock.Now().Add(time.Hour); !ren.ExpireTime.Equal(want) {
		t.Errorf("renewed to %v, want %v", ren.ExpireTime, want)
	}
	if at, _ := m.queuedAt(l.ID); !at.Equal(ren.ExpireTime) {
		t.Errorf("queue not fixed: at %v, want %v", at, ren.ExpireTime)
	}
	if s, _ := storedLease(env.store, l.ID); !s.ExpireTime.Equal(ren.ExpireTime) {
		t.Errorf("stored expiry %v, want %v", s.ExpireTime, ren.ExpireTime)
	}

	rev, err := m.Revoke(bg, l.ID)
	if err != nil {
		t.Fatal(err)
	}
	if rev.State != StateRevoked || rev.Expired {
		t.Errorf("Revoke = state %s expired %v", rev.State, rev.Expired)
	}
	if _, ok := get(m, l.ID); ok {
		t.Error("revoked lease still in Get")
	}
	if env.store.Len() != 0 {
		t.Error("revoked lease still stored")
	}
	if _, ok := m.queuedAt(l.ID); ok {
		t.Error("revoked lease still queued")
	}
	if n := env.backend.Drops(l.ID); n != 1 {
		t.Errorf("drops = %d, want 1", n)
	}
	if _, err := m.Revoke(bg, l.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Revoke err = %v, want ErrNotFound", err)
	}
}

func TestBegin(t *testing.T) {
	env := newEnv(t, nil)
	existing := env.issue(t, time.Hour, time.Hour)
	valid := func() Lease { return env.newLease(t, time.Hour, 2*time.Hour) }
	tests := []struct {
		name    string
		lease   func() Lease
		failPut bool
		wantErr error
	}{
		{name: "ok", lease: valid},
		{name: "bad id", lease: func() Lease { l := valid(); l.ID = "nope"; return l }, wantErr: ErrInvalid},
		{name: "no expiry", lease: func() Lease { l := valid(); l.ExpireTime = time.Time{}; return l }, wantErr: ErrInvalid},
		{name: "max before expiry", lease: func() Lease { l := valid(); l.MaxExpireTime = l.ExpireTime.Add(-1); return l }, wantErr: ErrInvalid},
		{name: "duplicate", lease: func() Lease { l := valid(); l.ID = existing.ID; return l }, wantErr: ErrExists},
		{name: "store down", lease: valid, failPut: true, wantErr: ErrStoreUnavailable},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := tt.lease()
			l.State, l.Attempts, l.LastError = StateActive, 3, "stale" // Begin resets these
			if tt.failPut {
				env.store.SetFailPut(func(Lease) error { return errDB })
				defer env.store.SetFailPut(nil)
			}
			err := env.m.begin(bg, l)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("err = %v, want %v", err, tt.wantErr)
			}
			got, ok := get(env.m, l.ID)
			if tt.wantErr != nil {
				if ok && l.ID != existing.ID {
					t.Errorf("failed Begin left %+v", got)
				}
				return
			}
			if !ok || got.State != StateCreating || got.Attempts != 0 || got.LastError != "" {
				t.Errorf("Get = %+v, %v", got, ok)
			}
		})
	}
	// A Begin that failed in the store leaves the id free.
	l := valid()
	env.store.SetFailPut(func(Lease) error { return errDB })
	if err := env.m.begin(bg, l); err == nil {
		t.Fatal("Begin succeeded with the store down")
	}
	env.store.SetFailPut(nil)
	if err := env.m.begin(bg, l); err != nil {
		t.Errorf("Begin after store recovered: %v", err)
	}
}

func TestActivate(t *testing.T) {
	t.Run("store put fails", func(t *testing.T) {
		env := newEnv(t, nil)
		l := env.newLease(t, time.Hour, time.Hour)
		if err := env.m.begin(bg, l); err != nil {
			t.Fatal(err)
		}
		env.store.SetFailPut(func(x Lease) error {
			if x.State == StateActive {
				return errDB
			}
			return nil
		})
		if _, err := env.m.activate(bg, l.ID); !errors.Is(err, ErrStoreUnavailable) {
			t.Fatalf("Activate err = %v, want ErrStoreUnavailable", err)
		}
		mustState(t, env.m, l.ID, StateCreating)
		if _, ok := env.m.queuedAt(l.ID); ok {
			t.Error("lease queued though Activate failed")
		}
		// The broker aborts.
		if err := env.m.abort(bg, l.ID, errors.New("activate failed")); err != nil {
			t.Fatalf("Abort: %v", err)
		}
		if _, ok := get(env.m, l.ID); ok || env.store.Len() != 0 || env.backend.Drops(l.ID) != 1 {
			t.Errorf("after Abort: in map %v, stored %d, drops %d", ok, env.store.Len(), env.backend.Drops(l.ID))
		}
	})
	t.Run("wrong state and unknown", func(t *testing.T) {
		env := newEnv(t, nil)
		l := env.issue(t, time.Hour, time.Hour)
		if _, err := env.m.activate(bg, l.ID); !errors.Is(err, ErrWrongState) {
			t.Errorf("second Activate err = %v, want ErrWrongState", err)
		}
		if _, err := env.m.activate(bg, "0123456789abcdef0123456789abcdef"); !errors.Is(err, ErrNotFound) {
			t.Errorf("unknown Activate err = %v, want ErrNotFound", err)
		}
	})
}

func TestRenew(t *testing.T) {
	const ttl, maxTTL = time.Hour, 3 * time.Hour
	tests := []struct {
		name      string
		setup     func(env *testEnv, l Lease) // l is ACTIVE, issued at the clock's now
		increment time.Duration
		wantErr   error
		wantExp   func(now time.Time, l Lease) time.Time // nil: unchanged
		extends   int
	}{
		{
			name: "extends from now", increment: 2 * time.Hour, extends: 1,
			setup:   func(env *testEnv, l Lease) { env.clock.Advance(30 * time.Minute) },
			wantExp: func(now time.Time, l Lease) time.Time { return now.Add(2 * time.Hour) },
		},
		{
			name: "capped at max", increment: 10 * time.Hour, extends: 1,
			wantExp: func(now time.Time, l Lease) time.Time { return l.MaxExpireTime },
		},
		{
			name: "at max", increment: time.Hour, wantErr: ErrMaxTTLReached,
			setup: func(env *testEnv, l Lease) {
				if _, err := env.m.Renew(bg, l.ID, 10*time.Hour); err != nil {
					panic(err)
				}
			},
			extends: 1, // the setup's
		},
		{
			name: "never shortens", increment: time.Minute,
			setup: func(env *testEnv, l Lease) { env.clock.Advance(10 * time.Minute) },
		},
		{
			name: "expired awaiting revocation", increment: time.Hour, wantErr: ErrNotActive,
			setup: func(env *testEnv, l Lease) { env.clock.Advance(ttl) },
		},
		{
			name: "revoking", increment: time.Hour, wantErr: ErrNotActive,
			setup: func(env *testEnv, l Lease) {
				env.backend.set(func(b *fakeBackend) { b.dropErr = func(Lease, int) error { return errDB } })
				if _, err := env.m.Revoke(bg, l.ID); err == nil {
					panic("revoke succeeded")
				}
			},
		},
		{
			name: "extend fails", increment: 2 * time.Hour, wantErr: errDB, extends: 1,
			setup: func(env *testEnv, l Lease) {
				env.backend.set(func(b *fakeBackend) { b.extendErr = func(Lease) error { return errDB } })
			},
		},
		{
			name: "store fails", increment: 2 * time.Hour, wantErr: ErrStoreUnavailable, extends: 1,
			setup: func(env *testEnv, l Lease) {
				env.store.SetFailPut(func(Lease) error { return errDB })
			},
		},
		{name: "zero increment", increment: 0, wantErr: ErrInvalid},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newEnv(t, nil)
			l := env.issue(t, ttl, maxTTL)
			if tt.setup != nil {
				tt.setup(env, l)
			}
			before, _ := get(env.m, l.ID)
			beforeAt, _ := env.m.queuedAt(l.ID)
			got, err := env.m.Renew(bg, l.ID, tt.increment)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("err = %v, want %v", err, tt.wantErr)
				}
				after, _ := get(env.m, l.ID)
				afterAt, _ := env.m.queuedAt(l.ID)
				if !after.ExpireTime.Equal(before.ExpireTime) || !afterAt.Equal(beforeAt) {
					t.Errorf("failed Renew changed expiry: %v→%v, queue %v→%v", before.ExpireTime, after.ExpireTime, beforeAt, afterAt)
				}
			} else {
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				want := before.ExpireTime
				if tt.wantExp != nil {
					want = tt.wantExp(env.clock.Now(), l)
				}
				if !got.ExpireTime.Equal(want) {
					t.Errorf("ExpireTime = %v, want %v", got.ExpireTime, want)
				}
				if at, _ := env.m.queuedAt(l.ID); !at.Equal(want) {
					t.Errorf("queued at %v, want %v", at, want)
				}
				if s, _ := storedLease(env.store, l.ID); !s.ExpireTime.Equal(want) {
					t.Errorf("stored expiry %v, want %v", s.ExpireTime, want)
				}
			}
			if n := env.backend.Extends(l.ID); n != tt.extends {
				t.Errorf("extends = %d, want %d", n, tt.extends)
			}
		})
	}
	t.Run("unknown", func(t *testing.T) {
		env := newEnv(t, nil)
		if _, err := env.m.Renew(bg, "0123456789abcdef0123456789abcdef", time.Hour); !errors.Is(err, ErrNotFound) {
			t.Errorf("err = %v, want ErrNotFound", err)
		}
	})
	t.Run("creating", func(t *testing.T) {
		env := newEnv(t, nil)
		l := env.newLease(t, time.Hour, time.Hour)
		if err := env.m.begin(bg, l); err != nil {
			t.Fatal(err)
		}
		if _, err := env.m.Renew(bg, l.ID, time.Hour); !errors.Is(err, ErrNotActive) {
			t.Errorf("err = %v, want ErrNotActive", err)
		}
	})
}

func TestRevokeFailureKeepsRevoking(t *testing.T) {
	env := newEnv(t, nil)
	l := env.issue(t, time.Hour, time.Hour)
	env.backend.set(func(b *fakeBackend) {
		b.dropErr = func(_ Lease, n int) error {
			if n == 1 {
				return errDB
			}
			return nil
		}
	})
	_, err := env.m.Revoke(bg, l.ID)
	if !errors.Is(err, errDB) {
		t.Fatalf("Revoke err = %v, want the drop error", err)
	}
	got := mustState(t, env.m, l.ID, StateRevoking)
	if got.LastError != errDB.Error() || got.Attempts != 1 || got.Expired {
		t.Errorf("lease = %+v", got)
	}
	if s, _ := storedLease(env.store, l.ID); s.State != StateRevoking || s.LastError != errDB.Error() || s.Attempts != 1 {
		t.Errorf("stored = %+v", s)
	}
	now := env.clock.Now()
	if at, ok := env.m.queuedAt(l.ID); !ok || at.Before(now.Add(time.Second/2)) || at.After(now.Add(time.Second)) {
		t.Errorf("retry queued at %v (%v), want within [now+0.5s, now+1s]", at, ok)
	}
	if _, err := env.m.Renew(bg, l.ID, time.Hour); !errors.Is(err, ErrNotActive) {
		t.Errorf("Renew of REVOKING lease: %v", err)
	}
	// A Revoke on a REVOKING lease retries now.
	fin, err := env.m.Revoke(bg, l.ID)
	if err != nil || fin.State != StateRevoked {
		t.Fatalf("retry Revoke = %+v, %v", fin, err)
	}
	if env.store.Len() != 0 || env.backend.Drops(l.ID) != 2 {
		t.Errorf("stored %d, drops %d", env.store.Len(), env.backend.Drops(l.ID))
	}
}

func TestRevokeDeleteFailureRetries(t *testing.T) {
	env := newEnv(t, nil)
	l := env.issue(t, time.Hour, time.Hour)
	env.store.SetFailDelete(func(string) error { return errDB })
	if _, err := env.m.Revoke(bg, l.ID); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("Revoke err = %v, want ErrStoreUnavailable", err)
	}
	// The user is gone but the record stays until it can be deleted.
	got := mustState(t, env.m, l.ID, StateRevoking)
	if got.LastError == "" || got.Attempts != 1 {
		t.Errorf("lease = %+v", got)
	}
	if _, ok := storedLease(env.store, l.ID); !ok {
		t.Fatal("record deleted though Delete failed")
	}
	env.store.SetFailDelete(nil)
	env.clock.Advance(time.Minute)
	if n := env.drain(); n != 1 {
		t.Fatalf("ProcessDue started %d, want 1", n)
	}
	if _, ok := get(env.m, l.ID); ok || env.store.Len() != 0 {
		t.Error("lease not gone after retry")
	}
	if n := env.backend.Drops(l.ID); n != 2 {
		t.Errorf("drops = %d, want 2 (drop is idempotent)", n)
	}
}

func TestRevokeStoreDownStillDrops(t *testing.T) {
	env := newEnv(t, nil)
	l := env.issue(t, time.Hour, time.Hour)
	env.store.SetFailPut(func(Lease) error { return errDB })
	env.store.SetFailDelete(func(string) error { return errDB })
	if _, err := env.m.Revoke(bg, l.ID); !errors.Is(err, ErrStoreUnavailable) {
		t.Fatalf("Revoke err = %v", err)
	}
	if env.backend.Drops(l.ID) != 1 {
		t.Error("user not dropped while the store is down")
	}
	mustState(t, env.m, l.ID, StateRevoking)
	if s, _ := storedLease(env.store, l.ID); s.State != StateActive {
		t.Errorf("stored state = %s, want the old ACTIVE record kept", s.State)
	}
}

// A store that says another writer may hold it (lease/pgstore after its
// lock was lost): neither a revoke nor the expiry loop drops the user, as
// the lease may have been renewed through the other broker.
func TestRevokeStoreFencedDropsNothing(t *testing.T) {
	env := newEnv(t, nil)
	l := env.issue(t, time.Minute, time.Hour)
	fenced := fmt.Errorf("%w: %w: lock lost", ErrStoreUnavailable, ErrStoreFenced)
	env.store.SetFailPut(func(Lease) error { return fenced })
	env.store.SetFailDelete(func(string) error { return fenced })
	if _, err := env.m.Revoke(bg, l.ID); !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, ErrStoreFenced) {
		t.Fatalf("Revoke err = %v, want ErrStoreUnavailable and ErrStoreFenced", err)
	}
	env.clock.Advance(time.Hour)
	env.drain()
	if n := env.backend.TotalDrops(); n != 0 {
		t.Errorf("%d drops by a Manager whose store is fenced", n)
	}
	if s, _ := storedLease(env.store, l.ID); s.State != StateActive {
		t.Errorf("stored state = %s, want the ACTIVE record kept", s.State)
	}
}

func TestRevokeCreatingRefused(t *testing.T) {
	env := newEnv(t, nil)
	l := env.newLease(t, time.Hour, time.Hour)
	if err := env.m.begin(bg, l); err != nil {
		t.Fatal(err)
	}
	if _, err := env.m.Revoke(bg, l.ID); !errors.Is(err, ErrWrongState) {
		t.Fatalf("err = %v, want ErrWrongState", err)
	}
	mustState(t, env.m, l.ID, StateCreating)
	if env.backend.TotalDrops() != 0 {
		t.Error("dropped a user still being created")
	}
}

func TestAbort(t *testing.T) {
	tests := []struct {
		name     string
		activate bool
		dropFail bool
	}{
		{name: "creating"},
		{name: "active", activate: true},
		{name: "drop fails", dropFail: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newEnv(t, nil)
			l := env.newLease(t, time.Hour, time.Hour)
			if err := env.m.begin(bg, l); err != nil {
				t.Fatal(err)
			}
			if tt.activate {
				if _, err := env.m.activate(bg, l.ID); err != nil {
					t.Fatal(err)
				}
			}
			if tt.dropFail {
				env.backend.set(func(b *fakeBackend) {
					b.dropErr = func(_ Lease, n int) error {
						if n == 1 {
							return errDB
						}
						return nil
					}
				})
			}
			err := env.m.abort(bg, l.ID, errors.New("create user: permission denied"))
			if tt.dropFail {
				if !errors.Is(err, errDB) {
					t.Fatalf("Abort err = %v", err)
				}
				got := mustState(t, env.m, l.ID, StateRevoking)
				if got.LastError == "" {
					t.Error("no LastError")
				}
				if s, _ := storedLease(env.store, l.ID); s.State != StateRevoking {
					t.Errorf("stored state %s, want REVOKING", s.State)
				}
				env.clock.Advance(time.Minute)
				env.drain()
			} else if err != nil {
				t.Fatalf("Abort: %v", err)
			}
			if _, ok := get(env.m, l.ID); ok || env.store.Len() != 0 {
				t.Error("lease not gone")
			}
			if err := env.m.abort(bg, l.ID, nil); !errors.Is(err, ErrNotFound) {
				t.Errorf("Abort of a gone lease: %v, want ErrNotFound", err)
			}
		})
	}
}

func TestBackoff(t *testing.T) {
	const base, max = time.Second, time.Minute
	prevHi := time.Duration(0)
	for n := 1; n <= 100; n++ {
		hi := min(max, base<<min(n-1, 30))
		for i := 0; i < 50; i++ {
			d := backoff(n, base, max)
			if d < hi/2 || d > hi {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, hi/2, hi)
			}
		}
		if hi < prevHi {
			t.Fatalf("bound shrank at %d", n)
		}
		prevHi = hi
	}
	if d := backoff(math.MaxInt, base, max); d > max || d < max/2 {
		t.Errorf("backoff(MaxInt) = %v", d)
	}
}

// TestRetryForever: a drop that fails 20 times is retried with growing,
// capped delays, and the lease goes once it succeeds.
func TestRetryForever(t *testing.T) {
	const failures = 20
	env := newEnv(t, func(c *Config) { c.BackoffBase, c.BackoffMax = time.Second, 30*time.Second })
	l := env.issue(t, time.Minute, time.Hour)
	env.backend.set(func(b *fakeBackend) {
		b.dropErr = func(_ Lease, n int) error {
			if n <= failures {
				return errDB
			}
			return nil
		}
	})
	env.clock.Advance(time.Minute)
	for attempt := 1; attempt <= failures; attempt++ {
		if n := env.drain(); n != 1 {
			t.Fatalf("attempt %d: ProcessDue started %d", attempt, n)
		}
		got := mustState(t, env.m, l.ID, StateRevoking)
		if got.Attempts != attempt || !got.Expired || got.LastError != errDB.Error() {
			t.Fatalf("attempt %d: lease = %+v", attempt, got)
		}
		at, ok := env.m.queuedAt(l.ID)
		hi := min(30*time.Second, time.Second<<(attempt-1))
		delay := at.Sub(env.clock.Now())
		if !ok || delay < hi/2 || delay > hi {
			t.Fatalf("attempt %d: retry in %v, want in [%v, %v]", attempt, delay, hi/2, hi)
		}
		if n := env.drain(); n != 0 {
			t.Fatalf("attempt %d: retried before its backoff", attempt)
		}
		env.clock.Advance(delay)
	}
	if n := env.drain(); n != 1 {
		t.Fatalf("final attempt: ProcessDue started %d", n)
	}
	if _, ok := get(env.m, l.ID); ok || env.store.Len() != 0 {
		t.Error("lease not gone after the drop succeeded")
	}
	if n := env.backend.Drops(l.ID); n != failures+1 {
		t.Errorf("drops = %d, want %d", n, failures+1)
	}
}

// TestConcurrentRevokeCoalesces: 50 Revoke calls and the expiry loop on one
// lease run exactly one Drop.
func TestConcurrentRevokeCoalesces(t *testing.T) {
	for round := 0; round < 20; round++ {
		env := newEnv(t, nil)
		l := env.issue(t, time.Minute, time.Hour)
		env.clock.Advance(time.Minute) // due, so the expiry loop races too
		release := make(chan struct{})
		env.backend.set(func(b *fakeBackend) {
			b.dropHook = func(context.Context, Lease) { <-release }
		})
		var wg sync.WaitGroup
		results := make([]error, 50)
		states := make([]State, 50)
		for i := range results {
			wg.Go(func() {
				got, err := env.m.Revoke(bg, l.ID)
				results[i], states[i] = err, got.State
			})
		}
		wg.Go(func() { env.m.ProcessDue(bg) })
		close(release)
		wg.Wait()
		env.m.wg.Wait()
		if n := env.backend.Drops(l.ID); n != 1 {
			t.Fatalf("round %d: drops = %d, want 1", round, n)
		}
		for i, err := range results {
			switch {
			case err == nil && (states[i] == StateRevoked || states[i] == StateExpired):
			case errors.Is(err, ErrNotFound):
			default:
				t.Fatalf("round %d: caller %d got %s, %v", round, i, states[i], err)
			}
		}
		if _, ok := get(env.m, l.ID); ok || env.store.Len() != 0 {
			t.Fatalf("round %d: lease not gone", round)
		}
	}
}

// TestRenewRevokeRace: however Renew and Revoke interleave, a revoked lease
// stays gone and is never extended after its drop.
func TestRenewRevokeRace(t *testing.T) {
	for round := 0; round < 50; round++ {
		env := newEnv(t, nil)
		l := env.issue(t, time.Hour, 10*time.Hour)
		var wg sync.WaitGroup
		for i := 0; i < 4; i++ {
			wg.Go(func() {
				for j := 0; j < 5; j++ {
					_, err := env.m.Renew(bg, l.ID, 2*time.Hour)
					if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrNotActive) {
						t.Errorf("Renew: %v", err)
					}
				}
			})
		}
		wg.Go(func() {
			if _, err := env.m.Revoke(bg, l.ID); err != nil && !errors.Is(err, ErrNotFound) {
				t.Errorf("Revoke: %v", err)
			}
		})
		wg.Wait()
		if _, ok := get(env.m, l.ID); ok {
			t.Fatalf("round %d: revoked lease resurrected in memory", round)
		}
		if env.store.Len() != 0 {
			t.Fatalf("round %d: revoked lease resurrected in the store", round)
		}
		if _, ok := env.m.queuedAt(l.ID); ok {
			t.Fatalf("round %d: revoked lease still queued", round)
		}
		ev := env.backend.Events()
		drop := slices.Index(ev, "drop "+l.ID)
		if drop < 0 || slices.Contains(ev[drop+1:], "extend "+l.ID) {
			t.Fatalf("round %d: events %v: extend after drop", round, ev)
		}
	}
}

func TestList(t *testing.T) {
	env := newEnv(t, nil)
	var want []string
	for i := 0; i < 5; i++ {
		l := env.issue(t, time.Hour, time.Hour)
		want = append(want, l.ID)
		if i%2 == 0 {
			env.clock.Advance(time.Second)
		}
	}
	// In ID order, whatever the issue times.
	slices.Sort(want)
	var got []string
	for _, l := range list(t, env.m, nil) {
		got = append(got, l.ID)
	}
	if !slices.Equal(got, want) {
		t.Errorf("List order = %v, want %v", got, want)
	}
	only := list(t, env.m, func(l Lease) bool { return l.ID == want[2] })
	if len(only) != 1 || only[0].ID != want[2] {
		t.Errorf("filtered List = %v", only)
	}
	// A snapshot: changing it changes nothing.
	only[0].RevocationStatements[0] = "changed"
	if l, _ := get(env.m, want[2]); l.RevocationStatements[0] == "changed" {
		t.Error("List shares memory with the manager")
	}
}
