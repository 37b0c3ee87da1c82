package lease

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
)

// memMeta is what a SharedStore keeps about a row besides its lease.
type memMeta struct {
	version       int64
	claimedBy     string
	deadline      time.Time // the claim's; zero: not claimed
	revokingSince time.Time
}

// SetClock sets the store's clock, the one claims are timed by (default
// time.Now): tests give the same fake clock to the store and the managers.
func (s *MemStore) SetClock(now func() time.Time) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.now = now
}

// Shared returns a view of s as the SharedStore of the replica named
// replica: several views of one MemStore are the replicas of one shared
// store. Closing a view leaves s and the other views open (as one
// replica's stopping leaves the shared store to the others); the view's
// later calls still reach s.
func (s *MemStore) Shared(replica string) SharedStore {
	return &memReplica{MemStore: s, name: replica}
}

type memReplica struct {
	*MemStore
	name string
}

var _ SharedStore = (*memReplica)(nil)

// Close is a no-op: see Shared.
func (r *memReplica) Close() error { return nil }

// wroteLocked records a write of l: the version bumped, the claim set to
// replica until now+hold (hold > 0) or ended, the REVOKING time kept.
func (s *MemStore) wroteLocked(replica string, l Lease, hold time.Duration) *memMeta {
	m := s.meta[l.ID]
	if m == nil {
		m = &memMeta{}
		s.meta[l.ID] = m
	}
	m.version++
	now := UTC(s.now())
	m.claimedBy, m.deadline = "", time.Time{}
	if hold > 0 {
		m.claimedBy, m.deadline = replica, now.Add(hold)
	}
	switch {
	case l.State != StateRevoking:
		m.revokingSince = time.Time{}
	case m.revokingSince.IsZero():
		m.revokingSince = now
	}
	return m
}

func (r *memReplica) Create(ctx context.Context, l Lease, hold time.Duration) (int64, error) {
	return r.CreateWithin(ctx, l, hold, Limits{})
}

func (r *memReplica) CreateWithin(ctx context.Context, l Lease, hold time.Duration, lim Limits) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return 0, fmt.Errorf("lease: store create %s: %w", l.ID, err)
	}
	if l.State != StateCreating {
		return 0, fmt.Errorf("lease: store create %s: state %s: %w", l.ID, l.State, ErrInvalid)
	}
	if _, ok := r.leases[l.ID]; ok {
		return 0, fmt.Errorf("lease: store create %s: %w", l.ID, ErrExists)
	}
	if l.RequestID != "" {
		for _, o := range r.leases {
			if o.Owner == l.Owner && o.RequestID == l.RequestID {
				return 0, fmt.Errorf("lease: store create %s: lease %s has its request id: %w", l.ID, o.ID, ErrRequestExists)
			}
		}
	}
	if err := lim.Check(); err != nil {
		return 0, fmt.Errorf("lease: store create %s: %w", l.ID, err)
	}
	if !lim.IsZero() {
		n, own := 0, 0
		for _, o := range r.leases {
			if o.Role == l.Role && (o.State == StateCreating || o.State == StateActive) {
				n++
				if o.Owner == l.Owner {
					own++
				}
			}
		}
		if err := lim.Over(n, own); err != nil {
			return 0, fmt.Errorf("lease: store create %s: %w", l.ID, err)
		}
	}
	if r.failPut != nil {
		if err := r.failPut(l); err != nil {
			return 0, fmt.Errorf("lease: store create %s: %w: %w", l.ID, ErrStoreUnavailable, err)
		}
	}
	r.leases[l.ID] = normalizeTimes(l.clone())
	return r.wroteLocked(r.name, l, hold).version, nil
}

func (r *memReplica) GetVersion(ctx context.Context, id string) (Versioned, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return Versioned{}, fmt.Errorf("lease: store get %s: %w", id, err)
	}
	l, ok := r.leases[id]
	if !ok {
		return Versioned{}, fmt.Errorf("lease: store get %s: %w", id, ErrNotFound)
	}
	return Versioned{Lease: l.clone(), Version: r.meta[id].version}, nil
}

func (r *memReplica) PutIfVersion(ctx context.Context, l Lease, version int64, hold time.Duration) (int64, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	op := fmt.Sprintf("lease: store put %s at version %d", l.ID, version)
	if err := r.usable(ctx); err != nil {
		return 0, fmt.Errorf("%s: %w", op, err)
	}
	if m := r.meta[l.ID]; m == nil || m.version != version {
		return 0, fmt.Errorf("%s: %w", op, ErrConflict)
	}
	if r.failPut != nil {
		if err := r.failPut(l); err != nil {
			return 0, fmt.Errorf("%s: %w: %w", op, ErrStoreUnavailable, err)
		}
	}
	r.leases[l.ID] = normalizeTimes(l.clone())
	return r.wroteLocked(r.name, l, hold).version, nil
}

func (r *memReplica) DeleteIfVersion(ctx context.Context, id string, version int64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	op := fmt.Sprintf("lease: store delete %s at version %d", id, version)
	if err := r.usable(ctx); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	if m := r.meta[id]; m == nil || m.version != version {
		return fmt.Errorf("%s: %w", op, ErrConflict)
	}
	if r.failDelete != nil {
		if err := r.failDelete(id); err != nil {
			return fmt.Errorf("%s: %w: %w", op, ErrStoreUnavailable, err)
		}
	}
	delete(r.leases, id)
	delete(r.meta, id)
	return nil
}

func (r *memReplica) ClaimDue(ctx context.Context, req ClaimRequest) (Claimed, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return Claimed{}, fmt.Errorf("lease: store claim: %w", err)
	}
	if req.Limit < 1 || req.TTL <= 0 || req.Lookahead < 0 {
		return Claimed{}, fmt.Errorf("lease: store claim: limit %d, ttl %s, lookahead %s: %w", req.Limit, req.TTL, req.Lookahead, ErrInvalid)
	}
	if r.failScan != nil {
		if err := r.failScan(); err != nil {
			return Claimed{}, fmt.Errorf("lease: store claim: %w: %w", ErrStoreUnavailable, err)
		}
	}
	now := UTC(r.now())
	type cand struct {
		id  string
		due time.Time
	}
	var cands []cand
	for id, l := range r.leases {
		m := r.meta[id]
		if !m.deadline.IsZero() && !m.deadline.Before(now) {
			continue // claimed
		}
		switch {
		case l.State == StateActive && !l.ExpireTime.After(now.Add(req.Lookahead)):
			cands = append(cands, cand{id, l.ExpireTime})
		case l.State == StateRevoking || l.State == StateCreating:
			cands = append(cands, cand{id, time.Time{}}) // first
		}
	}
	slices.SortFunc(cands, func(a, b cand) int { return cmp.Or(a.due.Compare(b.due), strings.Compare(a.id, b.id)) })
	out := Claimed{Now: now}
	for _, c := range cands[:min(len(cands), req.Limit)] {
		m := r.meta[c.id]
		m.version++
		m.claimedBy, m.deadline = r.name, now.Add(req.TTL)
		out.Leases = append(out.Leases, Versioned{Lease: r.leases[c.id].clone(), Version: m.version})
	}
	return out, nil
}

func (r *memReplica) Query(ctx context.Context, q Query) ([]Lease, error) {
	var out []Lease
	err := r.Scan(ctx, Filter{Owner: q.Owner}, func(l Lease) error {
		if (q.Role == "" || l.Role == q.Role) && (q.Database == "" || l.Database == q.Database) &&
			(len(q.States) == 0 || slices.Contains(q.States, l.State)) &&
			strings.HasPrefix(l.ID, q.IDPrefix) && l.ID > q.After &&
			(len(q.IDs) == 0 || slices.Contains(q.IDs, l.ID)) {
			out = append(out, l)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(out, func(a, b Lease) int { return strings.Compare(a.ID, b.ID) })
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out, nil
}

func (r *memReplica) FindRequest(ctx context.Context, owner, requestID string) (Lease, error) {
	var found *Lease
	err := r.Scan(ctx, Filter{Owner: owner}, func(l Lease) error {
		if l.RequestID == requestID {
			found = &l
		}
		return nil
	})
	switch {
	case err != nil:
		return Lease{}, err
	case found == nil:
		return Lease{}, fmt.Errorf("lease: store find request: %w", ErrNotFound)
	}
	return *found, nil
}

func (r *memReplica) Owners(ctx context.Context, s State) ([]string, error) {
	seen := map[string]bool{}
	err := r.Scan(ctx, Filter{State: s}, func(l Lease) error {
		seen[l.Owner] = true
		return nil
	})
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(seen))
	for o := range seen {
		out = append(out, o)
	}
	slices.Sort(out)
	return out, nil
}

func (r *memReplica) Stats(ctx context.Context) (Stats, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.usable(ctx); err != nil {
		return Stats{}, fmt.Errorf("lease: store stats: %w", err)
	}
	st := Stats{ByState: map[State]int{StateCreating: 0, StateActive: 0, StateRevoking: 0}, ByRole: map[string]int{}}
	for id, l := range r.leases {
		st.ByState[l.State]++
		st.ByRole[l.Role]++
		if rs := r.meta[id].revokingSince; !rs.IsZero() && (st.OldestRevoking.IsZero() || rs.Before(st.OldestRevoking)) {
			st.OldestRevoking = rs
		}
	}
	return st, nil
}

// errNoShared is the error of a Shared manager given a Store that is not
// a SharedStore.
var errNoShared = errors.New("lease: the store is not shared (no SharedStore): use NewManager")
