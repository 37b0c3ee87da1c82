package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/identity"
)

// UnaryAuth refuses any call whose peer has no verified SPIFFE ID, or
// whose SVID is no longer (or not yet) valid on the server's clock, before
// a handler runs, and puts the ID in the context for the handlers. A TLS
// connection is verified only at its handshake and may outlive the SVID it
// was opened with, so the validity period is checked again on every call
// (and connections are recycled: server.max_connection_age). It is also
// where handler errors become gRPC statuses (toStatus) and are logged, once,
// and where refused calls (UNAUTHENTICATED, PERMISSION_DENIED) are
// recorded in the audit log. Every call, refused or handled, is counted and
// timed in the metrics (if on).
func (s *Server) UnaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (_ any, err error) {
	start := time.Now()
	defer func() { s.metrics.grpcCall(info.FullMethod, status.Code(err), time.Since(start)) }()
	p, err := s.authenticate(ctx, req, info.FullMethod)
	if err != nil {
		return nil, err
	}
	id := p.ID
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
// watch): the same refusal of a peer without a verified SPIFFE ID or with an
// SVID no longer valid, the ID in the stream's context, and handler errors
// turned into statuses (toStatus) and logged once; statuses of the services
// that make their own (reflection, health) pass through. The stream's
// context also ends when the SVID expires: a handler that follows its
// context (as every long-lived stream must) then ends, and the stream is
// answered UNAUTHENTICATED and recorded as refused, rather than serving an
// expired caller until its connection is recycled.
func (s *Server) StreamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) (err error) {
	start := time.Now()
	defer func() { s.metrics.grpcCall(info.FullMethod, status.Code(err), time.Since(start)) }()
	p, err := s.authenticate(ss.Context(), nil, info.FullMethod)
	if err != nil {
		return err
	}
	expired := fmt.Errorf("%w: x509-svid of %s expired at %s during the stream", identity.ErrSVIDNotValid, p.ID, p.NotAfter.UTC().Format(time.RFC3339))
	ctx, cancel := context.WithTimeoutCause(ss.Context(), p.NotAfter.Sub(s.now()), expired)
	defer cancel()
	err = handler(srv, callerStream{ServerStream: ss, ctx: identity.WithCaller(ctx, p.ID)})
	// Also when the handler returned nil on its context's end: the expiry cut it.
	if errors.Is(context.Cause(ctx), identity.ErrSVIDNotValid) {
		st := toStatus(expired)
		s.log.Info("stream ended", "method", info.FullMethod, "spiffe_id", p.ID.String(), "error", expired.Error())
		s.refused(ss.Context(), p.ID.String(), nil, info.FullMethod+": "+strings.TrimPrefix(expired.Error(), "identity: "), st)
		return st
	}
	if err == nil {
		return nil
	}
	if _, ok := err.(interface{ GRPCStatus() *status.Status }); ok {
		return err
	}
	st := toStatus(err)
	s.log.Info("stream ended", "method", info.FullMethod, "spiffe_id", p.ID.String(), "error", err.Error())
	s.refused(ss.Context(), p.ID.String(), nil, info.FullMethod, st)
	return st
}

// authenticate returns the caller's SVID, or the status refusing the call
// (UNAUTHENTICATED), already recorded in the audit log: no verified SPIFFE
// ID, or an SVID whose validity period does not hold s.now().
func (s *Server) authenticate(ctx context.Context, req any, method string) (identity.PeerSVID, error) {
	p, err := identity.PeerSVIDFromContext(ctx)
	if err != nil {
		st := toStatus(errUnauthorized)
		s.refused(ctx, "", req, method, st)
		return identity.PeerSVID{}, st
	}
	if err := p.CheckValidAt(s.now()); err != nil {
		st := toStatus(err)
		s.log.Info("call refused", "method", method, "spiffe_id", p.ID.String(), "error", err.Error())
		s.refused(ctx, p.ID.String(), req, method+": "+strings.TrimPrefix(err.Error(), "identity: "), st)
		return identity.PeerSVID{}, st
	}
	return p, nil
}

// callerStream is a server stream whose context carries the caller's ID.
type callerStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c callerStream) Context() context.Context { return c.ctx }

// refused writes the refused record of a call answered st, if st is
// UNAUTHENTICATED or PERMISSION_DENIED: the method as reason (followed by
// why, for an SVID that is no longer valid), the code as result, and the
// role the request asked for, if any.
func (s *Server) refused(ctx context.Context, caller string, req any, reason string, st error) {
	c := status.Code(st)
	if c != codes.Unauthenticated && c != codes.PermissionDenied {
		return
	}
	r := audit.Record{Event: audit.EventRefused, Caller: caller, Result: codeName(c), Reason: reason}
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
