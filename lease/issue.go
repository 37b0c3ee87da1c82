package lease

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/credbroker/credbroker/internal/failpoint"
)

// Failpoints in the issuance path (see package failpoint). The crash and
// fault suites of cmd/credbroker kill the broker at each of them.
const (
	// FailpointAfterIntent: the CREATING record is durable, the user may
	// or may not be created yet.
	FailpointAfterIntent = "issue-after-intent"
	// FailpointAfterCreateUser: the user exists, the lease is not ACTIVE.
	FailpointAfterCreateUser = "issue-after-create-user"
	// FailpointAfterActivate: the lease is durably ACTIVE, the credential
	// not yet handed out.
	FailpointAfterActivate = "issue-after-activate"
)

// cleanupTimeout bounds the cleanup of a failed issuance, which runs on a
// context detached from the caller's: the caller may have gone, the user
// it may have left behind must not stay.
const cleanupTimeout = 30 * time.Second

// CreateFunc creates the database user of a lease being issued. It must
// call intent, and get nil from it, before the user can exist (before the
// transaction that creates it commits); intent returns once the lease's
// CREATING record is durable, or the error that prevented it, and then
// nothing may be created. An error after which no user exists should wrap
// ErrNotCreated (see NotCreated).
type CreateFunc func(ctx context.Context, intent func(context.Context) error) error

// Issue runs the crash-safe issuance of l: the CREATING record, written in
// the background while create prepares the user; the user, which create
// makes only once that record is durable; the ACTIVE record. It returns
// the ACTIVE lease only once that record is durable: then, and only then,
// may the credential be handed out. Together this keeps invariants 1 and 2
// (package doc): every user the broker may have created has a record, and
// no credential precedes its durable ACTIVE record.
//
// l.ID must be from NewID; ExpireTime and MaxExpireTime are required,
// IssueTime defaults to now; State is ignored.
//
// Every failure leaves no user behind, or its drop queued: a create error
// wrapping ErrNotCreated deletes the record (no drop needed); any other
// failure, of create or of the ACTIVE write, drops the user and deletes the
// record, retrying the drop in the background like a revocation if it
// fails. The cleanup does not depend on ctx (bounded by 30 s). A create
// that returned nil although the record could not be written broke its
// contract: the user it made is dropped at once through Backend.Drop and
// the error logged. The error returned is create's, or the store's.
func (m *Manager) Issue(ctx context.Context, l Lease, create CreateFunc) (Lease, error) {
	in := m.startIntent(ctx, l)
	err := create(ctx, in.wait)
	if ierr := in.result(); ierr != nil {
		if err == nil {
			dropUnrecorded(ctx, m.cfg.Backend, m.log, l)
		}
		return Lease{}, ierr
	}
	if errors.Is(err, ErrNotCreated) {
		// Nothing exists on the server: forget the intent, leave nothing.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if derr := m.discard(cctx, l.ID); derr != nil {
			m.issueCleanupFailed(ctx, l, derr)
		}
		return Lease{}, err
	}
	var act Lease
	if err == nil {
		failpoint.Hit(FailpointAfterCreateUser)
		act, err = m.activate(ctx, l.ID)
	}
	if err != nil {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if aerr := m.abort(cctx, l.ID, err); aerr != nil {
			m.issueCleanupFailed(ctx, l, aerr)
		}
		return Lease{}, err
	}
	failpoint.Hit(FailpointAfterActivate)
	return act, nil
}

func (m *Manager) issueCleanupFailed(ctx context.Context, l Lease, err error) {
	m.log.LogAttrs(ctx, slog.LevelWarn, "issuance cleanup queued for retry",
		slog.String("lease_id", l.ID), slog.String("username", l.Username), slog.String("error", err.Error()))
}

// NotCreated returns err marked with ErrNotCreated, its message unchanged:
// for a CreateFunc whose error says that no user exists.
func NotCreated(err error) error {
	if err == nil {
		return nil
	}
	return notCreated{err}
}

type notCreated struct{ error }

func (e notCreated) Unwrap() []error { return []error{e.error, ErrNotCreated} }

// intent is the CREATING record of one issuance, written in the background
// while create works.
type intent struct {
	done chan struct{}
	err  error // valid once done is closed
}

func (m *Manager) startIntent(ctx context.Context, l Lease) *intent {
	in := &intent{done: make(chan struct{})}
	go func() {
		defer close(in.done)
		if in.err = m.begin(ctx, l); in.err == nil {
			failpoint.Hit(FailpointAfterIntent)
		}
	}()
	return in
}

// wait is the intent function given to create: nil once the record is
// durable.
func (in *intent) wait(ctx context.Context) error {
	select {
	case <-in.done:
		return in.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// result waits for the write to end, whatever became of create, so that
// Issue knows whether a record exists to clean up.
func (in *intent) result() error {
	<-in.done
	return in.err
}

// dropUnrecorded removes the user of l, created without its record (a
// create that did not wait for intent).
func dropUnrecorded(ctx context.Context, b Backend, log *slog.Logger, l Lease) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	err := b.Drop(dctx, l)
	log.LogAttrs(ctx, slog.LevelError, "plugin created a user before its lease record was durable; dropped it",
		slog.String("username", l.Username), slog.Bool("dropped", err == nil))
}
