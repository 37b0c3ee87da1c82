package lease

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Backend does the database side of a lease; the broker implements it by
// routing to plugins.
type Backend interface {
	// Drop makes the lease's user absent (no login, no session). It is
	// idempotent: an absent user is success.
	Drop(ctx context.Context, l Lease) error
	// Extend moves the server-side expiry to l.ExpireTime.
	Extend(ctx context.Context, l Lease) error
}

// Config configures a Manager. Zero values take the documented defaults.
type Config struct {
	Store   Store
	Backend Backend
	// Now is the clock, default time.Now. Tests inject a fake one.
	Now    func() time.Time
	Logger *slog.Logger
	// RevokeConcurrency bounds the expiry loop's concurrent drops
	// (default 4).
	RevokeConcurrency int
	// BatchSize bounds the revocations started per wake-up (default 64).
	BatchSize int
	// RevokeRate is the most revocations the expiry loop starts per second
	// (default 50), so that a restart after downtime or a clock jump does not
	// hit the databases with every overdue lease at once. Up to one second's
	// worth (at most BatchSize) may start together.
	RevokeRate float64
	// BackoffBase and BackoffMax shape the retry delay of failed
	// revocations: BackoffBase doubling per attempt up to BackoffMax (default
	// 1s, 1m), jittered. Retries never stop.
	BackoffBase, BackoffMax time.Duration
	// BackendTimeout bounds each Backend call, so a hung database cannot
	// hold a revocation slot forever (default 30s).
	BackendTimeout time.Duration
	// OnEnd, if set, is called once a lease's user is dropped and its
	// record deleted, with the final lease (State REVOKED or EXPIRED) and
	// whether the revocation was started by expiry (the broker writes its
	// expiry audit records here; the caller of Revoke knows the other
	// endings better). It runs in the goroutine that revoked the lease,
	// holding that lease's lock (not Manager.mu): it must not call the
	// Manager back for the same lease, and it delays that goroutine.
	OnEnd func(l Lease, expired bool)

	// For the Shared manager only (NewShared); NewManager ignores them.
	//
	// Lookahead is how far ahead of their expiry ACTIVE leases are claimed,
	// so that they are revoked on time (default 1s). PollInterval is how
	// often the store is asked for due leases (default 500ms): a lease
	// whose claimer died is revoked by another replica within its claim's
	// TTL (Lookahead + PollInterval + 5s) plus one poll. IssueTimeout
	// bounds the creation of a user (default 3s); the CREATING record is
	// held for twice as long, after which another replica may claim it and
	// drop the user: an issuance in flight on a replica that died is
	// cleaned up within 2×IssueTimeout plus one poll.
	Lookahead, PollInterval, IssueTimeout time.Duration
	// Limits, if set, returns the caps on live leases of a role
	// (quotas). The Shared manager has the store check them in the same
	// atomic step as the CREATING record (SharedStore.CreateWithin), so
	// that replicas together never pass them. (The broker counts them in
	// memory before either manager is called; a single Manager's count
	// is exact, so it has no need of this.)
	Limits func(role string) Limits
}

const (
	defaultRevokeConcurrency = 4
	defaultBatchSize         = 64
	defaultRevokeRate        = 50
	defaultBackoffBase       = time.Second
	defaultBackoffMax        = time.Minute
	defaultBackendTimeout    = 30 * time.Second

	// maxSleep caps the expiry loop's sleep so that a clock that jumps
	// forward is noticed within about a second.
	maxSleep = time.Second
	// minSleep keeps the loop from spinning when due work cannot start.
	minSleep = 10 * time.Millisecond
	// busyRetry re-queues a due lease that another operation holds; that
	// operation normally reschedules it first.
	busyRetry = time.Second
)

// Manager owns the leases: their durable records (through Store), the users
// behind them (through Backend), and the expiry loop. All methods are safe
// for concurrent use.
//
// Each lease has its own lock, held across the store and backend I/O of one
// operation, so operations on one lease are serialized (a Renew can never
// resurrect a lease a Revoke is removing) while operations on different
// leases run in parallel. Manager.mu guards only the maps and the queue and
// is never held during I/O. Lock order: lease lock, then mu. Whatever adds
// an entry to or deletes one from Manager.leases does the same to
// Manager.index in the same critical section of mu.
type Manager struct {
	cfg Config
	log *slog.Logger

	mu       sync.Mutex
	leases   map[string]*entry
	index    *index       // the entries of leases by owner, role and id
	queue    *expiryQueue // ACTIVE leases by expiry, REVOKING ones by next retry
	limiter  *tokenBucket
	inflight int // revocations started by the expiry loop and not finished
	loaded   bool
	deferred atomic.Pointer[restoring] // set by DeferLoad
	skip     map[string]struct{}       // leases begun during a deferred restore
	skipping atomic.Int64              // len(skip), read without mu

	wake    chan struct{} // tells Run to look at the queue again
	wg      sync.WaitGroup
	running atomic.Bool
	// fenced is set once the store said ErrStoreFenced: another broker may
	// own the leases now, so no revocation drops a user any more.
	fenced atomic.Bool
}

// NewManager checks cfg and returns a Manager. It starts no goroutine: call
// Load, then Run.
func NewManager(cfg Config) (*Manager, error) {
	cfg, err := cfg.withDefaults("new manager", defaultRevokeConcurrency, defaultBackendTimeout)
	if err != nil {
		return nil, err
	}
	return &Manager{
		cfg:     cfg,
		log:     cfg.Logger,
		leases:  make(map[string]*entry),
		index:   newIndex(),
		queue:   newExpiryQueue(),
		limiter: revokeLimiter(cfg),
		wake:    make(chan struct{}, 1),
	}, nil
}

// withDefaults checks the fields of cfg that both managers use and fills
// in their defaults; op names the constructor in errors. The revocation
// concurrency and backend timeout default differently for each.
func (cfg Config) withDefaults(op string, concurrency int, backendTimeout time.Duration) (Config, error) {
	switch {
	case cfg.Store == nil:
		return cfg, fmt.Errorf("lease: %s: no store", op)
	case cfg.Backend == nil:
		return cfg, fmt.Errorf("lease: %s: no backend", op)
	case cfg.RevokeConcurrency < 0 || cfg.BatchSize < 0 || cfg.BackoffBase < 0 || cfg.BackoffMax < 0 || cfg.BackendTimeout < 0:
		return cfg, fmt.Errorf("lease: %s: negative limit in config", op)
	case cfg.RevokeRate < 0 || math.IsNaN(cfg.RevokeRate) || math.IsInf(cfg.RevokeRate, 0):
		return cfg, fmt.Errorf("lease: %s: revoke rate %v must be a positive number", op, cfg.RevokeRate)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.RevokeConcurrency = cmp.Or(cfg.RevokeConcurrency, concurrency)
	cfg.BatchSize = cmp.Or(cfg.BatchSize, defaultBatchSize)
	cfg.RevokeRate = cmp.Or(cfg.RevokeRate, defaultRevokeRate)
	cfg.BackoffBase = cmp.Or(cfg.BackoffBase, defaultBackoffBase)
	cfg.BackoffMax = cmp.Or(cfg.BackoffMax, defaultBackoffMax)
	cfg.BackendTimeout = cmp.Or(cfg.BackendTimeout, backendTimeout)
	if cfg.BackoffMax < cfg.BackoffBase {
		return cfg, fmt.Errorf("lease: %s: backoff max %s below base %s", op, cfg.BackoffMax, cfg.BackoffBase)
	}
	return cfg, nil
}

// revokeLimiter is the token bucket of cfg's RevokeRate: up to one
// second's worth (at most BatchSize) may start together.
func revokeLimiter(cfg Config) *tokenBucket {
	burst := max(1, min(cfg.BatchSize, int(math.Ceil(cfg.RevokeRate))))
	return newTokenBucket(cfg.RevokeRate, burst, cfg.Now())
}

func (m *Manager) now() time.Time { return UTC(m.cfg.Now()) }

// signal wakes Run without blocking.
func (m *Manager) signal() {
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// scheduleLocked queues e at at and wakes Run if e became the earliest.
// m.mu must be held; the wake-up is sent without blocking.
func (m *Manager) scheduleLocked(e *entry, at time.Time) {
	m.queue.Push(e, at)
	if first, _ := m.queue.Peek(); first == e {
		m.signal()
	}
}

// lockEntry finds a stored lease and takes its lock. The caller unlocks.
func (m *Manager) lockEntry(ctx context.Context, id string) (*entry, error) {
	if err := m.awaitLease(ctx, id); err != nil {
		return nil, err
	}
	m.mu.Lock()
	e := m.leases[id]
	ok := e != nil && e.stored
	m.mu.Unlock()
	if !ok {
		return nil, ErrNotFound
	}
	if err := e.lock(ctx); err != nil {
		return nil, err
	}
	if e.gone {
		e.unlock()
		return nil, ErrNotFound
	}
	return e, nil
}

// setLease replaces e's lease. e's lock must be held.
func (m *Manager) setLease(e *entry, l Lease) {
	m.mu.Lock()
	m.index.set(e, l, m.now())
	m.mu.Unlock()
}

// begin durably records l as CREATING: the intent, written before the
// database user is created, so that a crash in between leaves a record that
// Load cleans up. l.ID must be from NewID; ExpireTime and MaxExpireTime are
// required, IssueTime defaults to now. The lease is not queued for expiry
// until activate.
func (m *Manager) begin(ctx context.Context, l Lease) error {
	if !ValidID(l.ID) {
		return fmt.Errorf("lease: begin: id %q: %w", l.ID, ErrInvalid)
	}
	l = normalizeTimes(l.clone())
	if l.IssueTime.IsZero() {
		l.IssueTime = m.now()
	}
	if l.ExpireTime.IsZero() || l.MaxExpireTime.IsZero() || l.MaxExpireTime.Before(l.ExpireTime) {
		return fmt.Errorf("lease: begin %s: need expire time <= max expire time: %w", l.ID, ErrInvalid)
	}
	l.State = StateCreating
	l.LastError, l.Attempts, l.Expired = "", 0, false
	if l.RequestID != "" {
		// The request id must be checked against every lease, restored
		// ones included.
		if err := m.awaitLease(ctx, ""); err != nil {
			return fmt.Errorf("lease: begin %s: %w", l.ID, err)
		}
	}

	e := newEntry(l)
	e.opc() <- struct{}{} // new: cannot block
	defer e.unlock()
	m.mu.Lock()
	if _, ok := m.leases[l.ID]; ok {
		m.mu.Unlock()
		return fmt.Errorf("lease: begin %s: %w", l.ID, ErrExists)
	}
	if k, ok := requestKeyOf(e); ok && m.index.requests[k] != nil {
		other := m.index.requests[k].id
		m.mu.Unlock()
		return fmt.Errorf("lease: begin %s: lease %s has its request id: %w", l.ID, other, ErrRequestExists)
	}
	m.leases[l.ID] = e // reserves the id; invisible until stored
	m.index.add(e)
	if m.skip != nil {
		m.skip[l.ID] = struct{}{} // its record is not the restore's (DeferLoad)
		m.skipping.Add(1)
	}
	m.mu.Unlock()

	if err := m.cfg.Store.Put(ctx, l); err != nil {
		m.mu.Lock()
		delete(m.leases, l.ID)
		m.index.remove(e)
		e.gone = true
		m.mu.Unlock()
		return storeErr("begin", l.ID, err)
	}
	m.mu.Lock()
	e.stored = true
	m.mu.Unlock()
	return nil
}

// activate durably records a CREATING lease as ACTIVE and queues it for
// expiry. Only after it returns nil may the credential be handed out; on
// error the caller must abort.
func (m *Manager) activate(ctx context.Context, id string) (Lease, error) {
	e, err := m.lockEntry(ctx, id)
	if err != nil {
		return Lease{}, err
	}
	defer e.unlock()
	l := e.lease()
	if l.State != StateCreating {
		return Lease{}, fmt.Errorf("lease: activate %s: state %s: %w", id, l.State, ErrWrongState)
	}
	l.State = StateActive
	if err := m.cfg.Store.Put(ctx, l); err != nil {
		return Lease{}, storeErr("activate", id, err)
	}
	m.mu.Lock()
	m.index.set(e, l, m.now())
	m.scheduleLocked(e, l.ExpireTime)
	m.mu.Unlock()
	m.log.LogAttrs(ctx, slog.LevelInfo, "lease: activated", append(leaseAttrs(l),
		slog.Time("expire_time", l.ExpireTime))...)
	return l.clone(), nil
}

// Renew moves an ACTIVE lease's expiry to now+increment, capped at its
// MaxExpireTime and never earlier than it is. The database's own expiry is
// moved first (so the database never ends the user before the lease), then
// the record, then the queue.
//
// Errors: ErrNotFound; ErrNotActive if the lease is not ACTIVE or has
// already reached its expiry (its revocation is due); ErrMaxTTLReached if
// the expiry already is the max.
func (m *Manager) Renew(ctx context.Context, id string, increment time.Duration) (Lease, error) {
	if increment <= 0 {
		return Lease{}, fmt.Errorf("lease: renew %s: increment %s: %w", id, increment, ErrInvalid)
	}
	e, err := m.lockEntry(ctx, id)
	if err != nil {
		return Lease{}, err
	}
	defer e.unlock()
	l := e.lease()
	now := m.now()
	exp, later, err := renewedExpiry(l, now, increment)
	if err != nil {
		return Lease{}, err
	}
	if !later {
		return l, nil // already expires at or after what was asked
	}
	l.ExpireTime = exp

	bctx, cancel := context.WithTimeout(ctx, m.cfg.BackendTimeout)
	err = m.cfg.Backend.Extend(bctx, l)
	cancel()
	if err != nil {
		return Lease{}, fmt.Errorf("lease: renew %s: extend: %w", id, err)
	}
	// If this fails the database keeps the later expiry, which is safe: the
	// lease is still revoked at its old, stored one.
	if err := m.cfg.Store.Put(ctx, l); err != nil {
		return Lease{}, storeErr("renew", id, err)
	}
	m.mu.Lock()
	m.index.set(e, l, now)
	m.queue.Push(e, exp) // heap.Fix: the lease is queued
	m.mu.Unlock()
	return l.clone(), nil
}

// renewedExpiry is where a renew by increment at now moves l's expiry,
// capped at its MaxExpireTime, and false if l already expires at or after
// that. Its errors are Renew's: ErrNotActive (not ACTIVE, or its expiry
// has passed) and ErrMaxTTLReached.
func renewedExpiry(l Lease, now time.Time, increment time.Duration) (time.Time, bool, error) {
	switch {
	case l.State != StateActive:
		return time.Time{}, false, fmt.Errorf("lease: renew %s: state %s: %w", l.ID, l.State, ErrNotActive)
	case !now.Before(l.ExpireTime):
		return time.Time{}, false, fmt.Errorf("lease: renew %s: expired at %s: %w", l.ID, l.ExpireTime.Format(time.RFC3339), ErrNotActive)
	case !l.ExpireTime.Before(l.MaxExpireTime):
		return time.Time{}, false, fmt.Errorf("lease: renew %s: %w", l.ID, ErrMaxTTLReached)
	}
	exp := now.Add(increment)
	if exp.After(l.MaxExpireTime) {
		exp = l.MaxExpireTime
	}
	return exp, exp.After(l.ExpireTime), nil
}

// Get returns a copy of the lease with id, or ErrNotFound. While a
// deferred restore is pending, a lease not yet known is waited for; if the
// restore failed, its error is returned.
func (m *Manager) Get(ctx context.Context, id string) (Lease, error) {
	if err := m.awaitLease(ctx, id); err != nil {
		return Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.leases[id]
	if e == nil || !e.stored {
		return Lease{}, ErrNotFound
	}
	return e.lease(), nil
}

// FindRequest returns the lease that owner was issued for requestID (an
// idempotency key, Lease.RequestID) in whatever state it is, or
// ErrNotFound once that lease is gone. It looks the key up in an index,
// never scanning the leases. While a deferred restore is pending it waits
// for it, so that a retry arriving just after a restart finds the lease
// issued before it.
func (m *Manager) FindRequest(ctx context.Context, owner, requestID string) (Lease, error) {
	if requestID == "" {
		return Lease{}, fmt.Errorf("lease: find request: empty request id: %w", ErrInvalid)
	}
	if err := m.awaitLease(ctx, ""); err != nil {
		return Lease{}, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.index.requests[requestKey{owner: owner, requestID: requestID}]
	if e == nil {
		return Lease{}, ErrNotFound
	}
	return e.lease(), nil
}

// Query selects leases for List. Its zero value selects every lease.
type Query struct {
	// Owner, Role and Database, if set, keep only the leases with that
	// owner (SPIFFE ID), role or database.
	Owner, Role, Database string
	// States, if not empty, keeps only the leases in one of them (a
	// workload sees its ACTIVE and REVOKING leases, not those still being
	// created).
	States []State
	// IDPrefix keeps only the leases whose ID starts with it.
	IDPrefix string
	// IDs, if not empty, keeps only the leases with one of these IDs (a
	// replica asking which of its streams' leases are still ACTIVE).
	IDs []string
	// After keeps only the leases whose ID sorts after it: for pages, the
	// last ID of the previous one.
	After string
	// Limit, if positive, is the most leases returned: the first ones in
	// ID order.
	Limit int
}

// List returns a snapshot of the leases q selects, in ID order. Its cost
// is that of the leases it returns, not of all those held: the Manager
// indexes its leases by owner, role and ID (index.go), so that a
// workload's list costs its own leases and a page of Limit leases after
// an ID costs about Limit. While a deferred restore is pending it waits
// for it, so that no caller (an orphan reconciler, a registry sweep)
// mistakes a lease not yet restored for an absent one; if the restore
// failed, its error is returned and never a partial list.
func (m *Manager) List(ctx context.Context, q Query) ([]Lease, error) {
	if err := m.awaitLease(ctx, ""); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	es := m.index.query(q)
	out := make([]Lease, len(es))
	for i, e := range es {
		out[i] = e.lease()
	}
	return out, nil
}

// Owners returns, sorted, the owners that have at least one lease in
// state s: what a registry sweep compares with the registered workloads,
// at the cost of about one lease per owner. It waits for a deferred
// restore as List does.
func (m *Manager) Owners(ctx context.Context, s State) ([]string, error) {
	if err := m.awaitLease(ctx, ""); err != nil {
		return nil, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.index.owners(s), nil
}

// NewID returns a new lease id: 32 lowercase hex characters from
// crypto/rand.
func NewID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("lease: new id: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// ValidID reports whether s has the form NewID returns.
func ValidID(s string) bool {
	if len(s) != 32 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// storeErr wraps a Store error with the operation, making sure it wraps
// ErrStoreUnavailable whatever the Store returned.
func storeErr(op, id string, err error) error {
	if errors.Is(err, ErrStoreUnavailable) {
		return fmt.Errorf("lease: %s %s: %w", op, id, err)
	}
	return fmt.Errorf("lease: %s %s: %w: %w", op, id, ErrStoreUnavailable, err)
}

// leaseAttrs are the log attributes of l. A Lease holds no secret.
func leaseAttrs(l Lease) []slog.Attr {
	return []slog.Attr{
		slog.String("lease_id", l.ID),
		slog.String("username", l.Username),
		slog.String("role", l.Role),
		slog.String("database", l.Database),
	}
}
