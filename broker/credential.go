package broker

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// credentialService is CredentialService: a workload issues, renews, revokes
// and lists its own credentials' leases.
type credentialService struct {
	pb.UnimplementedCredentialServiceServer
	*Server
}

func (s credentialService) IssueCredential(ctx context.Context, req *pb.IssueCredentialRequest) (_ *pb.IssueCredentialResponse, err error) {
	defer func() { s.metrics.issue(s.roles, req.GetRole(), err) }()
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	ttl, err := durationArg("ttl", req.GetTtl())
	if err != nil {
		return nil, err
	}
	l, cred, err := s.issuer.issueRequest(ctx, id, req.GetRole(), ttl, req.GetRequestId())
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
	before := l
	l, err = s.leases.Renew(ctx, l.ID, inc)
	s.metrics.renew(before, err)
	if err != nil {
		return nil, err
	}
	s.log.Info("lease renewed", "lease_id", l.ID, "spiffe_id", l.Owner, "expire_time", l.ExpireTime)
	r := leaseRecord(audit.EventRenew, l)
	r.Caller, r.Reason = id.String(), "expires "+l.ExpireTime.UTC().Format(time.RFC3339)
	s.audit.write(ctx, r)
	return &pb.RenewLeaseResponse{Lease: toPB(l)}, nil
}

func (s credentialService) RevokeLease(ctx context.Context, req *pb.RevokeLeaseRequest) (*pb.RevokeLeaseResponse, error) {
	id, err := caller(ctx)
	if err != nil {
		return nil, err
	}
	// The owner revokes its lease; an admin may revoke anyone's (the wire
	// contract), recorded as by an admin.
	by := audit.ByOwner
	l, err := s.ownLease(ctx, id, req.GetLeaseId())
	if errors.Is(err, lease.ErrNotFound) && s.admins.IsAdmin(id) {
		if l, err = s.leases.Get(ctx, req.GetLeaseId()); err == nil && l.State == lease.StateCreating {
			err = lease.ErrNotFound
		}
		by = audit.ByAdmin
	}
	if err != nil {
		return nil, err
	}
	ended, err := s.leases.Revoke(ctx, l.ID)
	if err != nil {
		// The lease stays REVOKING and its drop is retried: recorded as
		// asked for, with the error's code.
		r := leaseRecord(audit.EventRevoke, l)
		r.Caller, r.By, r.Result = id.String(), by, resultOf(err)
		s.audit.write(ctx, r)
		return nil, err
	}
	l = ended
	s.audit.revoked(ctx, id.String(), by, []lease.Lease{l})
	s.metrics.ended(by, []lease.Lease{l})
	s.log.Info("lease revoked", "lease_id", l.ID, "spiffe_id", l.Owner, "username", l.Username, "by", id.String())
	return &pb.RevokeLeaseResponse{Lease: toPB(l)}, nil
}

// WatchCredential issues a credential and keeps it fresh while the stream
// lives (watch.go; docs/watch.md).
func (s credentialService) WatchCredential(req *pb.WatchCredentialRequest, stream pb.CredentialService_WatchCredentialServer) error {
	id, err := caller(stream.Context())
	if err != nil {
		return err
	}
	ttl, err := durationArg("ttl", req.GetTtl())
	if err != nil {
		return err
	}
	if s.watch == nil {
		return errNoWatch
	}
	return s.watch.serve(stream, id, req.GetRole(), ttl)
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

// ownLease returns the caller's lease; someone else's is reported as absent
// so its existence is not revealed.
func (s *Server) ownLease(ctx context.Context, caller spiffeid.ID, id string) (lease.Lease, error) {
	if !lease.ValidID(id) {
		return lease.Lease{}, invalidArg("lease_id is malformed")
	}
	l, err := s.leases.Get(ctx, id)
	if err != nil {
		return lease.Lease{}, err
	}
	if l.Owner != caller.String() || l.State == lease.StateCreating {
		return lease.Lease{}, lease.ErrNotFound
	}
	return l, nil
}

func (s *Server) renewIncrement(l lease.Lease, inc time.Duration) (time.Duration, error) {
	if inc < 0 {
		return 0, invalidArg("increment must be positive")
	}
	if inc > 0 {
		return inc, nil
	}
	if r, ok := s.roles[l.Role]; ok {
		return r.DefaultTTL, nil
	}
	// The role was removed since issue: renew by the lease's original ttl.
	return l.ExpireTime.Sub(l.IssueTime), nil
}
