package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"github.com/credbroker/credbroker/internal/failpoint"
)

// Failpoints in the revocation path (see package failpoint).
const (
	// FailpointAfterRevoking: the REVOKING record is written, the user not
	// yet dropped.
	FailpointAfterRevoking = "lease-after-revoking-written"
	// FailpointAfterDrop: the user is dropped, the record not yet deleted.
	FailpointAfterDrop = "lease-after-drop"
)

// Revoke revokes the lease synchronously: it records REVOKING durably,
// drops the user, then deletes the record, and returns the final lease with
// State REVOKED (EXPIRED if the revocation had started because the lease
// expired).
//
// Concurrent Revoke calls on one lease, and the expiry loop, share one
// attempt: exactly one Drop runs and every caller gets its outcome; a call
// that arrives once the lease is gone gets ErrNotFound. If Drop fails, the
// lease stays REVOKING with LastError set and is retried with capped
// backoff forever; the error is returned. Revoke on a lease already
// REVOKING retries it now. Revoke on a lease still CREATING returns
// ErrWrongState: its Issue cleans it up.
func (m *Manager) Revoke(ctx context.Context, id string) (Lease, error) {
	if err := m.awaitLease(ctx, id); err != nil {
		return Lease{}, err
	}
	m.mu.Lock()
	e := m.leases[id]
	if e == nil || !e.stored {
		m.mu.Unlock()
		return Lease{}, ErrNotFound
	}
	f := e.flight
	lead := f == nil
	if lead {
		f = &flight{done: make(chan struct{})}
		e.flight = f
	}
	m.mu.Unlock()

	if lead {
		if err := e.lock(ctx); err != nil {
			m.finish(e, f, Lease{}, err)
			return Lease{}, err
		}
		var l Lease
		var err error
		switch {
		case e.gone:
			err = ErrNotFound
		case e.state() == StateCreating:
			err = fmt.Errorf("lease: revoke %s: still being created: %w", id, ErrWrongState)
		default:
			l, err = m.revokeLocked(ctx, e, false)
		}
		m.finish(e, f, l, err)
		e.unlock()
		return l.clone(), err
	}
	select {
	case <-f.done:
		return f.lease.clone(), f.err
	case <-ctx.Done():
		return Lease{}, ctx.Err()
	}
}

// finish publishes a flight's outcome and detaches it from e, so that the
// next Revoke starts a new attempt.
func (m *Manager) finish(e *entry, f *flight, l Lease, err error) {
	m.mu.Lock()
	if e.flight == f {
		e.flight = nil
	}
	m.mu.Unlock()
	f.lease, f.err = l, err
	close(f.done)
}

// abort undoes a lease whose creation or activation failed: it drops the
// user (absent is fine) and deletes the record. cause is logged. If the drop
// fails the lease is kept as REVOKING and retried forever, and the error is
// returned.
func (m *Manager) abort(ctx context.Context, id string, cause error) error {
	e, err := m.lockEntry(ctx, id)
	if err != nil {
		return err
	}
	defer e.unlock()
	attrs := leaseAttrs(e.lease())
	if cause != nil {
		attrs = append(attrs, slog.String("cause", cause.Error()))
	}
	m.log.LogAttrs(ctx, slog.LevelInfo, "lease: aborting", attrs...)
	_, err = m.revokeLocked(ctx, e, false)
	return err
}

// discard forgets a CREATING lease whose user is known not to exist (the
// database said the creation never committed). It deletes the record without
// a drop; if the delete fails it falls back to abort's path, which keeps
// retrying. Use abort when the user may exist.
func (m *Manager) discard(ctx context.Context, id string) error {
	e, err := m.lockEntry(ctx, id)
	if err != nil {
		return err
	}
	defer e.unlock()
	if e.state() != StateCreating {
		return fmt.Errorf("lease: discard %s: %w", id, ErrWrongState)
	}
	if err := m.cfg.Store.Delete(context.WithoutCancel(ctx), id); err != nil {
		_, err = m.revokeLocked(ctx, e, false)
		return err
	}
	m.mu.Lock()
	delete(m.leases, id)
	m.index.remove(e)
	e.gone = true
	m.mu.Unlock()
	return nil
}

// revokeLocked runs one revocation attempt on e, whose lock the caller
// holds. expired marks a revocation the expiry loop started. On success the
// lease is gone and the final lease is returned; on failure it is REVOKING,
// queued for a retry, and returned with the error.
func (m *Manager) revokeLocked(ctx context.Context, e *entry, expired bool) (Lease, error) {
	l := e.lease()
	m.mu.Lock()
	m.queue.Remove(e)
	m.mu.Unlock()

	if l.State != StateRevoking || (expired && !l.Expired) {
		// A CREATING record already means "drop on restart"; anything else
		// records the intent first.
		storeIntent := l.State != StateCreating
		l.State = StateRevoking
		l.Expired = l.Expired || expired
		if storeIntent {
			if err := m.cfg.Store.Put(ctx, l); errors.Is(err, ErrStoreFenced) {
				m.fenced.Store(true)
			} else if err != nil {
				// Drop anyway: a revocation must not wait for the store.
				// The old record stays, and a record without a user is
				// harmless: its next revocation finds the user absent.
				m.log.LogAttrs(ctx, slog.LevelWarn, "lease: REVOKING not recorded; dropping anyway",
					append(leaseAttrs(l), slog.String("error", err.Error()))...)
			}
		}
		m.setLease(e, l)
	}
	failpoint.Hit(FailpointAfterRevoking)
	if m.fenced.Load() {
		// Another broker may hold the store and have renewed this lease:
		// dropping its user could end a live lease. Drop nothing; the
		// retries fail the same way until the broker restarts.
		err := fmt.Errorf("lease: revoke %s: %w: %w: not dropping the user", l.ID, ErrStoreUnavailable, ErrStoreFenced)
		return m.retryLater(ctx, e, l, err.Error(), err)
	}

	bctx, cancel := context.WithTimeout(ctx, m.cfg.BackendTimeout)
	err := m.cfg.Backend.Drop(bctx, l)
	cancel()
	if err != nil {
		return m.retryLater(ctx, e, l, err.Error(), fmt.Errorf("lease: revoke %s: drop: %w", l.ID, err))
	}
	failpoint.Hit(FailpointAfterDrop)

	// The user is gone; record it even if the caller gave up meanwhile.
	if err := m.cfg.Store.Delete(context.WithoutCancel(ctx), l.ID); err != nil {
		err = storeErr("revoke", l.ID, err)
		return m.retryLater(ctx, e, l, err.Error(), err)
	}
	m.mu.Lock()
	delete(m.leases, l.ID)
	m.index.remove(e)
	e.gone = true
	m.mu.Unlock()

	l.State, l.LastError = StateRevoked, ""
	msg := "lease: revoked"
	if l.Expired {
		l.State, msg = StateExpired, "lease: expired"
	}
	m.log.LogAttrs(ctx, slog.LevelInfo, msg, leaseAttrs(l)...)
	if m.cfg.OnEnd != nil {
		m.cfg.OnEnd(l.clone(), l.Expired)
	}
	return l, nil
}

// retryLater records a failed attempt on the REVOKING lease l and queues
// its retry after a capped, jittered backoff.
func (m *Manager) retryLater(ctx context.Context, e *entry, l Lease, lastError string, err error) (Lease, error) {
	l.Attempts++
	l.LastError = lastError
	if perr := m.cfg.Store.Put(context.WithoutCancel(ctx), l); perr != nil {
		// Only the attempt count and error text are lost; the stored record
		// is REVOKING (or older) and is retried after a restart anyway.
		m.log.LogAttrs(ctx, slog.LevelWarn, "lease: failed attempt not recorded",
			append(leaseAttrs(l), slog.String("error", perr.Error()))...)
	}
	at := m.now().Add(backoff(l.Attempts, m.cfg.BackoffBase, m.cfg.BackoffMax))
	m.mu.Lock()
	m.index.set(e, l, m.now())
	m.scheduleLocked(e, at)
	m.mu.Unlock()
	return l.clone(), err
}
