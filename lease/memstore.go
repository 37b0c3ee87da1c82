package lease

import (
	"context"
	"fmt"
	"sync"
	"time"
)

// MemStore is an in-memory Store for tests and benchmarks. It keeps nothing
// across restarts, so it must not back a real broker. Fault hooks make its
// operations fail on demand, to test fail-closed behaviour.
//
// It has none of the optional abilities (Verifier, SizeHinter,
// BulkPutter): DeferLoad on it loads at once, as Load. Shared gives views
// of it that are a SharedStore, for the Shared manager's tests.
type MemStore struct {
	mu         sync.Mutex
	leases     map[string]Lease
	denied     map[string]time.Time
	closed     bool
	failPut    func(Lease) error
	failDelete func(id string) error
	failScan   func() error

	// What a SharedStore keeps besides the lease (memstore_shared.go).
	meta map[string]*memMeta
	now  func() time.Time // the store's clock, for claims
}

var _ Store = (*MemStore)(nil)

// NewMemStore returns an empty MemStore, optionally holding leases.
func NewMemStore(leases ...Lease) *MemStore {
	s := &MemStore{leases: make(map[string]Lease, len(leases)), denied: map[string]time.Time{},
		meta: map[string]*memMeta{}, now: time.Now}
	for _, l := range leases {
		s.leases[l.ID] = normalizeTimes(l.clone())
		s.wroteLocked("", l, 0)
	}
	return s
}

// SetFailPut makes every later Put call fn first; a non-nil result fails
// the Put (wrapped in ErrStoreUnavailable) and stores nothing. nil removes
// the hook.
func (s *MemStore) SetFailPut(fn func(Lease) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failPut = fn
}

// SetFailDelete is SetFailPut for Delete.
func (s *MemStore) SetFailDelete(fn func(id string) error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failDelete = fn
}

// SetFailScan is SetFailPut for Scan.
func (s *MemStore) SetFailScan(fn func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failScan = fn
}

// Get returns the stored lease with id.
func (s *MemStore) Get(ctx context.Context, id string) (Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(ctx); err != nil {
		return Lease{}, fmt.Errorf("lease: store get %s: %w", id, err)
	}
	l, ok := s.leases[id]
	if !ok {
		return Lease{}, fmt.Errorf("lease: store get %s: %w", id, ErrNotFound)
	}
	return l.clone(), nil
}

// Len is the number of stored leases.
func (s *MemStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.leases)
}

// Put stores a copy of l.
func (s *MemStore) Put(ctx context.Context, l Lease) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("lease: store put %s: %w", l.ID, err)
	}
	if s.failPut != nil {
		if err := s.failPut(l); err != nil {
			return fmt.Errorf("lease: store put %s: %w: %w", l.ID, ErrStoreUnavailable, err)
		}
	}
	s.leases[l.ID] = normalizeTimes(l.clone())
	s.wroteLocked("", l, 0) // a Put ends any claim
	return nil
}

// Delete removes the lease with id; an absent id is not an error.
func (s *MemStore) Delete(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("lease: store delete %s: %w", id, err)
	}
	if s.failDelete != nil {
		if err := s.failDelete(id); err != nil {
			return fmt.Errorf("lease: store delete %s: %w: %w", id, ErrStoreUnavailable, err)
		}
	}
	delete(s.leases, id)
	delete(s.meta, id)
	return nil
}

// Scan calls fn for a snapshot of the stored leases that f matches,
// without holding the lock, so fn may call back into the store.
func (s *MemStore) Scan(ctx context.Context, f Filter, fn func(Lease) error) error {
	s.mu.Lock()
	if err := s.usable(ctx); err != nil {
		s.mu.Unlock()
		return fmt.Errorf("lease: store scan: %w", err)
	}
	if s.failScan != nil {
		if err := s.failScan(); err != nil {
			s.mu.Unlock()
			return fmt.Errorf("lease: store scan: %w: %w", ErrStoreUnavailable, err)
		}
	}
	snap := make([]Lease, 0, len(s.leases))
	for _, l := range s.leases {
		if f.Match(l) {
			snap = append(snap, l.clone())
		}
	}
	s.mu.Unlock()
	for _, l := range snap {
		if err := fn(l); err != nil {
			return err
		}
	}
	return nil
}

// Deny records the deregistration of id at at, unless id is denied already.
func (s *MemStore) Deny(ctx context.Context, id string, at time.Time) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("lease: store deny %s: %w", id, err)
	}
	if _, ok := s.denied[id]; !ok {
		s.denied[id] = UTC(at)
	}
	return nil
}

// Allow lifts the deregistration of id.
func (s *MemStore) Allow(ctx context.Context, id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("lease: store allow %s: %w", id, err)
	}
	delete(s.denied, id)
	return nil
}

// Denied returns a copy of the deregistrations.
func (s *MemStore) Denied(ctx context.Context) (map[string]time.Time, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.usable(ctx); err != nil {
		return nil, fmt.Errorf("lease: store denied: %w", err)
	}
	out := make(map[string]time.Time, len(s.denied))
	for id, at := range s.denied {
		out[id] = at
	}
	return out, nil
}

// Close makes every later call fail with ErrStoreUnavailable.
func (s *MemStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

func (s *MemStore) usable(ctx context.Context) error {
	if s.closed {
		return fmt.Errorf("%w: closed", ErrStoreUnavailable)
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrStoreUnavailable, err)
	}
	return nil
}
