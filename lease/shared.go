package lease

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/credbroker/credbroker/internal/failpoint"
)

// Defaults of the Shared manager (Config's fields for it).
const (
	defaultLookahead      = time.Second
	defaultPollInterval   = 500 * time.Millisecond
	defaultIssueTimeout   = 3 * time.Second
	defaultSharedBackend  = 10 * time.Second
	claimSlack            = 2 * time.Second
	holdSlack             = 2 * time.Second
	maxClaimBackoff       = 5 * time.Second
	statsMaxAge           = 2 * time.Second
	statsTimeout          = 2 * time.Second
	storeTimeout          = 10 * time.Second
	maxConflictRetries    = 8
	sharedMaxSleep        = time.Second
	sharedMinSleep        = 10 * time.Millisecond
	failedClaimLogEvery   = 30 * time.Second
	defaultSharedRevokeOn = 4
)

// Shared is the lease manager of brokers that share one store (a
// SharedStore: lease/pgstore), each an equal replica: any of them serves
// every call on every lease, and they split the expiry work without a
// leader. It has the Manager's methods and keeps its invariants (a user
// the broker may have created has a record; no credential precedes its
// durable ACTIVE record), but holds no lease in memory: every read is the
// store's, and its memory does not grow with the number of leases.
//
// How the replicas stay out of each other's way (docs/architecture.md,
// "Several replicas"):
//
//   - Every write that acts on a lease is conditional on the row's
//     version (SharedStore.PutIfVersion, DeleteIfVersion), checked by the
//     store in the same step: a replica that read a lease, then stalled or
//     lost the store, cannot write over what another replica did since.
//   - A user is dropped only after its REVOKING record was written at the
//     version read; so a lease renewed through another replica (which bumps
//     the version) is never revoked by one that claimed it before.
//   - Expiry: Run claims due leases from the store in batches (ACTIVE ones
//     within Lookahead of their expiry, REVOKING ones, abandoned CREATING
//     ones), on the store's clock; each claim holds for a TTL, so a dead
//     replica's claims lapse and another replica claims them.
//   - Issuance: the CREATING record is created claimed by this replica for
//     2×IssueTimeout; create is bounded by IssueTimeout. If the replica
//     dies, another claims the record once the hold lapses and drops the
//     user; if this replica is merely slow, its ACTIVE write conflicts
//     with that claim and no credential is handed out.
type Shared struct {
	cfg   Config
	store SharedStore
	log   *slog.Logger

	mu       sync.Mutex
	queue    []claimed // this replica's claims, by due time
	inflight int
	limiter  *tokenBucket
	flights  map[string]*flight // revocations running on this replica

	statsMu sync.Mutex
	stats   Stats
	statsAt time.Time

	wake    chan struct{}
	wg      sync.WaitGroup
	running atomic.Bool
}

// claimed is a lease this replica claimed, due at due on its own clock.
type claimed struct {
	v   Versioned
	due time.Time
}

// errRevokeConflict ends a revocation whose REVOKING write conflicted:
// the lease changed since it was read (renewed, revoked or claimed by
// another replica); nothing was dropped.
var errRevokeConflict = fmt.Errorf("lease changed before its revocation was recorded: %w", ErrConflict)

// NewShared checks cfg and returns a Shared manager on cfg.Store, which
// must be a SharedStore. It starts no goroutine: call Run.
func NewShared(cfg Config) (*Shared, error) {
	store, ok := cfg.Store.(SharedStore)
	if cfg.Store != nil && !ok {
		return nil, errNoShared
	}
	if cfg.Lookahead < 0 || cfg.PollInterval < 0 || cfg.IssueTimeout < 0 {
		return nil, errors.New("lease: new shared manager: negative limit in config")
	}
	cfg, err := cfg.withDefaults("new shared manager", defaultSharedRevokeOn, defaultSharedBackend)
	if err != nil {
		return nil, err
	}
	cfg.Lookahead = cmp.Or(cfg.Lookahead, defaultLookahead)
	cfg.PollInterval = cmp.Or(cfg.PollInterval, defaultPollInterval)
	cfg.IssueTimeout = cmp.Or(cfg.IssueTimeout, defaultIssueTimeout)
	return &Shared{
		cfg:     cfg,
		store:   store,
		log:     cfg.Logger,
		limiter: revokeLimiter(cfg),
		flights: map[string]*flight{},
		wake:    make(chan struct{}, 1),
	}, nil
}

func (m *Shared) now() time.Time { return UTC(m.cfg.Now()) }

// bounded bounds one store call: a store cut off without a reset (packets
// dropped) must not hold a revocation slot, an RPC or the expiry loop for
// the minutes TCP takes to give up.
func (m *Shared) bounded(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, storeTimeout)
}

// dropHold is how long a REVOKING write keeps the lease claimed: the drop
// is bounded by BackendTimeout, so no other replica starts a second drop
// while this one may still run.
func (m *Shared) dropHold() time.Duration { return m.cfg.BackendTimeout + holdSlack }

// claimTTL is how long a claim made by Run holds before its revocation
// starts (and extends it with dropHold).
func (m *Shared) claimTTL() time.Duration { return m.cfg.Lookahead + m.cfg.PollInterval + claimSlack }

// Issue runs the crash-safe issuance of l, as Manager.Issue does, with the
// CREATING record claimed by this replica for 2×IssueTimeout and create
// bounded by IssueTimeout (see Shared). It returns the ACTIVE lease only
// once that record is durable.
func (m *Shared) Issue(ctx context.Context, l Lease, create CreateFunc) (Lease, error) {
	if !ValidID(l.ID) {
		return Lease{}, fmt.Errorf("lease: issue: id %q: %w", l.ID, ErrInvalid)
	}
	l = normalizeTimes(l.clone())
	if l.IssueTime.IsZero() {
		l.IssueTime = m.now()
	}
	if l.ExpireTime.IsZero() || l.MaxExpireTime.IsZero() || l.MaxExpireTime.Before(l.ExpireTime) {
		return Lease{}, fmt.Errorf("lease: issue %s: need expire time <= max expire time: %w", l.ID, ErrInvalid)
	}
	l.State = StateCreating
	l.LastError, l.Attempts, l.Expired = "", 0, false

	// The user must exist, committed, well before the record's hold
	// lapses: another replica may then claim the record and drop the user.
	cctx, cancel := context.WithTimeout(ctx, m.cfg.IssueTimeout)
	defer cancel()
	in := &intent{done: make(chan struct{})}
	var version int64
	go func() {
		defer close(in.done)
		var lim Limits
		if m.cfg.Limits != nil {
			lim = m.cfg.Limits(l.Role)
		}
		version, in.err = m.store.CreateWithin(cctx, l, 2*m.cfg.IssueTimeout, lim)
		if in.err == nil {
			failpoint.Hit(FailpointAfterIntent)
		} else if !errors.Is(in.err, ErrExists) && !errors.Is(in.err, ErrLimit) {
			in.err = storeErr("begin", l.ID, in.err)
		}
	}()
	err := create(cctx, in.wait)
	if ierr := in.result(); ierr != nil {
		if err == nil {
			dropUnrecorded(ctx, m.cfg.Backend, m.log, l)
		}
		return Lease{}, ierr
	}
	v := Versioned{Lease: l, Version: version}
	if errors.Is(err, ErrNotCreated) {
		// Nothing exists on the server: forget the intent. If the delete
		// fails, the record is claimed once its hold lapses and its
		// (absent) user dropped.
		dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer dcancel()
		if derr := m.store.DeleteIfVersion(dctx, l.ID, version); derr != nil {
			m.issueCleanupFailed(ctx, l, derr)
		}
		return Lease{}, err
	}
	if err == nil {
		failpoint.Hit(FailpointAfterCreateUser)
		act := l
		act.State = StateActive
		sctx, scancel := m.bounded(ctx)
		_, err = m.store.PutIfVersion(sctx, act, version, 0)
		scancel()
		if err == nil {
			m.log.LogAttrs(ctx, slog.LevelInfo, "lease: activated", append(leaseAttrs(act),
				slog.Time("expire_time", act.ExpireTime))...)
			failpoint.Hit(FailpointAfterActivate)
			return act, nil
		}
		if errors.Is(err, ErrConflict) {
			// The hold lapsed and another replica claimed the record: it
			// drops the user. Hand nothing out.
			return Lease{}, fmt.Errorf("lease: activate %s: the issuance outlived its hold (%s) and another replica is cleaning it up: %w: %w",
				l.ID, 2*m.cfg.IssueTimeout, ErrStoreUnavailable, err)
		}
		err = storeErr("activate", l.ID, err)
	}
	// create failed (the user may exist) or ACTIVE was not recorded: drop
	// the user and delete the record, or leave it REVOKING for a retry.
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer dcancel()
	m.log.LogAttrs(ctx, slog.LevelInfo, "lease: aborting", append(leaseAttrs(l), slog.String("cause", err.Error()))...)
	if _, aerr := m.revoke(dctx, v, false); aerr != nil {
		m.issueCleanupFailed(ctx, l, aerr)
	}
	return Lease{}, err
}

func (m *Shared) issueCleanupFailed(ctx context.Context, l Lease, err error) {
	m.log.LogAttrs(ctx, slog.LevelWarn, "issuance cleanup left to a retry",
		slog.String("lease_id", l.ID), slog.String("username", l.Username), slog.String("error", err.Error()))
}

// Renew is Manager.Renew through the store: it reads the lease, moves the
// database's expiry, and writes the new expiry at the version it read
// (reading again if another replica wrote in between). Its write ends any
// claim on the lease, and fences a replica that claimed it to revoke it.
func (m *Shared) Renew(ctx context.Context, id string, increment time.Duration) (Lease, error) {
	if increment <= 0 {
		return Lease{}, fmt.Errorf("lease: renew %s: increment %s: %w", id, increment, ErrInvalid)
	}
	for range maxConflictRetries {
		v, err := m.get(ctx, "renew", id)
		if err != nil {
			return Lease{}, err
		}
		l := v.Lease
		exp, later, err := renewedExpiry(l, m.now(), increment)
		if err != nil {
			return Lease{}, err
		}
		if !later {
			return l, nil
		}
		l.ExpireTime = exp
		bctx, cancel := context.WithTimeout(ctx, m.cfg.BackendTimeout)
		err = m.cfg.Backend.Extend(bctx, l)
		cancel()
		if err != nil {
			return Lease{}, fmt.Errorf("lease: renew %s: extend: %w", id, err)
		}
		sctx, scancel := m.bounded(ctx)
		_, err = m.store.PutIfVersion(sctx, l, v.Version, 0)
		scancel()
		if errors.Is(err, ErrConflict) {
			continue // written meanwhile: read it again
		}
		if err != nil {
			return Lease{}, storeErr("renew", id, err)
		}
		return l, nil
	}
	return Lease{}, fmt.Errorf("lease: renew %s: changed by other replicas %d times in a row: %w: %w", id, maxConflictRetries, ErrStoreUnavailable, ErrConflict)
}

// get reads a lease with its version, wrapping store errors.
func (m *Shared) get(ctx context.Context, op, id string) (Versioned, error) {
	sctx, cancel := m.bounded(ctx)
	defer cancel()
	v, err := m.store.GetVersion(sctx, id)
	switch {
	case errors.Is(err, ErrNotFound):
		return Versioned{}, ErrNotFound
	case err != nil:
		return Versioned{}, storeErr(op, id, err)
	}
	v.Lease = normalizeTimes(v.Lease)
	return v, nil
}

// Revoke is Manager.Revoke: it records REVOKING (at the version read, and
// claimed for the drop), drops the user, and deletes the record. Concurrent
// calls on this replica share one attempt. A lease that another replica is
// revoking is taken over (its REVOKING write fences the other's delete;
// the user may be dropped twice, which is harmless).
func (m *Shared) Revoke(ctx context.Context, id string) (Lease, error) {
	m.mu.Lock()
	f, joined := m.flights[id]
	if !joined {
		f = &flight{done: make(chan struct{})}
		m.flights[id] = f
	}
	m.mu.Unlock()
	if joined {
		select {
		case <-f.done:
			return f.lease.clone(), f.err
		case <-ctx.Done():
			return Lease{}, ctx.Err()
		}
	}
	l, err := m.revokeByID(ctx, id)
	m.finish(id, f, l, err)
	return l.clone(), err
}

func (m *Shared) revokeByID(ctx context.Context, id string) (Lease, error) {
	for range maxConflictRetries {
		v, err := m.get(ctx, "revoke", id)
		if err != nil {
			return Lease{}, err
		}
		if v.Lease.State == StateCreating {
			return Lease{}, fmt.Errorf("lease: revoke %s: still being created: %w", id, ErrWrongState)
		}
		l, err := m.revoke(ctx, v, false)
		if errors.Is(err, errRevokeConflict) {
			continue
		}
		return l, err
	}
	return Lease{}, fmt.Errorf("lease: revoke %s: changed by other replicas %d times in a row: %w: %w", id, maxConflictRetries, ErrStoreUnavailable, ErrConflict)
}

// finish publishes a flight's outcome and forgets it.
func (m *Shared) finish(id string, f *flight, l Lease, err error) {
	m.mu.Lock()
	if m.flights[id] == f {
		delete(m.flights, id)
	}
	m.mu.Unlock()
	f.lease, f.err = l, err
	close(f.done)
}

// revoke runs one revocation attempt on v, read or claimed at its version.
// On success the user is gone, the record deleted and the final lease
// returned. If the REVOKING write conflicts, nothing is dropped and the
// error is errRevokeConflict. If the drop fails, the lease stays REVOKING,
// claimed by nobody until its backoff ends (then any replica retries it).
func (m *Shared) revoke(ctx context.Context, v Versioned, expired bool) (Lease, error) {
	l := v.Lease.clone()
	wasCreating := l.State == StateCreating
	l.State = StateRevoking
	l.Expired = l.Expired || expired
	sctx, scancel := m.bounded(ctx)
	version, err := m.store.PutIfVersion(sctx, l, v.Version, m.dropHold())
	scancel()
	switch {
	case errors.Is(err, ErrConflict):
		return l, errRevokeConflict
	case err != nil && wasCreating:
		// A CREATING record already means "drop": no replica can have
		// activated it but the one that created it, so dropping is safe
		// without the write. The record stays; a later claim finishes it.
		m.log.LogAttrs(ctx, slog.LevelWarn, "lease: REVOKING not recorded; dropping the interrupted creation anyway",
			append(leaseAttrs(l), slog.String("error", err.Error()))...)
		bctx, cancel := context.WithTimeout(ctx, m.cfg.BackendTimeout)
		derr := m.cfg.Backend.Drop(bctx, l)
		cancel()
		return l, errors.Join(storeErr("revoke", l.ID, err), derr)
	case err != nil:
		// Without the write this replica cannot know that nobody renewed
		// the lease meanwhile: drop nothing. A claim retries it.
		return l, storeErr("revoke", l.ID, err)
	}
	failpoint.Hit(FailpointAfterRevoking)

	bctx, cancel := context.WithTimeout(ctx, m.cfg.BackendTimeout)
	err = m.cfg.Backend.Drop(bctx, l)
	cancel()
	if err != nil {
		l.Attempts++
		l.LastError = err.Error()
		wait := backoff(l.Attempts, m.cfg.BackoffBase, m.cfg.BackoffMax)
		sctx, scancel := m.bounded(context.WithoutCancel(ctx))
		_, perr := m.store.PutIfVersion(sctx, l, version, wait)
		scancel()
		if perr != nil {
			// Only the attempt count and error text are lost: the record
			// is REVOKING, claimed until the drop's hold lapses.
			m.log.LogAttrs(ctx, slog.LevelWarn, "lease: failed attempt not recorded",
				append(leaseAttrs(l), slog.String("error", perr.Error()))...)
		}
		return l, fmt.Errorf("lease: revoke %s: drop: %w", l.ID, err)
	}
	failpoint.Hit(FailpointAfterDrop)

	// The user is gone; record it even if the caller gave up meanwhile.
	sctx, scancel = m.bounded(context.WithoutCancel(ctx))
	err = m.store.DeleteIfVersion(sctx, l.ID, version)
	scancel()
	if err != nil {
		if errors.Is(err, ErrConflict) {
			// Another replica took the revocation over after this drop
			// began; it deletes the record and reports the end.
			return m.ended(l), nil
		}
		// The record stays REVOKING, claimed until the hold lapses; the
		// replica that claims it then finds the user absent.
		return l, storeErr("revoke", l.ID, err)
	}
	l = m.ended(l)
	msg := "lease: revoked"
	if l.State == StateExpired {
		msg = "lease: expired"
	}
	m.log.LogAttrs(ctx, slog.LevelInfo, msg, leaseAttrs(l)...)
	if m.cfg.OnEnd != nil {
		m.cfg.OnEnd(l.clone(), l.Expired)
	}
	return l, nil
}

// ended is l as reported once its user is gone.
func (m *Shared) ended(l Lease) Lease {
	l.State, l.LastError = StateRevoked, ""
	if l.Expired {
		l.State = StateExpired
	}
	return l
}

// Get returns the lease with id, or ErrNotFound.
func (m *Shared) Get(ctx context.Context, id string) (Lease, error) {
	v, err := m.get(ctx, "get", id)
	return v.Lease, err
}

// FindRequest is Manager.FindRequest, answered by the store.
func (m *Shared) FindRequest(ctx context.Context, owner, requestID string) (Lease, error) {
	if requestID == "" {
		return Lease{}, fmt.Errorf("lease: find request: empty request id: %w", ErrInvalid)
	}
	sctx, cancel := m.bounded(ctx)
	defer cancel()
	l, err := m.store.FindRequest(sctx, owner, requestID)
	switch {
	case errors.Is(err, ErrNotFound):
		return Lease{}, ErrNotFound
	case err != nil:
		return Lease{}, storeErr("find request", requestID, err)
	}
	return normalizeTimes(l), nil
}

// List is Manager.List, answered by the store (every replica's leases).
func (m *Shared) List(ctx context.Context, q Query) ([]Lease, error) {
	ls, err := m.store.Query(ctx, q)
	if err != nil {
		return nil, storeErr("list", "", err)
	}
	for i := range ls {
		ls[i] = normalizeTimes(ls[i])
	}
	return ls, nil
}

// Owners is Manager.Owners, answered by the store.
func (m *Shared) Owners(ctx context.Context, s State) ([]string, error) {
	os, err := m.store.Owners(ctx, s)
	if err != nil {
		return nil, storeErr("owners", "", err)
	}
	return os, nil
}

// Stats counts the stored leases (all replicas'), read from the store at
// most every two seconds; if the store cannot answer, the last counts.
func (m *Shared) Stats() Stats {
	m.statsMu.Lock()
	defer m.statsMu.Unlock()
	now := m.now()
	if m.stats.ByState == nil || now.Sub(m.statsAt) >= statsMaxAge || now.Before(m.statsAt) {
		ctx, cancel := context.WithTimeout(context.Background(), statsTimeout)
		st, err := m.store.Stats(ctx)
		cancel()
		if err == nil {
			m.stats, m.statsAt = st, now
		} else if m.stats.ByState == nil {
			return Stats{ByState: map[State]int{}, ByRole: map[string]int{}}
		}
	}
	return m.stats
}

// Run is the expiry loop of this replica: it claims due leases from the
// store every PollInterval (and sooner when it has room and work was
// found), revokes each when it is due on the store's clock, within
// RevokeConcurrency and RevokeRate, and retries nothing itself: a failed
// revocation goes back to the store with its backoff, for any replica.
// It returns nil when ctx ends, after the revocations it started.
func (m *Shared) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("lease: run: already running")
	}
	defer m.wg.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	var nextClaim time.Time
	failures := 0
	var lastLogged time.Time
	// backlog: the last claim was a full batch, so more may be due. The
	// next claim is then made as soon as half the queue has room (a
	// finishing revocation wakes the loop), not a poll interval later: in
	// an expiry storm a replica works through its share at its
	// revocation rate, not at BatchSize per poll.
	backlog := false
	for {
		now := m.now()
		room := m.room()
		if room > 0 && !now.Before(nextClaim) && (!backlog || room >= max(1, m.cfg.BatchSize/2)) {
			_, full, err := m.claim(ctx)
			switch {
			case err != nil && ctx.Err() == nil:
				failures++
				if now.Sub(lastLogged) >= failedClaimLogEvery || failures == 1 {
					m.log.LogAttrs(ctx, slog.LevelWarn, "lease: cannot claim due leases; retrying",
						slog.Int("failures", failures), slog.String("error", err.Error()))
					lastLogged = now
				}
				backlog = false
				nextClaim = now.Add(min(m.cfg.PollInterval<<min(failures, 8), maxClaimBackoff))
			case full:
				failures = 0
				backlog = true
				nextClaim = now
			default:
				if failures > 0 {
					m.log.LogAttrs(ctx, slog.LevelInfo, "lease: claiming due leases again", slog.Int("failures", failures))
				}
				failures = 0
				backlog = false
				nextClaim = now.Add(m.cfg.PollInterval)
			}
		}
		m.ProcessDue(ctx)
		wait := min(m.nextDue(), sharedMaxSleep)
		if !backlog && m.room() > 0 {
			wait = min(wait, nextClaim.Sub(m.now()))
		}
		timer.Reset(max(wait, 0))
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-m.wake:
		}
	}
}

// room is how many more claims this replica takes.
func (m *Shared) room() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cfg.BatchSize - len(m.queue)
}

// claim takes a batch of due leases from the store into the queue: no
// more than this replica can start within the lookahead, so that the
// others get the rest. full says the store had at least as many as asked.
func (m *Shared) claim(ctx context.Context) (n int, full bool, err error) {
	room := m.room()
	if room <= 0 || ctx.Err() != nil {
		return 0, false, nil
	}
	window := (m.cfg.Lookahead + m.cfg.PollInterval).Seconds()
	limit := max(1, min(room, int(math.Ceil(m.cfg.RevokeRate*window))))
	sctx, cancel := m.bounded(ctx)
	defer cancel()
	c, err := m.store.ClaimDue(sctx, ClaimRequest{Lookahead: m.cfg.Lookahead, Limit: limit, TTL: m.claimTTL()})
	if err != nil {
		return 0, false, err
	}
	if len(c.Leases) == 0 {
		return 0, false, nil
	}
	local := m.now()
	m.mu.Lock()
	for _, v := range c.Leases {
		v.Lease = normalizeTimes(v.Lease)
		due := local
		if v.Lease.State == StateActive {
			// The expiry, on the store's clock, moved onto this one.
			due = local.Add(v.Lease.ExpireTime.Sub(UTC(c.Now)))
		}
		m.queue = append(m.queue, claimed{v: v, due: due})
	}
	slices.SortFunc(m.queue, func(a, b claimed) int { return a.due.Compare(b.due) })
	m.mu.Unlock()
	return len(c.Leases), len(c.Leases) >= limit, nil
}

// nextDue is how long until the first queued claim is due.
func (m *Shared) nextDue() time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.queue) == 0 {
		return sharedMaxSleep
	}
	now := m.now()
	if d := m.queue[0].due.Sub(now); d > 0 {
		return d
	}
	switch {
	case m.inflight >= m.cfg.RevokeConcurrency:
		return sharedMaxSleep // a finishing revocation signals
	case m.limiter.available(now) < 1:
		return min(max(m.limiter.wait(now), sharedMinSleep), sharedMaxSleep)
	}
	return sharedMinSleep
}

// ProcessDue starts the revocations of the queued claims that are due,
// within RevokeConcurrency and RevokeRate, and returns how many it
// started. A lease this replica is already revoking (a Revoke call) is
// left to that call.
func (m *Shared) ProcessDue(ctx context.Context) int {
	if ctx.Err() != nil {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	started := 0
	for len(m.queue) > 0 && !m.queue[0].due.After(now) &&
		m.inflight < m.cfg.RevokeConcurrency && m.limiter.available(now) >= 1 {
		c := m.queue[0]
		m.queue = m.queue[1:]
		id := c.v.Lease.ID
		if _, busy := m.flights[id]; busy {
			continue
		}
		f := &flight{done: make(chan struct{})}
		m.flights[id] = f
		m.limiter.take(now)
		m.inflight++
		started++
		m.wg.Add(1)
		go m.expire(ctx, c.v, f)
	}
	return started
}

// expire revokes one claimed lease.
func (m *Shared) expire(ctx context.Context, v Versioned, f *flight) {
	defer m.wg.Done()
	l, err := m.revoke(ctx, v, v.Lease.State == StateActive)
	if errors.Is(err, errRevokeConflict) {
		// Renewed, revoked or claimed elsewhere since the claim: not ours.
		err = nil
		l = v.Lease
	}
	m.finish(v.Lease.ID, f, l, err)
	m.mu.Lock()
	m.inflight--
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
	if err != nil {
		m.log.LogAttrs(ctx, slog.LevelWarn, "lease: revocation failed; will retry",
			append(leaseAttrs(l), slog.Int("attempts", l.Attempts), slog.String("error", err.Error()))...)
	}
}
