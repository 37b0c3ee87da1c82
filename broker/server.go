package broker

import (
	"context"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Leases is the part of lease.Manager the handlers use.
type Leases interface {
	Renew(ctx context.Context, id string, increment time.Duration) (lease.Lease, error)
	Revoke(ctx context.Context, id string) (lease.Lease, error)
	Get(ctx context.Context, id string) (lease.Lease, error)
	List(ctx context.Context, q lease.Query) ([]lease.Lease, error)
}

// Server implements CredentialService (credential.go) and AdminService
// (admin.go) on the components NewApp built before it; its interceptors
// are in auth.go.
type Server struct {
	roles    map[string]*Role
	issuer   *Issuer
	leases   Leases
	revoker  bulkRevoker
	orphans  *Reconciler
	admins   identity.AdminSet
	registry *registry // nil: no deregistration support (unit tests)
	audit    *auditor  // nil: no audit log
	metrics  *metrics  // nil: metrics off
	// rotations rotate each database's admin password, by name.
	rotations map[string]*adminRotation
	watch     *watcher // nil: WatchCredential answers UNIMPLEMENTED
	now       func() time.Time
	log       *slog.Logger
}

// ServerConfig builds a Server.
type ServerConfig struct {
	Roles  map[string]*Role // ListRoles, and the default renew increment
	Issuer *Issuer          // IssueCredential
	Leases Leases
	// Reconciler finds the orphans ListOrphans reports.
	Reconciler *Reconciler
	// registry takes DeregisterWorkload and RegisterWorkload; nil: no
	// deregistration support (unit tests).
	registry *registry
	// revoker revokes what DeregisterWorkload and RevokeLeases select;
	// zero: one on Leases.
	revoker bulkRevoker
	// audit receives the records of the handlers and interceptors; nil: no
	// audit log.
	audit *auditor
	// metrics count the calls and lease events; nil: metrics off.
	metrics *metrics
	// rotations rotate each database's admin password (RotateAdminCredential).
	rotations map[string]*adminRotation
	// watch serves WatchCredential; nil: UNIMPLEMENTED.
	watch  *watcher
	Admins identity.AdminSet
	Now    func() time.Time
	Logger *slog.Logger
}

// NewServer builds the gRPC services; it starts nothing.
func NewServer(c ServerConfig) *Server {
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.revoker.leases == nil {
		c.revoker = bulkRevoker{leases: c.Leases}
	}
	return &Server{
		roles:     c.Roles,
		issuer:    c.Issuer,
		leases:    c.Leases,
		revoker:   c.revoker,
		orphans:   c.Reconciler,
		admins:    c.Admins,
		registry:  c.registry,
		audit:     c.audit,
		metrics:   c.metrics,
		rotations: c.rotations,
		watch:     c.watch,
		now:       c.Now,
		log:       c.Logger,
	}
}

// Register adds both services to g.
func (s *Server) Register(g *grpc.Server) {
	pb.RegisterCredentialServiceServer(g, credentialService{Server: s})
	pb.RegisterAdminServiceServer(g, adminService{Server: s})
}
