package broker

import (
	"context"
	"errors"

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
)

// invalidArgError marks a request that is wrong whatever the server's state.
type invalidArgError struct{ msg string }

func (e *invalidArgError) Error() string { return e.msg }

func invalidArg(msg string) error { return &invalidArgError{msg: msg} }

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
		rex *requestExistsError
		rro *requestRoleError
	)
	switch {
	case errors.As(err, &ia):
		return status.Error(codes.InvalidArgument, ia.msg)
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
	case errors.Is(err, errNotAdmin):
		return status.Error(codes.PermissionDenied, "caller is not an admin")
	case errors.Is(err, identity.ErrNotAllowed):
		return status.Error(codes.PermissionDenied, "caller is not allowed this role")
	case errors.Is(err, errDeregistered):
		return status.Error(codes.PermissionDenied, "caller's workload is deregistered")
	case errors.Is(err, errNotRegistered):
		return status.Error(codes.PermissionDenied, "caller's workload has no registration entry")
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
	case errors.Is(err, plugins.ErrUnavailable):
		return status.Error(codes.Unavailable, "database unavailable")
	case errors.Is(err, plugins.ErrInvalidStatement):
		return status.Error(codes.InvalidArgument, "the role's statements were rejected by the database")
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, "deadline exceeded")
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, "canceled")
	}
	return status.Error(codes.Internal, "internal error")
}
