package broker

import (
	"context"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// adminService is AdminService: operators (the configured admin SPIFFE
// IDs) deregister and register workloads, revoke and list leases, list
// orphans and roles. Every call is audited in the log.
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
	revoked, err := s.revoker.revokeAll(ctx, lease.Query{Owner: owner})
	s.log.Info("audit: workload deregistered", "admin", admin.String(), "spiffe_id", owner, "revoked", len(revoked))
	s.audit.revoked(ctx, admin.String(), audit.ByDeregistration, revoked)
	s.metrics.ended(audit.ByDeregistration, revoked)
	s.audit.write(ctx, audit.Record{Event: audit.EventDeregister, Caller: admin.String(), Result: resultOf(err),
		Reason: fmt.Sprintf("workload %s deregistered, %d leases revoked", owner, len(revoked))})
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
	s.audit.write(ctx, audit.Record{Event: audit.EventRegister, Caller: admin.String(),
		Reason: fmt.Sprintf("workload %s registered (was deregistered: %t)", target, was)})
	return &pb.RegisterWorkloadResponse{WasDeregistered: was}, nil
}

func (s adminService) ListOrphans(ctx context.Context, _ *pb.ListOrphansRequest) (*pb.ListOrphansResponse, error) {
	if _, err := s.admin(ctx); err != nil {
		return nil, err
	}
	resp := &pb.ListOrphansResponse{}
	for _, r := range s.orphans.findOrphans(ctx) {
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
	revoked, err := s.revoker.revokeAll(ctx, lease.Query{Role: role, Owner: owner, IDPrefix: prefix})
	s.log.Info("audit: bulk revoke", "admin", admin.String(), "role", role, "spiffe_id", owner, "lease_id_prefix", prefix, "revoked", len(revoked))
	s.audit.revoked(ctx, admin.String(), audit.ByAdmin, revoked)
	s.metrics.ended(audit.ByAdmin, revoked)
	s.audit.write(ctx, audit.Record{Event: audit.EventBulkRevoke, Caller: admin.String(), Role: role, By: audit.ByAdmin, Result: resultOf(err),
		Reason: fmt.Sprintf("%d leases revoked (role %q, spiffe_id %q, lease_id_prefix %q)", len(revoked), role, owner, prefix)})
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
	after, err := pageTokenArg(req.GetPageToken())
	if err != nil {
		return nil, err
	}
	// Pages are in id order so a token stays valid while leases come and
	// go (wire.go); one lease more than the page tells whether another
	// follows.
	ls, err := s.leases.List(ctx, lease.Query{Role: req.GetRole(), Owner: req.GetSpiffeId(), After: after, Limit: size + 1})
	if err != nil {
		return nil, err
	}
	resp := &pb.AdminListLeasesResponse{}
	if len(ls) > size {
		ls = ls[:size]
		resp.NextPageToken = pageToken(ls[size-1].ID)
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

func (s adminService) RotateAdminCredential(ctx context.Context, req *pb.RotateAdminCredentialRequest) (*pb.RotateAdminCredentialResponse, error) {
	admin, err := s.admin(ctx)
	if err != nil {
		return nil, err
	}
	name := req.GetDatabase()
	if name == "" {
		return nil, invalidArg("database is required")
	}
	r, ok := s.rotations[name]
	if !ok {
		return nil, errNoDatabase
	}
	t, err := r.rotate(ctx, admin.String())
	if err != nil {
		return nil, inDatabase(name, err)
	}
	return &pb.RotateAdminCredentialResponse{Database: name, RotateTime: timestamppb.New(t)}, nil
}
