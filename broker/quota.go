package broker

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// Quota is a role's limits (roles.<name>.quota); a zero field is no limit.
type Quota struct {
	// MaxLeasesPerRole caps the live leases of the role, all callers
	// together.
	MaxLeasesPerRole int `yaml:"max_leases_per_role"`
	// MaxLeasesPerCaller caps the live leases of the role one SPIFFE ID
	// holds.
	MaxLeasesPerCaller int `yaml:"max_leases_per_caller"`
	// IssueRatePerCaller is how many issuances a second one SPIFFE ID may
	// have of the role, on average; IssueBurst is the token bucket's size
	// (default: the rate rounded up, at least 1).
	IssueRatePerCaller float64 `yaml:"issue_rate_per_caller"`
	IssueBurst         int     `yaml:"issue_burst"`
}

// validate checks the quota section at key.
func (q Quota) validate(key string) error {
	bad := func(k, msg string) error { return &ConfigError{Key: key + "." + k, Msg: msg} }
	switch {
	case q.MaxLeasesPerRole < 0 || q.MaxLeasesPerRole > math.MaxInt32:
		return bad("max_leases_per_role", "want 0 (no limit) or a positive count")
	case q.MaxLeasesPerCaller < 0 || q.MaxLeasesPerCaller > math.MaxInt32:
		return bad("max_leases_per_caller", "want 0 (no limit) or a positive count")
	case q.IssueRatePerCaller < 0 || math.IsNaN(q.IssueRatePerCaller) || math.IsInf(q.IssueRatePerCaller, 0):
		return bad("issue_rate_per_caller", "want 0 (no limit) or a positive number of issuances a second")
	case q.IssueBurst < 0 || q.IssueBurst > math.MaxInt32:
		return bad("issue_burst", "want a positive count")
	case q.IssueBurst > 0 && q.IssueRatePerCaller == 0:
		return bad("issue_burst", "only with issue_rate_per_caller")
	}
	return nil
}

// IsZero reports whether q limits nothing.
func (q Quota) IsZero() bool { return q == Quota{} }

// liveStates are the states a quota counts: a lease being created or
// active holds (or is about to hold) a working credential. A REVOKING
// lease does not count: its user can no longer log in (the revocation's
// first step), even while the drop is retried.
var liveStates = []lease.State{lease.StateCreating, lease.StateActive}

// quotaError is an issuance refused by a quota (RESOURCE_EXHAUSTED); its
// message names the limit.
type quotaError struct{ msg string }

func (e *quotaError) Error() string { return e.msg }

// quotaLister is the part of lease.Manager quotas count with.
type quotaLister interface {
	List(ctx context.Context, q lease.Query) ([]lease.Lease, error)
}

// quotas enforces the roles' quotas at issuance. Counting and reserving
// happen under one mutex, and a reservation (the new lease's ID) counts
// until the lease manager holds the lease, so that N concurrent issuances
// never exceed a maximum: each sees the leases held plus those reserved.
//
// With capsInStore the lease store checks the live-lease caps itself, in
// the step that writes each CREATING record, counting every replica's
// issuances (lease.Config.Limits, SharedStore.CreateWithin); quotas then
// enforces only the issuance rate. Counting this replica's reservations
// as well would refuse callers for reservations that the store refuses
// in turn: a burst spread over replicas could end with fewer leases than
// the cap and every other caller refused.
type quotas struct {
	leases      quotaLister
	now         func() time.Time
	capsInStore bool

	mu      sync.Mutex
	pending map[string]reservation // lease ID → reservation
	buckets map[bucketKey]*bucket
}

type reservation struct{ role, owner string }

type bucketKey struct{ role, owner string }

// bucket is a token bucket on the injected clock.
type bucket struct {
	tokens float64
	at     time.Time
	rate   float64 // tokens a second
	size   float64
}

// full reports whether b has refilled by now: then it is the same as no
// bucket.
func (b *bucket) full(now time.Time) bool {
	return b.tokens+now.Sub(b.at).Seconds()*b.rate >= b.size
}

// maxBuckets bounds the rate limiter's memory: past it, buckets that have
// refilled (the same as no bucket) are dropped.
const maxBuckets = 10000

// newQuotas counts live leases with leases, unless capsInStore (see
// quotas).
func newQuotas(leases quotaLister, now func() time.Time, capsInStore bool) *quotas {
	return &quotas{leases: leases, now: clock(now), capsInStore: capsInStore, pending: map[string]reservation{}, buckets: map[bucketKey]*bucket{}}
}

// reserve admits lease id of owner under role's quota, or returns a
// *quotaError. On success the caller must call release once the lease
// manager's Issue has returned (whatever it returned).
func (q *quotas) reserve(ctx context.Context, role *Role, owner, id string) (release func(), err error) {
	if q == nil {
		return func() {}, nil
	}
	qu := role.Quota
	if q.capsInStore {
		qu.MaxLeasesPerRole, qu.MaxLeasesPerCaller = 0, 0
	}
	if qu.IsZero() {
		return func() {}, nil
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if qu.MaxLeasesPerRole > 0 {
		n, err := q.countLocked(ctx, lease.Query{Role: role.Name, States: liveStates}, reservation{role: role.Name})
		if err != nil {
			return nil, err
		}
		if n >= qu.MaxLeasesPerRole {
			return nil, roleCapError(role.Name, qu.MaxLeasesPerRole)
		}
	}
	if qu.MaxLeasesPerCaller > 0 {
		n, err := q.countLocked(ctx, lease.Query{Role: role.Name, Owner: owner, States: liveStates}, reservation{role: role.Name, owner: owner})
		if err != nil {
			return nil, err
		}
		if n >= qu.MaxLeasesPerCaller {
			return nil, callerCapError(role.Name, qu.MaxLeasesPerCaller)
		}
	}
	if qu.IssueRatePerCaller > 0 {
		if wait := q.takeLocked(bucketKey{role.Name, owner}, qu); wait > 0 {
			return nil, &quotaError{msg: fmt.Sprintf("role %q: issue_rate_per_caller (%g/s, burst %d) exceeded for this caller: retry in %s", role.Name, qu.IssueRatePerCaller, burst(qu), wait.Round(time.Millisecond))}
		}
	}
	if qu.MaxLeasesPerRole == 0 && qu.MaxLeasesPerCaller == 0 {
		return func() {}, nil // a reservation counts only against caps
	}
	q.pending[id] = reservation{role: role.Name, owner: owner}
	return func() {
		q.mu.Lock()
		delete(q.pending, id)
		q.mu.Unlock()
	}, nil
}

func roleCapError(role string, max int) *quotaError {
	return &quotaError{msg: fmt.Sprintf("role %q: max_leases_per_role (%d) reached: revoke a lease of the role or wait for one to end", role, max)}
}

func callerCapError(role string, max int) *quotaError {
	return &quotaError{msg: fmt.Sprintf("role %q: max_leases_per_caller (%d) reached for this caller: revoke one of its leases or wait for one to end", role, max)}
}

// limitQuotaError is the quota error of a lease store's refusal by a cap
// of roleLimits, with reserve's message, or nil if err is none.
func limitQuotaError(role string, err error) error {
	le, ok := errors.AsType[*lease.LimitError](err)
	switch {
	case !ok:
		return nil
	case le.Owner:
		return callerCapError(role, le.Max)
	}
	return roleCapError(role, le.Max)
}

// roleLimits returns the live-lease caps of each role's quota, for the
// lease store to check (lease.Config.Limits).
func roleLimits(roles map[string]*Role) func(role string) lease.Limits {
	return func(name string) lease.Limits {
		r, ok := roles[name]
		if !ok {
			return lease.Limits{}
		}
		return lease.Limits{Role: r.Quota.MaxLeasesPerRole, Owner: r.Quota.MaxLeasesPerCaller}
	}
}

// countLocked counts the leases sel selects plus the reservations that
// match r (owner "" matches any) and are not among them yet.
func (q *quotas) countLocked(ctx context.Context, sel lease.Query, r reservation) (int, error) {
	ls, err := q.leases.List(ctx, sel)
	if err != nil {
		return 0, fmt.Errorf("quota: count leases: %w", err)
	}
	held := make(map[string]bool, len(ls))
	for _, l := range ls {
		held[l.ID] = true
	}
	n := len(ls)
	for id, p := range q.pending {
		if p.role == r.role && (r.owner == "" || p.owner == r.owner) && !held[id] {
			n++
		}
	}
	return n, nil
}

// burst is the bucket size of qu.
func burst(qu Quota) int {
	if qu.IssueBurst > 0 {
		return qu.IssueBurst
	}
	return max(1, int(math.Ceil(qu.IssueRatePerCaller)))
}

// burstOrZero is the bucket size, or 0 without a rate limit.
func burstOrZero(qu Quota) int {
	if qu.IssueRatePerCaller == 0 {
		return 0
	}
	return burst(qu)
}

// takeLocked takes one token from k's bucket; if there is none it takes
// nothing and returns how long until there is one.
func (q *quotas) takeLocked(k bucketKey, qu Quota) time.Duration {
	now := q.now()
	size := float64(burst(qu))
	b, ok := q.buckets[k]
	if !ok {
		if len(q.buckets) >= maxBuckets {
			for k, b := range q.buckets {
				if b.full(now) {
					delete(q.buckets, k)
				}
			}
		}
		b = &bucket{tokens: size, at: now, rate: qu.IssueRatePerCaller, size: size}
		q.buckets[k] = b
	}
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.tokens = math.Min(size, b.tokens+elapsed.Seconds()*b.rate)
		b.at = now
	}
	if b.tokens >= 1 {
		b.tokens--
		return 0
	}
	return time.Duration((1 - b.tokens) / b.rate * float64(time.Second))
}
