package broker

import (
	"context"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/identity"
)

// UnaryAuth refuses any call whose peer has no verified SPIFFE ID before a
// handler runs, and puts the ID in the context for the handlers. It is also
// where handler errors become gRPC statuses (toStatus) and are logged, once,
// and where refused calls (UNAUTHENTICATED, PERMISSION_DENIED) are
// recorded in the audit log. Every call, refused or handled, is counted and
// timed in the metrics (if on).
func (s *Server) UnaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (_ any, err error) {
	start := time.Now()
	defer func() { s.metrics.grpcCall(info.FullMethod, status.Code(err), time.Since(start)) }()
	id, err := identity.CallerID(ctx)
	if err != nil {
		st := toStatus(errUnauthorized)
		s.refused(ctx, "", req, info.FullMethod, st)
		return nil, st
	}
	resp, err := handler(identity.WithCaller(ctx, id), req)
	if err != nil {
		st := toStatus(err)
		s.log.Info("call failed", "method", info.FullMethod, "spiffe_id", id.String(), "error", err.Error())
		s.refused(ctx, id.String(), req, info.FullMethod, st)
		return nil, st
	}
	return resp, nil
}

// StreamAuth is UnaryAuth for streams (WatchCredential, reflection, health
// watch): the same refusal of a peer without a verified SPIFFE ID, the ID
// in the stream's context, and handler errors turned into statuses
// (toStatus) and logged once; statuses of the services that make their own
// (reflection, health) pass through.
func (s *Server) StreamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	defer func() { s.metrics.grpcCall(info.FullMethod, status.Code(err), time.Since(start)) }()
	id, err := identity.CallerID(ss.Context())
	if err != nil {
		st := toStatus(errUnauthorized)
		s.refused(ss.Context(), "", nil, info.FullMethod, st)
		return st
	}
	err = handler(srv, callerStream{ServerStream: ss, ctx: identity.WithCaller(ss.Context(), id)})
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	st := toStatus(err)
	s.log.Info("stream ended", "method", info.FullMethod, "spiffe_id", id.String(), "error", err.Error())
	s.refused(ss.Context(), id.String(), nil, info.FullMethod, st)
	return st
}

// callerStream is a server stream whose context carries the caller's ID.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c callerStream) Context() context.Context { return c.ctx }

// refused writes the refused record of a call answered st, if st is
// UNAUTHENTICATED or PERMISSION_DENIED: the method as reason, the code as
// result, and the role the request asked for, if any.
func (s *Server) refused(ctx context.Context, caller string, req any, method string, st error) {
	c := status.Code(st)
	if c != codes.Unauthenticated && c != codes.PermissionDenied {
		return
	}
	r := audit.Record{Event: audit.EventRefused, Caller: caller, Result: codeName(c), Reason: method}
	if rr, ok := req.(interface{ GetRole() string }); ok {
		r.Role = clip(rr.GetRole())
	}
	s.audit.write(ctx, r)
}

// caller is the verified SPIFFE ID UnaryAuth put in ctx.
func caller(ctx context.Context) (spiffeid.ID, error) {
	id, ok := identity.CallerFromContext(ctx)
	if !ok {
		return spiffeid.ID{}, errUnauthorized
	}
	return id, nil
}
