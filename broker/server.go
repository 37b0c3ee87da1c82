package broker

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"sort"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/failpoint"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Role is a resolved role template.
type Role struct {
	Name                 string
	Database             *Database
	DefaultTTL, MaxTTL   time.Duration
	Allowed              []identity.Pattern
	CreationStatements   []string
	RevocationStatements []string
}

// Leases is the part of lease.Manager the gRPC layer uses.
type Leases interface {
	Begin(ctx context.Context, l lease.Lease) error
	Activate(ctx context.Context, id string) (lease.Lease, error)
	Abort(ctx context.Context, id string, cause error) error
	Discard(ctx context.Context, id string) error
	Renew(ctx context.Context, id string, increment time.Duration) (lease.Lease, error)
	Revoke(ctx context.Context, id string) (lease.Lease, error)
	Get(ctx context.Context, id string) (lease.Lease, error)
	List(ctx context.Context, filter func(lease.Lease) bool) ([]lease.Lease, error)
}

// Server implements CredentialService and AdminService.
type Server struct {
	roles    map[string]*Role
	dbs      map[string]*Database
	leases   Leases
	policy   identity.Authorizer
	admins   identity.AdminSet
	registry *registry // nil: no deregistration support (unit tests)
	now      func() time.Time
	log      *slog.Logger

	// refresh re-reads the SPIRE registry (nil without a watch).
	refresh     func(context.Context) error
	refreshMu   sync.Mutex
	lastRefresh time.Time
}

// ServerConfig builds a Server.
type ServerConfig struct {
	Roles     map[string]*Role
	Databases map[string]*Database
	Leases    Leases
	registry  *registry
	Admins    identity.AdminSet
	Now       func() time.Time
	Logger    *slog.Logger
}

// NewServer builds the gRPC services; it starts nothing.
func NewServer(c ServerConfig) *Server {
	pats := make(map[string][]identity.Pattern, len(c.Roles))
	for name, r := range c.Roles {
		pats[name] = r.Allowed
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Server{
		roles:    c.Roles,
		dbs:      c.Databases,
		registry: c.registry,
		leases:   c.Leases,
		policy:   identity.NewRolePolicy(pats),
		admins:   c.Admins,
		now:      c.Now,
		log:      c.Logger,
	}
}

// Register adds both services to g.
func (s *Server) Register(g *grpc.Server) {
	pb.RegisterCredentialServiceServer(g, credentialService{Server: s})
	pb.RegisterAdminServiceServer(g, adminService{Server: s})
}

var requestRoleRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// issue runs the crash-safe issuance sequence: durable intent, user, durable
// ACTIVE, and only then the credential.
func (s *Server) issue(ctx context.Context, caller spiffeid.ID, roleName string, ttl time.Duration) (lease.Lease, *pb.Credential, error) {
	if roleName == "" {
		return lease.Lease{}, nil, invalidArg("role is required")
	}
	if !requestRoleRE.MatchString(roleName) {
		return lease.Lease{}, nil, invalidArg("role is not a valid role name")
	}
	if ttl < 0 {
		return lease.Lease{}, nil, invalidArg("ttl must be positive")
	}
	role, ok := s.roles[roleName]
	if !ok {
		return lease.Lease{}, nil, identity.ErrUnknownRole
	}
	if err := s.policy(caller, roleName); err != nil {
		return lease.Lease{}, nil, err
	}
	if err := s.checkRegistered(ctx, caller.String()); err != nil {
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
	}
	// The CREATING record is written while the plugin prepares the user;
	// the plugin waits for it before the user can exist (before COMMIT on
	// PostgreSQL), so the record's fsync and the database's work overlap.
	in := startIntent(func() error { return s.leases.Begin(ctx, l) })
	err = db.NewUser(ctx, plugins.NewUserRequest{
		Username:   username,
		Password:   password,
		Expiration: l.ExpireTime,
		Statements: role.CreationStatements,
		Intent:     in.wait,
	})
	if ierr := in.result(); ierr != nil {
		if err == nil {
			// The plugin broke its contract and created a user no record
			// backs: it must not outlive this call.
			s.dropUnrecorded(ctx, db, username)
		}
		return lease.Lease{}, nil, ierr
	}
	if errors.Is(err, plugins.ErrNotCreated) {
		// Nothing exists on the server: forget the intent, leave nothing.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if derr := s.leases.Discard(dctx, id); derr != nil {
			s.log.Warn("issuance cleanup queued for retry", "lease_id", id, "username", username, "error", derr)
		}
		return lease.Lease{}, nil, err
	}
	if err == nil {
		failpoint.Hit("issue-after-create-user")
		l, err = s.leases.Activate(ctx, id)
	}
	if err != nil {
		// The caller may have gone; cleaning up must not depend on it.
		actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if aerr := s.leases.Abort(actx, id, err); aerr != nil {
			s.log.Warn("issuance cleanup queued for retry", "lease_id", id, "username", username, "error", aerr)
		}
		return lease.Lease{}, nil, err
	}
	failpoint.Hit("issue-after-activate")
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

// intent is the CREATING record of one issuance, written in the background
// while the plugin works (plugins.NewUserRequest.Intent).
type intent struct {
	done chan struct{}
	err  error // valid once done is closed
}

func startIntent(begin func() error) *intent {
	in := &intent{done: make(chan struct{})}
	go func() {
		defer close(in.done)
		if in.err = begin(); in.err == nil {
			failpoint.Hit("issue-after-intent")
		}
	}()
	return in
}

// wait is NewUserRequest.Intent: nil once the record is durable.
func (in *intent) wait(ctx context.Context) error {
	select {
	case <-in.done:
		return in.err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// result waits for the write to end, whatever became of the request, so
// that the issuance knows whether a record exists to clean up.
func (in *intent) result() error {
	<-in.done
	return in.err
}

// dropUnrecorded removes a user created without its record (a plugin that
// did not wait for NewUserRequest.Intent).
func (s *Server) dropUnrecorded(ctx context.Context, db plugins.Database, username string) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	err := db.DeleteUser(dctx, plugins.DeleteUserRequest{Username: username})
	s.log.Error("plugin created a user before its lease record was durable; dropped it", "username", username, "dropped", err == nil)
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

// BulkRevokeConcurrency is how many revocations RevokeLeases,
// DeregisterWorkload and the registry sweep run at once. The plugins
// coalesce concurrent drops into one batch per database (plugins/postgres
// drops up to 128 roles in one transaction), so this sets the batch size
// rather than the load on the database: one batch runs at a time either
// way, and larger batches cost fewer round trips per user (docs/performance.md
// §7: 100,000 users revoked at 1,500-2,200 a second, against 210-500 with 8).
const BulkRevokeConcurrency = 32

// revokeAll revokes every lease matching keep, with bounded concurrency, and
// returns the final leases. A lease that is already gone counts as revoked
// by someone else and is not reported.
func (s *Server) revokeAll(ctx context.Context, keep func(lease.Lease) bool) ([]lease.Lease, error) {
	targets, err := s.leases.List(ctx, func(l lease.Lease) bool { return l.State != lease.StateCreating && keep(l) })
	if err != nil {
		return nil, err
	}
	type result struct {
		l   lease.Lease
		err error
	}
	results := make([]result, len(targets))
	var wg sync.WaitGroup
	sem := make(chan struct{}, BulkRevokeConcurrency)
	for i, t := range targets {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			l, err := s.leases.Revoke(ctx, t.ID)
			results[i] = result{l, err}
		})
	}
	wg.Wait()
	var out []lease.Lease
	var firstErr error
	for _, r := range results {
		switch {
		case r.err == nil:
			out = append(out, r.l)
		case isNotFound(r.err):
		default:
			if firstErr == nil {
				firstErr = r.err
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, firstErr
}
