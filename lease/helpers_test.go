package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// fakeClock is a settable clock for Config.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// fakeBackend counts calls per lease and fails on demand.
type fakeBackend struct {
	mu      sync.Mutex
	drops   map[string]int
	extends map[string]int
	events  []string // "drop <id>", "extend <id>", in order

	// dropErr, if set, decides the outcome of call n (1-based) of Drop
	// for l. Called without the lock held.
	dropErr   func(l Lease, n int) error
	extendErr func(l Lease) error
	// dropHook, if set, runs inside Drop first (to block it, say).
	dropHook func(ctx context.Context, l Lease)
}

func newFakeBackend() *fakeBackend {
	return &fakeBackend{drops: map[string]int{}, extends: map[string]int{}}
}

func (b *fakeBackend) Drop(ctx context.Context, l Lease) error {
	b.mu.Lock()
	b.drops[l.ID]++
	n := b.drops[l.ID]
	b.events = append(b.events, "drop "+l.ID)
	hook, fail := b.dropHook, b.dropErr
	b.mu.Unlock()
	if hook != nil {
		hook(ctx, l)
	}
	if err := ctx.Err(); err != nil {
		return err // as a real database call would
	}
	if fail != nil {
		return fail(l, n)
	}
	return nil
}

func (b *fakeBackend) Extend(ctx context.Context, l Lease) error {
	b.mu.Lock()
	b.extends[l.ID]++
	b.events = append(b.events, "extend "+l.ID)
	fail := b.extendErr
	b.mu.Unlock()
	if fail != nil {
		return fail(l)
	}
	return nil
}

func (b *fakeBackend) Drops(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.drops[id]
}

func (b *fakeBackend) TotalDrops() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	n := 0
	for _, c := range b.drops {
		n += c
	}
	return n
}

func (b *fakeBackend) Extends(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.extends[id]
}

func (b *fakeBackend) Events() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.events...)
}

func (b *fakeBackend) set(fn func(b *fakeBackend)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	fn(b)
}

var errDB = errors.New("fake database: connection refused")

type testEnv struct {
	m       *Manager
	store   *MemStore
	backend *fakeBackend
	clock   *fakeClock
}

// newEnv builds a Manager on a MemStore, a fakeBackend and a fakeClock.
// tweak, if not nil, edits the Config first.
func newEnv(t *testing.T, tweak func(*Config), leases ...Lease) *testEnv {
	t.Helper()
	env := &testEnv{store: NewMemStore(leases...), backend: newFakeBackend(), clock: newFakeClock()}
	cfg := Config{
		Store:   env.store,
		Backend: env.backend,
		Now:     env.clock.Now,
		Logger:  slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if tweak != nil {
		tweak(&cfg)
	}
	m, err := NewManager(cfg)
	if err != nil {
		t.Fatalf("NewManager: %v", err)
	}
	env.m = m
	t.Cleanup(m.wg.Wait)
	return env
}

// testWriter sends log lines to t.Log, so they show only for failures.
type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(p))
	return len(p), nil
}

// newLease returns a lease issued now, expiring after ttl, at most maxTTL.
func (env *testEnv) newLease(t *testing.T, ttl, maxTTL time.Duration) Lease {
	t.Helper()
	return makeLease(t, env.clock.Now(), ttl, maxTTL)
}

var leaseSeq atomic.Int64

func makeLease(t *testing.T, now time.Time, ttl, maxTTL time.Duration) Lease {
	t.Helper()
	id, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	return Lease{
		ID:                   id,
		Role:                 "readonly",
		Owner:                "spiffe://example.org/app",
		Database:             "pg1",
		Username:             fmt.Sprintf("cb_readonly_%d", leaseSeq.Add(1)),
		IssueTime:            now,
		ExpireTime:           now.Add(ttl),
		MaxExpireTime:        now.Add(maxTTL),
		RevocationStatements: []string{`DROP ROLE IF EXISTS "{{name}}"`},
	}
}

// issue runs Issue with a create that waits for the intent.
func (env *testEnv) issue(t *testing.T, ttl, maxTTL time.Duration) Lease {
	t.Helper()
	l := env.newLease(t, ttl, maxTTL)
	got, err := env.m.Issue(context.Background(), l, waitIntent)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	return got
}

// waitIntent is a CreateFunc that creates nothing but keeps the contract.
func waitIntent(ctx context.Context, intent func(context.Context) error) error {
	return intent(ctx)
}

// drain runs ProcessDue and waits for what it started.
func (env *testEnv) drain() int {
	n := env.m.ProcessDue(context.Background())
	env.m.wg.Wait()
	return n
}

// queuedAt reports when id is next due in the expiry queue.
func (m *Manager) queuedAt(id string) (time.Time, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.leases[id]
	if e == nil {
		return time.Time{}, false
	}
	return m.queue.At(e)
}

func mustState(t *testing.T, m *Manager, id string, want State) Lease {
	t.Helper()
	l, ok := get(m, id)
	if !ok {
		t.Fatalf("Get(%s): not found, want %s", id, want)
	}
	if l.State != want {
		t.Fatalf("Get(%s).State = %s, want %s", id, l.State, want)
	}
	return l
}

// get is Manager.Get as a found flag, for tests that only ask whether a
// lease is known.
func get(m *Manager, id string) (Lease, bool) {
	l, err := m.Get(context.Background(), id)
	return l, err == nil
}

// list is Manager.List for tests, which never run a failing restore.
func list(t testing.TB, m *Manager, filter func(Lease) bool) []Lease {
	t.Helper()
	ls, err := m.List(context.Background(), Query{})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if filter == nil {
		return ls
	}
	out := ls[:0]
	for _, l := range ls {
		if filter(l) {
			out = append(out, l)
		}
	}
	return out
}

// storedLease returns the record of id in s, and whether there is one.
func storedLease(s *MemStore, id string) (Lease, bool) {
	l, err := s.Get(context.Background(), id)
	return l, err == nil
}

// verifiedStore is a MemStore that claims to have checked its records when
// opened (a lease.Verifier, as boltstore.Store), so the Manager restores it
// in Run after DeferLoad; invalid is what Verified reports.
type verifiedStore struct {
	*MemStore
	invalid error
}

func (s verifiedStore) Verified() error { return s.invalid }
func (s verifiedStore) SizeHint() int   { return s.Len() }

// benchLease is a lease as the broker writes it: every field a real one
// has, with the role's names shared by many leases.
func benchLease(i int, r *rand.Rand, now time.Time) Lease {
	id := fmt.Sprintf("%016x%016x", r.Uint64(), uint64(i))
	return Lease{
		ID:            id,
		Role:          "orders-readonly",
		Owner:         fmt.Sprintf("spiffe://example.org/orders/api-%d", i%50),
		Database:      "main",
		Username:      "cb_orders_readonly_" + fmt.Sprintf("%026x", r.Uint64())[:26],
		IssueTime:     now,
		ExpireTime:    now.Add(time.Hour + time.Duration(r.Int64N(int64(24*time.Hour)))),
		MaxExpireTime: now.Add(48 * time.Hour),
		State:         StateActive,
	}
}

// nopBackend drops and extends nothing: for benchmarks of the lease side.
type nopBackend struct{}

func (nopBackend) Drop(context.Context, Lease) error   { return nil }
func (nopBackend) Extend(context.Context, Lease) error { return nil }
