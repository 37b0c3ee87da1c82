package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/credbroker/credbroker/lease"
)

var (
	// errDeregistered: an operator deregistered the caller's workload and it
	// has not been registered again.
	errDeregistered = errors.New("workload is deregistered")
	// errNotRegistered: the last complete listing of SPIRE entries yields no
	// entry for the caller's SPIFFE ID.
	errNotRegistered = errors.New("workload has no SPIRE registration entry")
)

// registry decides, beyond the role policy, whether a SPIFFE ID may be
// issued credentials now:
//
//   - IDs an operator deregistered with AdminService/DeregisterWorkload are
//     refused until RegisterWorkload, or until a SPIRE entry yielding the ID
//     is created after the deregistration. The set is persisted, so a
//     restart does not quietly re-admit them.
//   - With a SPIRE registry watch, an ID that the last complete listing of
//     entries did not contain is refused. Before the first complete listing
//     (SPIRE unreachable at start) nothing is refused: an outage is not a
//     deregistration.
type registry struct {
	path string // the persisted deregistrations (JSON)

	mu     sync.RWMutex
	denied map[string]time.Time // SPIFFE ID → when it was deregistered
	// spire is the last complete listing of SPIRE entries (ID → newest
	// entry creation time); nil while there is none or no watch is set.
	spire map[string]time.Time
	// spireAt is when that listing began: an older one never replaces it.
	spireAt time.Time
}

func openRegistry(path string) (*registry, error) {
	r := &registry{path: path, denied: map[string]time.Time{}}
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return r, nil
	case err != nil:
		return nil, fmt.Errorf("registry: %w", err)
	}
	if err := json.Unmarshal(b, &r.denied); err != nil {
		return nil, fmt.Errorf("registry: %s is unreadable; refusing to forget deregistrations: %w", path, err)
	}
	return r, nil
}

// allowed reports errDeregistered for a refused ID.
func (r *registry) allowed(id string) error {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if _, ok := r.denied[id]; ok {
		return errDeregistered
	}
	if r.spire != nil {
		if _, ok := r.spire[id]; !ok {
			return errNotRegistered
		}
	}
	return nil
}

// deny records a deregistration durably.
func (r *registry) deny(id string, at time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.denied[id]; ok {
		return nil
	}
	r.denied[id] = at
	if err := r.saveLocked(); err != nil {
		delete(r.denied, id)
		return err
	}
	return nil
}

// allow lifts a deregistration; it reports whether there was one.
func (r *registry) allow(id string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	at, ok := r.denied[id]
	if !ok {
		return false, nil
	}
	delete(r.denied, id)
	if err := r.saveLocked(); err != nil {
		r.denied[id] = at
		return false, err
	}
	return true, nil
}

// observe installs a complete SPIRE listing. It lifts deregistrations of IDs
// whose entry was created after the deregistration (registered again) and
// returns them.
func (r *registry) observe(at time.Time, ids map[string]time.Time) (reRegistered []string, stale bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if at.Before(r.spireAt) {
		return nil, true, nil
	}
	r.spire, r.spireAt = ids, at
	for id, at := range r.denied {
		if created, ok := ids[id]; ok && created.After(at) {
			delete(r.denied, id)
			reRegistered = append(reRegistered, id)
		}
	}
	if len(reRegistered) > 0 {
		err = r.saveLocked()
	}
	return reRegistered, false, err
}

// registered reports whether the last SPIRE listing contains id; ok is
// false when there is no listing to judge by.
func (r *registry) registered(id string) (registered, ok bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.spire == nil {
		return false, false
	}
	_, registered = r.spire[id]
	return registered, true
}

func (r *registry) saveLocked() error {
	b, err := json.Marshal(r.denied)
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(r.path), filepath.Base(r.path)+".new-*")
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return fmt.Errorf("registry: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return fmt.Errorf("registry: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	if err := os.Rename(tmp.Name(), r.path); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	d, err := os.Open(filepath.Dir(r.path))
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	return nil
}

// refreshEvery bounds the on-demand re-listings of SPIRE entries that
// unknown callers can trigger.
const refreshEvery = 250 * time.Millisecond

// checkRegistered refuses deregistered callers. A caller missing from the
// last SPIRE listing may have been registered since (its SVID can arrive
// before the next poll), so the listing is refreshed once, rate-limited,
// before refusing.
func (s *Server) checkRegistered(ctx context.Context, id string) error {
	if s.registry == nil {
		return nil
	}
	err := s.registry.allowed(id)
	if !errors.Is(err, errNotRegistered) || s.refresh == nil {
		return err
	}
	s.refreshMu.Lock()
	if time.Since(s.lastRefresh) >= refreshEvery {
		s.lastRefresh = time.Now()
		if rerr := s.refresh(ctx); rerr != nil {
			s.log.Warn("registry refresh failed", "error", rerr)
		}
	}
	s.refreshMu.Unlock()
	return s.registry.allowed(id)
}

// observeRegistry applies a complete SPIRE listing: deregistrations whose
// ID was registered again are lifted, and every lease whose owner no entry
// yields any longer is revoked.
func (s *Server) observeRegistry(ctx context.Context, at time.Time, ids map[string]time.Time) {
	again, stale, err := s.registry.observe(at, ids)
	if stale {
		return
	}
	if err != nil {
		s.log.Error("registry: could not persist re-registrations", "error", err)
	}
	for _, id := range again {
		s.log.Info("audit: workload registered again in SPIRE", "spiffe_id", id)
	}
	owners, err := s.leases.Owners(ctx, lease.StateActive)
	if err != nil {
		s.log.Error("registry: cannot list leases; nothing revoked", "error", err)
		return
	}
	for _, owner := range owners {
		if _, ok := ids[owner]; ok {
			continue
		}
		revoked, err := s.revokeAll(ctx, lease.Query{Owner: owner})
		s.log.Info("audit: SPIRE entry gone, leases revoked", "spiffe_id", owner, "revoked", len(revoked))
		if err != nil {
			// The failed ones stay REVOKING and are retried by the expiry loop.
			s.log.Warn("registry: some revocations failed and will be retried", "spiffe_id", owner, "error", err)
		}
	}
}
