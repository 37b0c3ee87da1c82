package lease

import (
	"context"
	"errors"
)

// restoring is a Load deferred to Run (DeferLoad).
type restoring struct {
	done chan struct{} // closed when the restore has ended
	err  error         // its outcome; read after done is closed
}

// DeferLoad is Load for a broker that must answer at once after a restart
// with many leases: a million take seconds to decode and index
// (docs/performance.md). It returns at once; Run restores the leases before
// it expires any.
//
// Meanwhile new leases can be issued: Issue and its cleanup need
// nothing restored. Whatever needs the restored leases waits for them:
// Get, Renew and Revoke of a lease not yet known, and List (so that nothing
// ever mistakes a not-yet-restored lease for an absent one, as an orphan
// reconciler would); ProcessDue does nothing until then.
//
// The restore skips the records of leases begun since DeferLoad (they are
// in memory already and may have changed or gone since), and the leases it
// restores cannot change before it ends, since everything that would touch
// them waits. A store that would not load is still refused here, before
// anything is served, which needs a Store that checked every record when
// it was opened: a Verifier (boltstore.Store is one). Any other Store is
// loaded at once, as by Load, so the broker serves only once every lease is
// in memory. If the restore
// fails nonetheless (the disk, or ctx ended), Run returns the error and
// Get, List, Renew and Revoke return it too (never a partial answer): the
// broker must stop.
func (m *Manager) DeferLoad(ctx context.Context) error {
	v, ok := m.cfg.Store.(Verifier)
	if !ok {
		return m.Load(ctx)
	}
	if err := v.Verified(); err != nil {
		return storeErr("load", "", err)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.loaded {
		return errors.New("lease: load: already loaded")
	}
	m.loaded = true
	m.skip = map[string]struct{}{}
	m.deferred.Store(&restoring{done: make(chan struct{})})
	return nil
}

// Restored returns a channel that is closed once the leases of a deferred
// load are in memory and queued (at once for a Manager loaded with Load).
func (m *Manager) Restored() <-chan struct{} {
	if r := m.deferred.Load(); r != nil {
		return r.done
	}
	closed := make(chan struct{})
	close(closed)
	return closed
}

// runDeferredLoad restores the leases of DeferLoad; Run calls it first.
func (m *Manager) runDeferredLoad(ctx context.Context) error {
	r := m.deferred.Load()
	if r == nil {
		return nil
	}
	select {
	case <-r.done:
		return nil // an earlier Run did it
	default:
	}
	r.err = m.load(ctx)
	if r.err != nil && !errors.Is(r.err, ErrStoreUnavailable) {
		r.err = storeErr("load", "", r.err)
	}
	m.mu.Lock()
	m.skip = nil
	m.mu.Unlock()
	close(r.done)
	return r.err
}

// skipped reports whether the restore must leave the record of id alone:
// the lease was begun since DeferLoad.
func (m *Manager) skipped(id string) bool {
	if m.skipping.Load() == 0 {
		return false
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	_, ok := m.skip[id]
	return ok
}

// restoreDone reports whether no deferred restore is pending.
func (m *Manager) restoreDone() bool {
	r := m.deferred.Load()
	if r == nil {
		return true
	}
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// awaitLease waits, while a deferred restore is pending, until it is done,
// unless id (non-empty) is already known: a lease issued since the start
// needs no waiting.
func (m *Manager) awaitLease(ctx context.Context, id string) error {
	r := m.deferred.Load()
	if r == nil {
		return nil
	}
	select {
	case <-r.done:
		return r.err
	default:
	}
	if id != "" {
		m.mu.Lock()
		_, known := m.leases[id]
		m.mu.Unlock()
		if known {
			return nil
		}
	}
	select {
	case <-r.done:
		return r.err
	case <-ctx.Done():
		return ctx.Err()
	}
}
