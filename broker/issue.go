package broker

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// leaseIssuer is the part of lease.Manager issuance needs: Issue owns the
// crash-safe protocol around the plugin's NewUser; Revoke takes back a
// lease whose issue record could not be written.
type leaseIssuer interface {
	Issue(ctx context.Context, l lease.Lease, create lease.CreateFunc) (lease.Lease, error)
	Revoke(ctx context.Context, id string) (lease.Lease, error)
	// FindRequest finds the lease of an owner's request id (idempotent
	// issuance, requests.go).
	FindRequest(ctx context.Context, owner, requestID string) (lease.Lease, error)
}

// Issuer issues credentials: it asks admission whether the caller may have
// the role, then has the lease manager issue a lease for a new user that
// the role's database plugin creates, and builds the credential.
type Issuer struct {
	admission *Admission
	leases    leaseIssuer
	now       func() time.Time
	// audit records each issuance before its credential is returned; nil:
	// no audit log.
	audit *auditor
	// quotas enforce the roles' quotas; nil: none (unit tests).
	quotas *quotas
	// health learns from each issuance whether its database serves; nil:
	// not reported.
	health *dbHealth
	// requests makes issuance with a request id idempotent (requests.go).
	requests *requests
}

// IssuerDeps are what an Issuer works with. Leases is required; Audit,
// Quotas and Health may be nil (no audit log, no quotas, no health
// reports); Now nil is time.Now.
type IssuerDeps struct {
	Admission *Admission
	Leases    leaseIssuer
	Audit     *auditor
	// Quotas counts live leases for the roles' quotas; nil: none enforced.
	Quotas quotaLister
	// CapsInStore: the lease store checks the live-lease caps with each
	// CREATING record (lease.Config.Limits); Quotas then enforces only
	// the issuance rate.
	CapsInStore bool
	Health      *dbHealth
	Now         func() time.Time
}

// NewIssuer builds an Issuer from its dependencies, all given here.
func NewIssuer(d IssuerDeps) *Issuer {
	now := d.Now
	if now == nil {
		now = time.Now
	}
	s := &Issuer{admission: d.Admission, leases: d.Leases, audit: d.Audit, health: d.Health, now: now, requests: newRequests(now, replayWindow)}
	if d.Quotas != nil {
		s.quotas = newQuotas(d.Quotas, now, d.CapsInStore)
	}
	return s
}

// issue checks the request (role, policy, registration, ttl), has the lease
// manager issue a lease for a new user, and builds the credential.
func (s *Issuer) issue(ctx context.Context, caller spiffeid.ID, roleName string, ttl time.Duration) (lease.Lease, *pb.Credential, error) {
	return s.issueNew(ctx, caller, roleName, ttl, "")
}

// issueRequest is issue for IssueCredential: a non-empty requestID makes
// it idempotent (requests.go).
func (s *Issuer) issueRequest(ctx context.Context, caller spiffeid.ID, roleName string, ttl time.Duration, requestID string) (lease.Lease, *pb.Credential, error) {
	if requestID != "" {
		return s.issueOnce(ctx, caller, roleName, ttl, requestID)
	}
	return s.issueNew(ctx, caller, roleName, ttl, "")
}

// issueNew issues a new lease and user, with requestID recorded in it.
func (s *Issuer) issueNew(ctx context.Context, caller spiffeid.ID, roleName string, ttl time.Duration, requestID string) (lease.Lease, *pb.Credential, error) {
	if ttl < 0 {
		return lease.Lease{}, nil, invalidArg("ttl must be positive")
	}
	role, err := s.admission.Admit(ctx, caller, roleName)
	if err != nil {
		return lease.Lease{}, nil, err
	}
	if ttl == 0 {
		ttl = role.DefaultTTL
	}
	if ttl < time.Second {
		return lease.Lease{}, nil, invalidArg("ttl must be at least 1s")
	}
	ttl = min(ttl, role.MaxTTL)

	db := role.Database.DB
	username, err := db.GenerateUsername(roleName)
	if err != nil {
		return lease.Lease{}, nil, err
	}
	password, err := plugins.NewPassword(db)
	if err != nil {
		return lease.Lease{}, nil, err
	}
	id, err := lease.NewID()
	if err != nil {
		return lease.Lease{}, nil, err
	}
	// The reservation holds until the manager holds the lease (or it
	// failed): concurrent issuances see it.
	release, err := s.quotas.reserve(ctx, role, caller.String(), id)
	if err != nil {
		return lease.Lease{}, nil, err
	}
	defer release()
	now := s.now().UTC()
	l := lease.Lease{
		ID:                   id,
		Role:                 roleName,
		Owner:                caller.String(),
		Database:             role.Database.Name,
		Username:             username,
		IssueTime:            now,
		ExpireTime:           now.Add(ttl),
		MaxExpireTime:        now.Add(role.MaxTTL),
		State:                lease.StateCreating,
		RevocationStatements: role.RevocationStatements,
		RequestID:            requestID,
	}
	// lease.Manager.Issue runs the crash-safe protocol around the plugin's
	// NewUser: the plugin waits for the durable CREATING record (Intent)
	// before the user can exist, and the credential is built only once the
	// lease is durably ACTIVE.
	//
	// The issue record is written while the lease is made ACTIVE, not
	// after: its fsync overlaps the store's instead of adding to the
	// call's time. Both are durable before the credential is returned. If
	// activation then fails, the lease manager drops the user and a revoke
	// record by "issuance" follows the issue record.
	var recorded chan error // the issue record's outcome, once the user exists
	pending := l
	l, err = s.leases.Issue(ctx, l, func(ctx context.Context, intent func(context.Context) error) error {
		err := db.NewUser(ctx, plugins.NewUserRequest{
			Username:   username,
			Password:   password,
			Expiration: pending.ExpireTime,
			Statements: role.CreationStatements,
			Intent:     intent,
		})
		if errors.Is(err, plugins.ErrNotCreated) {
			return lease.NotCreated(err)
		}
		if err == nil && s.audit.enabled() {
			recorded = make(chan error, 1)
			go func() { recorded <- s.audit.issueRecorded(ctx, pending) }()
		}
		return err
	})
	s.health.issued(role.Database.Name, err)
	if err != nil {
		if recorded != nil && <-recorded == nil {
			s.audit.issueUndone(ctx, pending, err)
		}
		if qerr := limitQuotaError(roleName, err); qerr != nil {
			return lease.Lease{}, nil, qerr
		}
		return lease.Lease{}, nil, inDatabase(role.Database.Name, err)
	}
	if recorded != nil {
		if err := <-recorded; err != nil {
			// Fail closed: a credential the audit log does not hold is
			// never returned, and its user does not outlive the refusal.
			if _, rerr := s.leases.Revoke(context.WithoutCancel(ctx), l.ID); rerr != nil {
				// The lease stays REVOKING; the lease manager retries the
				// drop.
				return lease.Lease{}, nil, fmt.Errorf("%w; its lease is left to the retried revocation: %w", err, rerr)
			}
			return lease.Lease{}, nil, err
		}
	}
	d := role.Database
	return l, &pb.Credential{
		Username: username,
		Password: password,
		Database: d.Name,
		Host:     d.Host,
		Port:     uint32(d.Port),
		DbName:   d.DBName,
		Dsn:      d.dsn(username, password),
	}, nil
}
