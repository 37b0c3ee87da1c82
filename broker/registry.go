package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
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
//     is created after the deregistration. The set is kept in the lease
//     store (lease.Store Deny, Allow, Denied), as durably as the leases, so
//     a restart does not quietly re-admit them; the registry holds a copy
//     in memory for the checks on every request.
//   - With a SPIRE registry watch, an ID that the last complete listing of
//     entries did not contain is refused. Before the first complete listing
//     (SPIRE unreachable at start) nothing is refused: an outage is not a
//     deregistration.
type registry struct {
	store lease.Store // where the deregistrations are kept
	// shared: other replicas change the deregistrations in the store too
	// (follow keeps the copy in memory theirs), so deny and allow write
	// through even when the copy says there is nothing to change: it may
	// lag behind a change made elsewhere.
	shared bool

	mu     sync.RWMutex
	denied map[string]time.Time // SPIFFE ID → when it was deregistered
	// gen counts this replica's writes of deregistrations (to the store or
	// to denied), so that a reload from the store that began before one of
	// them does not undo it.
	gen uint64
	// spire is the last complete listing of SPIRE entries (ID → newest
	// entry creation time); nil while there is none or no watch is set.
	spire map[string]time.Time
	// spireAt is when that listing began: an older one never replaces it.
	spireAt time.Time
}

// openRegistry reads the deregistrations kept in store. legacy, if not
// empty, is the JSON file where brokers before the store kept them; it is
// imported first (importDenylist).
func openRegistry(ctx context.Context, store lease.Store, legacy string) (*registry, error) {
	if legacy != "" {
		if err := importDenylist(ctx, store, legacy); err != nil {
			return nil, err
		}
	}
	denied, err := store.Denied(ctx)
	if err != nil {
		return nil, fmt.Errorf("registry: refusing to start without the deregistrations: %w", err)
	}
	return &registry{store: store, denied: denied}, nil
}

// importedSuffix is appended to the name of a legacy deregistrations file
// once its contents are in the store.
const importedSuffix = ".imported"

// importDenylist moves the deregistrations of the JSON file at path (SPIFFE
// ID → time, as brokers before the store wrote them next to the bbolt file)
// into store, so that an upgraded broker forgets none. Each is durable in
// the store before the file is renamed to path+importedSuffix, so it is
// imported once: a crash in between imports it again, which changes
// nothing (Deny keeps an ID's first time). The renamed file is left for the
// operator. An unreadable file refuses the start, as it did before.
func importDenylist(ctx context.Context, store lease.Store, path string) error {
	b, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("registry: %w", err)
	}
	var denied map[string]time.Time
	if err := json.Unmarshal(b, &denied); err != nil {
		return fmt.Errorf("registry: %s is unreadable; refusing to forget deregistrations: %w", path, err)
	}
	for _, id := range slices.Sorted(maps.Keys(denied)) {
		if err := store.Deny(ctx, id, denied[id]); err != nil {
			return fmt.Errorf("registry: import %s: %w", path, err)
		}
	}
	if err := os.Rename(path, path+importedSuffix); err != nil {
		return fmt.Errorf("registry: import %s: %w", path, err)
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return fmt.Errorf("registry: import %s: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("registry: import %s: %w", path, err)
	}
	return nil
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
func (r *registry) deny(ctx context.Context, id string, at time.Time) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.denied[id]; ok && !r.shared {
		return nil
	}
	if err := r.store.Deny(ctx, id, at); err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	r.gen++
	if _, ok := r.denied[id]; !ok {
		r.denied[id] = at
	}
	return nil
}

// allow lifts a deregistration; it reports whether there was one.
func (r *registry) allow(ctx context.Context, id string) (bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, was := r.denied[id]
	if !was && !r.shared {
		return false, nil
	}
	if err := r.store.Allow(ctx, id); err != nil {
		return false, fmt.Errorf("registry: %w", err)
	}
	r.gen++
	delete(r.denied, id)
	return was, nil
}

// observe installs a complete SPIRE listing. It lifts deregistrations of IDs
// whose entry was created after the deregistration (registered again) and
// returns them. They are lifted in memory even if the store fails (err):
// the next listing lifts them in the store again.
func (r *registry) observe(ctx context.Context, at time.Time, ids map[string]time.Time) (reRegistered []string, stale bool, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if at.Before(r.spireAt) {
		return nil, true, nil
	}
	r.spire, r.spireAt = ids, at
	var errs []error
	for id, at := range r.denied {
		if created, ok := ids[id]; ok && created.After(at) {
			delete(r.denied, id)
			r.gen++
			reRegistered = append(reRegistered, id)
			if err := r.store.Allow(ctx, id); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := errors.Join(errs...); err != nil {
		return reRegistered, false, fmt.Errorf("registry: %w", err)
	}
	return reRegistered, false, nil
}

// listing is the last complete SPIRE listing (ID → newest entry creation
// time), nil while there is none. The map is never changed once installed.
func (r *registry) listing() map[string]time.Time {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.spire
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
