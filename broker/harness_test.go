package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/plugins/builtin"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

var (
	td       = brokertest.TrustDomain
	serverID = brokertest.ServerID
	ordersID = brokertest.OrdersID
	evilID   = spiffeid.RequireFromPath(td, "/orders-evil/x")
	otherID  = brokertest.OtherID
	adminID  = brokertest.AdminID
)

// env is one broker, in process, on a real PostgreSQL with real mTLS.
type env struct {
	t      *testing.T
	ca     *identity.DevCA
	app    *broker.App
	addr   string
	cfg    *broker.Config
	opts   broker.AppOptions
	stop   func()                 // stops app and waits for its Run
	log    *brokertest.SyncBuffer // the broker's, so tests can prove no secret is in it
	admin  *pgx.Conn              // superuser connection for checks
	pgHost string
	pgPort string
	prefix string
	reader string // group role
	table  string // readable through the group role
	secret string // readable by nobody
}

// newEnv starts a broker whose roles are:
//
//	reader      group-role template, allowed spiffe://example.org/orders/*
//	grantor     per-user GRANT template, same pattern
//	shortlived  like reader with max_ttl 3s
//	down        a database on a closed port
func newEnv(t *testing.T, opts ...func(*broker.AppOptions)) *env {
	t.Helper()
	return newEnvWith(t, envExtra{}, opts...)
}

// envExtra adds databases and roles to the broker newEnvWith starts: YAML
// entries indented as they would be under databases: and roles:. top is
// added at the top level of the config (e.g. a registry: section).
// leaseStore, if set, replaces the lease_store: line (a bbolt file in a
// temporary directory).
type envExtra struct{ databases, roles, top, leaseStore string }

// newEnvWith is newEnv with more databases and roles.
func newEnvWith(t *testing.T, extra envExtra, opts ...func(*broker.AppOptions)) *env {
	t.Helper()
	ctx := context.Background()
	cfgPG, admin := brokertest.Postgres(t)

	suffix := brokertest.RandHex(t, 4)
	e := &env{
		t:      t,
		log:    &brokertest.SyncBuffer{},
		admin:  admin,
		pgHost: cfgPG.Host,
		pgPort: fmt.Sprint(cfgPG.Port),
		prefix: "e" + suffix[:6],
		reader: "reader_" + suffix,
		table:  "orders_" + suffix,
		secret: "payments_" + suffix,
	}
	for _, q := range []string{
		fmt.Sprintf("CREATE TABLE %s (id int)", e.table),
		fmt.Sprintf("INSERT INTO %s VALUES (1), (2)", e.table),
		fmt.Sprintf("CREATE TABLE %s (id int)", e.secret),
		fmt.Sprintf("CREATE ROLE %s NOLOGIN", e.reader),
		fmt.Sprintf("GRANT SELECT ON %s TO %s", e.table, e.reader),
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}
	t.Cleanup(func() {
		// Every user of this env must be gone by now; drop objects after.
		for _, q := range []string{"DROP TABLE " + e.table, "DROP TABLE " + e.secret, "DROP ROLE " + e.reader} {
			_, _ = admin.Exec(context.Background(), q)
		}
	})

	e.ca = brokertest.NewCA(t)
	t.Setenv("CREDBROKER_TEST_ADMIN_PW", cfgPG.Password)
	closed := brokertest.ClosedPort(t)
	store := extra.leaseStore
	if store == "" {
		store = fmt.Sprintf("lease_store: {path: %s/leases.db}", t.TempDir())
	}
	yaml := fmt.Sprintf(`
listen: 127.0.0.1:0
trust_domain: example.org
%[12]s
svid: {cert_file: unused, key_file: unused, bundle_file: unused}
admins: [spiffe://example.org/ops/admin]
%[1]s
revocation: {backoff_base: 100ms, backoff_max: 1s}
databases:
  main:
    plugin: postgres
    host: %[2]s
    port: %[3]s
    database: %[4]s
    username: %[5]s
    password_env: CREDBROKER_TEST_ADMIN_PW
    sslmode: disable
    username_prefix: %[6]s
  down:
    plugin: postgres
    host: 127.0.0.1
    port: %[7]d
    database: postgres
    username: postgres
    password_env: CREDBROKER_TEST_ADMIN_PW
    sslmode: disable
    connect_timeout: 2s
    username_prefix: %[6]s
%[10]s
roles:
  reader:
    database: main
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE %[8]s;
  grantor:
    database: main
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}};
      - GRANT SELECT ON %[9]s TO {{name}};
    revocation_statements:
      - REVOKE ALL ON %[9]s FROM {{name}};
  shortlived:
    database: main
    default_ttl: 1s
    max_ttl: 3s
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} IN ROLE %[8]s;
  down:
    database: down
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}};
%[11]s
`, store, e.pgHost, e.pgPort, cfgPG.Database, cfgPG.User, e.prefix, closed, e.reader, e.table, extra.databases, extra.roles, extra.top)
	cfg, err := broker.ParseConfig([]byte(yaml), builtin.Catalog())
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	src, err := e.ca.Source(serverID)
	if err != nil {
		t.Fatal(err)
	}
	e.cfg = cfg
	e.addr = "127.0.0.1:0"
	logger := slog.New(slog.NewJSONHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	e.opts = broker.AppOptions{Logger: logger, Source: src, CreateStore: true}
	for _, o := range opts {
		o(&e.opts)
	}
	e.start()
	t.Cleanup(func() {
		if e.stop != nil {
			e.stop()
		}
		// Nothing this broker created may outlive the test.
		if n := e.countUsers(); n != 0 {
			t.Errorf("%d users with prefix %s left after the test", n, e.prefix)
			e.dropAllUsers()
		}
	})
	return e
}

// start builds and runs an App on e's config, listening on e.addr.
func (e *env) start() {
	e.t.Helper()
	e.addr, e.stop = brokertest.Serve(e.t, e.addr, func(lis net.Listener) (brokertest.Runner, error) {
		opts := e.opts
		opts.Listener = lis
		app, err := broker.NewApp(context.Background(), e.cfg, opts)
		e.app = app
		return app, err
	})
}

// restart stops the broker and starts a new one on the same config, store
// and address, as its supervisor would. Clients reconnect by themselves.
func (e *env) restart() {
	e.t.Helper()
	e.stop()
	e.stop = nil
	e.start()
}

func statusCode(err error) codes.Code { return status.Code(err) }

// conn dials the broker as id over mTLS.
func (e *env) conn(id spiffeid.ID) *grpc.ClientConn {
	e.t.Helper()
	src, err := e.ca.Source(id)
	if err != nil {
		e.t.Fatal(err)
	}
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, serverID))))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return cc
}

func (e *env) creds(id spiffeid.ID) pb.CredentialServiceClient {
	return pb.NewCredentialServiceClient(e.conn(id))
}

func (e *env) adminClient(id spiffeid.ID) pb.AdminServiceClient {
	return pb.NewAdminServiceClient(e.conn(id))
}

func (e *env) countUsers() int { return len(brokertest.PostgresUsers(e.t, e.admin, e.prefix)) }

func (e *env) userExists(name string) bool { return brokertest.PostgresUserExists(e.t, e.admin, name) }

func (e *env) validUntil(name string) time.Time {
	var ts time.Time
	if err := e.admin.QueryRow(context.Background(), "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", name).Scan(&ts); err != nil {
		e.t.Fatalf("valid until: %v", err)
	}
	return ts
}

func (e *env) dropAllUsers() {
	rows, err := e.admin.Query(context.Background(), "SELECT rolname FROM pg_roles WHERE rolname LIKE $1", e.prefix+"\\_%")
	if err != nil {
		return
	}
	names, _ := pgx.CollectRows(rows, pgx.RowTo[string])
	for _, n := range names {
		_, _ = e.admin.Exec(context.Background(), "DROP OWNED BY "+pgx.Identifier{n}.Sanitize())
		_, _ = e.admin.Exec(context.Background(), "DROP ROLE "+pgx.Identifier{n}.Sanitize())
	}
}

// login connects with a credential's DSN (the real password check: the
// throwaway cluster uses scram-sha-256 on host connections).
func login(ctx context.Context, dsn string) (*pgx.Conn, error) {
	return pgx.Connect(ctx, dsn)
}

// assertNoSecret fails if s appears in the broker's log.
func (e *env) assertNoSecret(secret string) {
	e.t.Helper()
	if secret != "" && strings.Contains(e.log.String(), secret) {
		e.t.Fatal("a password appears in the broker's log")
	}
}
