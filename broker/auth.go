package broker

import (
	"context"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/identity"
)

// UnaryAuth refuses any call whose peer has no verified SPIFFE ID before a
// handler runs, and puts the ID in the context for the handlers. It is also
// where handler errors become gRPC statuses (toStatus) and are logged, once.
func (s *Server) UnaryAuth(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id, err := identity.CallerID(ctx)
	if err != nil {
		return nil, toStatus(errUnauthorized)
	}
	resp, err := handler(identity.WithCaller(ctx, id), req)
	if err != nil {
		st := toStatus(err)
		s.log.Info("call failed", "method", info.FullMethod, "spiffe_id", id.String(), "error", err.Error())
		return nil, st
	}
	return resp, nil
}

// StreamAuth is UnaryAuth for streams (reflection, health watch).
func (s *Server) StreamAuth(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if _, err := identity.CallerID(ss.Context()); err != nil {
		return toStatus(errUnauthorized)
	}
	return handler(srv, ss)
}

// caller is the verified SPIFFE ID UnaryAuth put in ctx.
func caller(ctx context.Context) (spiffeid.ID, error) {
	id, ok := identity.CallerFromContext(ctx)
	if !ok {
		return spiffeid.ID{}, errUnauthorized
	}
	return id, nil
}
