package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/plugins/builtin"
	"github.com/credbroker/credbroker/plugins/postgres"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

var (
	benchTD  = spiffeid.RequireTrustDomainFromString("example.org")
	serverID = spiffeid.RequireFromPath(benchTD, "/credbroker")
	clientID = spiffeid.RequireFromPath(benchTD, "/bench/workload")
	adminID  = spiffeid.RequireFromPath(benchTD, "/bench/admin")
)

// passwordEnv and storePasswordEnv carry the admin passwords of the data
// server and of the lease store's server to the broker's config, which only
// takes references to secrets.
const (
	passwordEnv      = "CREDBROKER_BENCH_PG_PASSWORD"
	storePasswordEnv = "CREDBROKER_BENCH_STORE_PASSWORD"
)

// brokerOptions shape one in-process broker.
type brokerOptions struct {
	Dir       string // for the lease store, unless StorePath is set
	StorePath string
	Prefix    string
	// Revocation settings (0: the broker's defaults).
	RevokeConcurrency int
	RevokeRate        float64
	MaxConns          int
	// ScramIterations of the verifiers (0: the default, 4096).
	ScramIterations int
	Now             func() time.Time
	// Observed turns on what an operator runs in production: metrics on a
	// loopback listener and a fail-closed audit log file in Dir.
	Observed bool
	// AuditSyncInterval is audit.sync_interval of an Observed broker (0:
	// every record synced before its answer).
	AuditSyncInterval time.Duration
	// Store, if set, puts the leases in a PostgreSQL schema (lease_store:
	// postgres:) instead of a bbolt file.
	Store *storeOptions
}

// storeOptions place a broker's leases in a schema of a PostgreSQL server.
type storeOptions struct {
	Server   *pgEnv // the store's server, reached as its admin
	Schema   string
	Replica  string // lease_store.postgres.replica
	MaxConns int    // 0: pgstore's default
}

// yaml is the lease_store section.
func (s *storeOptions) yaml() string {
	c := s.Server.cfg.ConnConfig
	os.Setenv(storePasswordEnv, c.Password)
	extra := ""
	if s.MaxConns > 0 {
		extra += fmt.Sprintf(", max_connections: %d", s.MaxConns)
	}
	if s.Replica != "" {
		extra += fmt.Sprintf(", replica: %q", s.Replica)
	}
	return fmt.Sprintf("{postgres: {host: %s, port: %d, database: %s, username: %s, password_env: %s, sslmode: disable, schema: %q%s}}",
		c.Host, c.Port, c.Database, c.User, storePasswordEnv, s.Schema, extra)
}

// runningBroker is a broker.App serving on loopback with a dev CA, as
// cmd/credbroker would run it, plus the CA to mint client SVIDs.
type runningBroker struct {
	app    *broker.App
	ca     *identity.DevCA
	addr   string
	cancel context.CancelFunc
	done   chan error
	conns  []*grpc.ClientConn

	stopOnce sync.Once
	stopErr  error
}

func (e *pgEnv) brokerConfig(o brokerOptions) (*broker.Config, error) {
	c := e.cfg.ConnConfig
	os.Setenv(passwordEnv, c.Password)
	store := o.StorePath
	if store == "" {
		store = o.Dir + "/leases.db"
	}
	leaseStore := fmt.Sprintf("{path: %q}", store)
	if o.Store != nil {
		leaseStore = o.Store.yaml()
	}
	var rev []string
	if o.RevokeConcurrency > 0 {
		rev = append(rev, fmt.Sprintf("concurrency: %d", o.RevokeConcurrency))
	}
	if o.RevokeRate > 0 {
		rev = append(rev, fmt.Sprintf("rate_per_second: %g", o.RevokeRate))
	}
	observed := ""
	if o.Observed {
		observed = fmt.Sprintf("metrics: {listen: 127.0.0.1:0}\naudit: {file: %q, fail_closed: true, sync_interval: %s}\n", o.Dir+"/audit.log", o.AuditSyncInterval)
	}
	var roles strings.Builder
	for _, t := range append(templates[:len(templates):len(templates)], struct {
		Name  string
		Stmts []string
	}{stormRole, templateStmts("group")}) {
		fmt.Fprintf(&roles, `
  %s:
    database: main
    default_ttl: 1h
    max_ttl: 24h
    allowed_spiffe_ids: ["spiffe://example.org/bench/*"]
    creation_statements:
`, t.Name)
		for _, s := range t.Stmts {
			fmt.Fprintf(&roles, "      - %q\n", s)
		}
	}
	yaml := fmt.Sprintf(`
listen: 127.0.0.1:0
trust_domain: example.org
svid: {cert_file: unused, key_file: unused, bundle_file: unused}
admins: [%s]
lease_store: %s
revocation: {%s}
%sdatabases:
  main:
    plugin: postgres
    host: %s
    port: %d
    database: %s
    username: %s
    password_env: %s
    sslmode: disable
    max_connections: %d
    username_prefix: %s
    scram_iterations: %d
roles:%s`, adminID, leaseStore, strings.Join(rev, ", "), observed, c.Host, c.Port, c.Database, c.User, passwordEnv,
		max(o.MaxConns, 8), o.Prefix, cmp.Or(o.ScramIterations, postgres.DefaultScramIterations), roles.String())
	return broker.ParseConfig([]byte(yaml), builtin.Catalog())
}

// startBroker builds and runs a broker; startup is what restore-1M measures,
// so it is split: newBroker builds (restores leases), serve runs.
func (e *pgEnv) newBroker(ctx context.Context, o brokerOptions) (*runningBroker, error) {
	ca, err := identity.NewDevCA(benchTD)
	if err != nil {
		return nil, err
	}
	return e.newBrokerCA(ctx, o, ca)
}

// newBrokerCA is newBroker with a given CA.
func (e *pgEnv) newBrokerCA(ctx context.Context, o brokerOptions, ca *identity.DevCA) (*runningBroker, error) {
	src, err := ca.Source(serverID)
	if err != nil {
		return nil, err
	}
	b, err := e.newBrokerSource(ctx, o, src)
	if err != nil {
		return nil, err
	}
	b.ca = ca
	return b, nil
}

// newBrokerSource is newBroker with the server's SVID from src (no CA to
// mint client SVIDs with).
func (e *pgEnv) newBrokerSource(ctx context.Context, o brokerOptions, src identity.Source) (*runningBroker, error) {
	cfg, err := e.brokerConfig(o)
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	// A production-like logger: JSON at info, formatted and thrown away.
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	app, err := broker.NewApp(ctx, cfg, broker.AppOptions{Logger: log, Listener: lis, Source: src, Now: o.Now, CreateStore: true})
	if err != nil {
		lis.Close()
		return nil, fmt.Errorf("broker: %w", err)
	}
	return &runningBroker{app: app, addr: lis.Addr().String()}, nil
}

func (b *runningBroker) serve(ctx context.Context) {
	ctx, b.cancel = context.WithCancel(ctx)
	b.done = make(chan error, 1)
	go func() { b.done <- b.app.Run(ctx) }()
}

func (e *pgEnv) startBroker(ctx context.Context, o brokerOptions) (*runningBroker, error) {
	b, err := e.newBroker(ctx, o)
	if err != nil {
		return nil, err
	}
	b.serve(ctx)
	return b, nil
}

// stop ends the broker and waits for it; later calls return the same.
func (b *runningBroker) stop() error {
	b.stopOnce.Do(func() {
		for _, c := range b.conns {
			c.Close()
		}
		b.cancel()
		b.stopErr = <-b.done
	})
	return b.stopErr
}

// dial opens one mTLS connection as id.
func (b *runningBroker) dial(id spiffeid.ID) (*grpc.ClientConn, error) {
	src, err := b.ca.Source(id)
	if err != nil {
		return nil, err
	}
	cc, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, serverID))))
	if err != nil {
		return nil, err
	}
	b.conns = append(b.conns, cc)
	return cc, nil
}

// clients returns n credential clients, each on its own connection (n
// workloads), with the TLS handshake done before the clock starts.
func (b *runningBroker) clients(ctx context.Context, n int) ([]pb.CredentialServiceClient, error) {
	return b.clientsAs(ctx, clientID, n)
}

// clientsAs is clients with the SVID of id.
func (b *runningBroker) clientsAs(ctx context.Context, id spiffeid.ID, n int) ([]pb.CredentialServiceClient, error) {
	out := make([]pb.CredentialServiceClient, n)
	for i := range out {
		cc, err := b.dial(id)
		if err != nil {
			return nil, err
		}
		if _, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			return nil, fmt.Errorf("broker health: %w", err)
		}
		out[i] = pb.NewCredentialServiceClient(cc)
	}
	return out, nil
}

func (b *runningBroker) admin() (pb.AdminServiceClient, error) {
	cc, err := b.dial(adminID)
	if err != nil {
		return nil, err
	}
	return pb.NewAdminServiceClient(cc), nil
}

func pbCreds(cc *grpc.ClientConn) pb.CredentialServiceClient {
	return pb.NewCredentialServiceClient(cc)
}

func issueReq(role string, ttl time.Duration) *pb.IssueCredentialRequest {
	r := &pb.IssueCredentialRequest{Role: role}
	if ttl > 0 {
		r.Ttl = durationpb.New(ttl)
	}
	return r
}
