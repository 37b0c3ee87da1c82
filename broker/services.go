package broker

import (
	"cmp"
	"context"
	"encoding/base64"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// UnaryAuth refuses any call whose peer has no verified SPIFFE ID before a
// handler runs, and puts the ID in the context for the handlers. It is also
// the one place where handler errors become gRPC statuses.
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

func caller(ctx context.Context) (spiffeid.ID, error) {
	id, ok := identity.CallerFromContext(ctx)
	if !ok {
		return spiffeid.ID{}, errUnauthorized
	}
	return id, nil
}

type credentialService struct {
	pb.UnimplementedCredentialServiceServer
	*Server
}

func (s credentialService) IssueCredential(ctx context.Context, req *pb.IssueCredentialRequest) (*pb.IssueCredentialResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	ttl, err := durationArg("ttl", req.GetTtl())
	if err != nil {
		return nil, err
	}
	l, cred, err := s.issue(ctx, id, req.GetRole(), ttl)
	if err != nil {
		return nil, err
	}
	s.log.Info("credential issued", "lease_id", l.ID, "role", l.Role, "spiffe_id", l.Owner, "username", l.Username, "expire_time", l.ExpireTime)
	return &pb.IssueCredentialResponse{Lease: toPB(l), Credential: cred}, nil
}

func (s credentialService) RenewLease(ctx context.Context, req *pb.RenewLeaseRequest) (*pb.RenewLeaseResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	inc, err := durationArg("increment", req.GetIncrement())
	if err != nil {
		return nil, err
	}
	l, err := s.ownLease(ctx, id, req.GetLeaseId())
	if err != nil {
		return nil, err
	}
	if inc, err = s.renewIncrement(l, inc); err != nil {
		return nil, err
	}
	l, err = s.leases.Renew(ctx, l.ID, inc)
	if err != nil {
		return nil, err
	}
	s.log.Info("lease renewed", "lease_id", l.ID, "spiffe_id", l.Owner, "expire_time", l.ExpireTime)
	return &pb.RenewLeaseResponse{Lease: toPB(l)}, nil
}

func (s credentialService) RevokeLease(ctx context.Context, req *pb.RevokeLeaseRequest) (*pb.RevokeLeaseResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	l, err := s.ownLease(ctx, id, req.GetLeaseId())
	if err != nil {
		return nil, err
	}
	l, err = s.leases.Revoke(ctx, l.ID)
	if err != nil {
		return nil, err
	}
	s.log.Info("lease revoked", "lease_id", l.ID, "spiffe_id", l.Owner, "username", l.Username, "by", id.String())
	return &pb.RevokeLeaseResponse{Lease: toPB(l)}, nil
}

func (s credentialService) ListLeases(ctx context.Context, _ *pb.ListLeasesRequest) (*pb.ListLeasesResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	owner := id.String()
	ls, err := s.leases.List(ctx, lease.Query{Owner: owner, States: revokable})
	if err != nil {
		return nil, err
	}
	// A workload sees its leases in issue order, as it always has.
	slices.SortFunc(ls, func(a, b lease.Lease) int {
		return cmp.Or(a.IssueTime.Compare(b.IssueTime), strings.Compare(a.ID, b.ID))
	})
	return &pb.ListLeasesResponse{Leases: toPBs(ls)}, nil
}

type adminService struct {
	pb.UnimplementedAdminServiceServer
	*Server
}

func (s adminService) admin(ctx context.Context) (spiffeid.ID, error) {
	id, err := caller(ctx)
	if err != nil {
		return id, err
	}
	if !s.admins.IsAdmin(id) {
		return id, errNotAdmin
	}
	return id, nil
}

func (s adminService) DeregisterWorkload(ctx context.Context, req *pb.DeregisterWorkloadRequest) (*pb.DeregisterWorkloadResponse, error) {
	admin, err := s.admin(ctx)
	if err != nil {
		return nil, err
	}
	target, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, invalidArg("spiffe_id is not a valid SPIFFE ID")
	}
	owner := target.String()
	if s.registry != nil {
		// Refuse new issuance first, so nothing slips in while revoking.
		if err := s.registry.deny(ctx, owner, s.now()); err != nil {
			return nil, err
		}
	}
	revoked, err := s.revokeAll(ctx, lease.Query{Owner: owner})
	s.log.Info("audit: workload deregistered", "admin", admin.String(), "spiffe_id", owner, "revoked", len(revoked))
	if err != nil {
		return nil, err
	}
	return &pb.DeregisterWorkloadResponse{Revoked: int32(len(revoked)), Leases: toPBs(revoked)}, nil
}

func (s adminService) RegisterWorkload(ctx context.Context, req *pb.RegisterWorkloadRequest) (*pb.RegisterWorkloadResponse, error) {
	admin, err := s.admin(ctx)
	if err != nil {
		return nil, err
	}
	target, err := spiffeid.FromString(req.GetSpiffeId())
	if err != nil {
		return nil, invalidArg("spiffe_id is not a valid SPIFFE ID")
	}
	was := false
	if s.registry != nil {
		if was, err = s.registry.allow(ctx, target.String()); err != nil {
			return nil, err
		}
	}
	s.log.Info("audit: workload registered", "admin", admin.String(), "spiffe_id", target.String(), "was_deregistered", was)
	return &pb.RegisterWorkloadResponse{WasDeregistered: was}, nil
}

func (s adminService) ListOrphans(ctx context.Context, _ *pb.ListOrphansRequest) (*pb.ListOrphansResponse, error) {
	if _, err := s.admin(ctx); err != nil {
		return nil, err
	}
	resp := &pb.ListOrphansResponse{}
	for _, r := range s.findOrphans(ctx) {
		d := &pb.DatabaseOrphans{Database: r.database, Usernames: r.usernames}
		if r.err != nil {
			d.Error = r.err.Error()
		}
		resp.Databases = append(resp.Databases, d)
	}
	return resp, nil
}

func (s adminService) RevokeLeases(ctx context.Context, req *pb.RevokeLeasesRequest) (*pb.RevokeLeasesResponse, error) {
	admin, err := s.admin(ctx)
	if err != nil {
		return nil, err
	}
	role, owner, prefix := req.GetRole(), req.GetSpiffeId(), req.GetLeaseIdPrefix()
	if role == "" && owner == "" && prefix == "" {
		return nil, invalidArg("at least one of role, spiffe_id or lease_id_prefix is required")
	}
	if owner != "" {
		id, err := spiffeid.FromString(owner)
		if err != nil {
			return nil, invalidArg("spiffe_id is not a valid SPIFFE ID")
		}
		owner = id.String()
	}
	if prefix != "" && (len(prefix) > 32 || strings.Trim(prefix, "0123456789abcdef") != "") {
		return nil, invalidArg("lease_id_prefix must be lowercase hex")
	}
	revoked, err := s.revokeAll(ctx, lease.Query{Role: role, Owner: owner, IDPrefix: prefix})
	s.log.Info("audit: bulk revoke", "admin", admin.String(), "role", role, "spiffe_id", owner, "lease_id_prefix", prefix, "revoked", len(revoked))
	if err != nil {
		return nil, err
	}
	return &pb.RevokeLeasesResponse{Revoked: int32(len(revoked))}, nil
}

const (
	defaultPageSize = 100
	maxPageSize     = 1000
)

func (s adminService) ListLeases(ctx context.Context, req *pb.AdminListLeasesRequest) (*pb.AdminListLeasesResponse, error) {
	if _, err := s.admin(ctx); err != nil {
		return nil, err
	}
	size := int(req.GetPageSize())
	switch {
	case size < 0:
		return nil, invalidArg("page_size must not be negative")
	case size == 0:
		size = defaultPageSize
	case size > maxPageSize:
		size = maxPageSize
	}
	after := ""
	if t := req.GetPageToken(); t != "" {
		b, err := base64.RawURLEncoding.DecodeString(t)
		if err != nil || !lease.ValidID(string(b)) {
			return nil, invalidArg("page_token is malformed")
		}
		after = string(b)
	}
	// Pages are in id order so a token stays valid while leases come and
	// go; one lease more than the page tells whether another follows.
	ls, err := s.leases.List(ctx, lease.Query{Role: req.GetRole(), Owner: req.GetSpiffeId(), After: after, Limit: size + 1})
	if err != nil {
		return nil, err
	}
	resp := &pb.AdminListLeasesResponse{}
	if len(ls) > size {
		ls = ls[:size]
		resp.NextPageToken = base64.RawURLEncoding.EncodeToString([]byte(ls[size-1].ID))
	}
	resp.Leases = toPBs(ls)
	return resp, nil
}

func (s adminService) ListRoles(ctx context.Context, _ *pb.ListRolesRequest) (*pb.ListRolesResponse, error) {
	if _, err := s.admin(ctx); err != nil {
		return nil, err
	}
	resp := &pb.ListRolesResponse{}
	for _, name := range sortedKeys(s.roles) {
		r := s.roles[name]
		pats := make([]string, len(r.Allowed))
		for i, p := range r.Allowed {
			pats[i] = p.String()
		}
		resp.Roles = append(resp.Roles, &pb.Role{
			Name:             name,
			Database:         r.Database.Name,
			DefaultTtl:       durationpb.New(r.DefaultTTL),
			MaxTtl:           durationpb.New(r.MaxTTL),
			AllowedSpiffeIds: pats,
		})
	}
	return resp, nil
}

func durationArg(name string, d *durationpb.Duration) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, invalidArg(name + " is not a valid duration")
	}
	v := d.AsDuration()
	if v <= 0 {
		return 0, invalidArg(name + " must be positive")
	}
	return v, nil
}

func isNotFound(err error) bool { return errors.Is(err, lease.ErrNotFound) }

func toPB(l lease.Lease) *pb.Lease {
	st := pb.Lease_STATE_UNSPECIFIED
	switch l.State {
	case lease.StateCreating:
		st = pb.Lease_CREATING
	case lease.StateActive:
		st = pb.Lease_ACTIVE
	case lease.StateRevoking:
		st = pb.Lease_REVOKING
	case lease.StateRevoked:
		st = pb.Lease_REVOKED
		if l.Expired {
			st = pb.Lease_EXPIRED
		}
	case lease.StateExpired:
		st = pb.Lease_EXPIRED
	}
	return &pb.Lease{
		Id:            l.ID,
		Role:          l.Role,
		SpiffeId:      l.Owner,
		Username:      l.Username,
		Database:      l.Database,
		IssueTime:     timestamppb.New(l.IssueTime),
		ExpireTime:    timestamppb.New(l.ExpireTime),
		MaxExpireTime: timestamppb.New(l.MaxExpireTime),
		State:         st,
		LastError:     l.LastError,
	}
}

func toPBs(ls []lease.Lease) []*pb.Lease {
	out := make([]*pb.Lease, len(ls))
	for i, l := range ls {
		out[i] = toPB(l)
	}
	return out
}
