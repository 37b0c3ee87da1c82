package broker

import (
	"context"
	"errors"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
)

// Errors raised by the broker itself.
var (
	errNotAdmin     = errors.New("caller is not an admin")
	errUnauthorized = errors.New("caller presented no SPIFFE ID")
	// WatchCredential stream endings.
	errLeaseRevoked = errors.New("the stream's lease was revoked")
	errLeaseExpired = errors.New("the stream's lease expired before it could be renewed or replaced")
	errShuttingDown = errors.New("the broker is shutting down")
	errNoWatch      = errors.New("WatchCredential is not served by this server")
)

// invalidArgError marks a request that is wrong whatever the server's state.
type invalidArgError struct{ msg string }

func (e *invalidArgError) Error() string { return e.msg }

func invalidArg(msg string) error { return &invalidArgError{msg: msg} }

// databaseError names the logical database a plugin error came from, so the
// status can tell an operator which database needs attention.
type databaseError struct {
	name string
	err  error
}

func (e *databaseError) Error() string { return "database " + e.name + ": " + e.err.Error() }
func (e *databaseError) Unwrap() error { return e.err }

// inDatabase names the database of err (nil stays nil).
func inDatabase(name string, err error) error {
	if err == nil {
		return nil
	}
	return &databaseError{name: name, err: err}
}

// databaseName is `database "<name>"` for an error naming its database,
// else "database".
func databaseName(err error) string {
	if de, ok := errors.AsType[*databaseError](err); ok {
		return fmt.Sprintf("database %q", de.name)
	}
	return "database"
}

// rotateRefusal is the message of a rotation refused before it started.
func rotateRefusal(err error) string {
	for _, e := range []error{errRotateNeedsFile, errRotationPending, plugins.ErrRotateUnsupported} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	return "cannot rotate"
}

// databaseStatus is the status of a plugin error: what kind of failure, in
// which database, and never the server's own text (which names objects and
// the admin user; the broker's log has it). It is nil for an error of no
// such kind.
func databaseStatus(err error) error {
	where := databaseName(err)
	k := plugins.KindOf(err)
	switch {
	case k.AdminLogin():
		return status.Error(codes.Unavailable, where+": the server refused the broker's admin login (check the admin user and its password)")
	case k.AdminPrivilege():
		return status.Error(codes.FailedPrecondition, where+": the broker's admin user lacks a privilege the operation needs (see the broker's log; docs/config.md lists the admin privileges)")
	case k.Unavailable():
		return status.Error(codes.Unavailable, where+" unavailable")
	case k.InvalidStatement():
		return status.Error(codes.InvalidArgument, where+": the role's statements were rejected by the database")
	}
	return nil
}

// toStatus is the one place that turns an error into a gRPC status. Every
// error that reaches it is already free of secrets (plugins are wrapped by
// plugins.Sanitized; the lease package carries none), but anything not
// recognised is reported as a bare "internal error" and logged by the caller.
// Never wrap with %w inside status.Errorf. Model: SPIRE pkg/server/api/status.go.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	var (
		ia  *invalidArgError
		qe  *quotaError
		rex *requestExistsError
		rro *requestRoleError
	)
	switch {
	case errors.As(err, &ia):
		return status.Error(codes.InvalidArgument, ia.msg)
	case errors.As(err, &qe):
		return status.Error(codes.ResourceExhausted, qe.msg)
	case errors.As(err, &rex):
		return status.Error(codes.AlreadyExists, rex.Error())
	case errors.As(err, &rro):
		return status.Error(codes.FailedPrecondition, rro.Error())
	case errors.Is(err, lease.ErrRequestExists):
		return status.Error(codes.AlreadyExists, "request_id already issued a lease; revoke it or use a new request_id")
	case errors.Is(err, audit.ErrUnavailable):
		return status.Error(codes.Unavailable, "audit log unavailable")
	case errors.Is(err, errUnauthorized), errors.Is(err, identity.ErrNoPeerID):
		return status.Error(codes.Unauthenticated, "a verified X.509-SVID with a SPIFFE ID is required")
	case errors.Is(err, identity.ErrSVIDNotValid):
		return status.Error(codes.Unauthenticated, "the caller's X.509-SVID is expired or not yet valid; reconnect with a current SVID")
	case errors.Is(err, errNotAdmin):
		return status.Error(codes.PermissionDenied, "caller is not an admin")
	case errors.Is(err, identity.ErrNotAllowed):
		return status.Error(codes.PermissionDenied, "caller is not allowed this role")
	case errors.Is(err, errDeregistered):
		return status.Error(codes.PermissionDenied, "caller's workload is deregistered")
	case errors.Is(err, errNotRegistered):
		return status.Error(codes.PermissionDenied, "caller's workload has no registration entry")
	case errors.Is(err, errLeaseRevoked):
		return status.Error(codes.Aborted, "the stream's lease was revoked")
	case errors.Is(err, errLeaseExpired):
		return status.Error(codes.Unavailable, "the stream's lease expired before it could be renewed or replaced")
	case errors.Is(err, errShuttingDown):
		return status.Error(codes.Unavailable, "the broker is shutting down; reconnect")
	case errors.Is(err, errNoWatch):
		return status.Error(codes.Unimplemented, "WatchCredential is not served by this server")
	case errors.Is(err, identity.ErrUnknownRole):
		return status.Error(codes.NotFound, "no such role")
	case errors.Is(err, lease.ErrNotFound):
		return status.Error(codes.NotFound, "no such lease")
	case errors.Is(err, lease.ErrMaxTTLReached):
		return status.Error(codes.FailedPrecondition, "lease is already at its max ttl")
	case errors.Is(err, lease.ErrNotActive):
		return status.Error(codes.FailedPrecondition, "lease is not active")
	case errors.Is(err, lease.ErrStoreUnavailable):
		return status.Error(codes.Unavailable, "lease store unavailable")
	case errors.Is(err, errNoDatabase):
		return status.Error(codes.NotFound, "no such database")
	case errors.Is(err, errRotateNeedsFile), errors.Is(err, errRotationPending), errors.Is(err, plugins.ErrRotateUnsupported):
		return status.Error(codes.FailedPrecondition, databaseName(err)+": "+rotateRefusal(err))
	case errors.Is(err, errRotateUnfinished):
		return status.Error(codes.Internal, databaseName(err)+": "+errRotateUnfinished.Error()+"; it is resolved at the next start")
	case databaseStatus(err) != nil:
		return databaseStatus(err)
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	}
	return status.Error(codes.Internal, "internal error")
}
