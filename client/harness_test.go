package client_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/client"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/plugins/builtin"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("example.org")
	serverID = spiffeid.RequireFromPath(td, "/credbroker")
	ordersID = spiffeid.RequireFromPath(td, "/orders/api")
	otherID  = spiffeid.RequireFromPath(td, "/orders/worker")
	adminID  = spiffeid.RequireFromPath(td, "/ops/admin")
)

// env is a real broker (in process, real mTLS) on the throwaway PostgreSQL
// and MariaDB, with two roles whose leases last 2s and at most 6s, renewed
// and rotated by WatchCredential with a 2s overlap and a 1s disconnect
// grace:
//
//	pg-orders    PostgreSQL, member of a group role that may read e.table
//	shop-orders  MariaDB, SELECT on <e.mydb>.orders
type env struct {
	t      *testing.T
	ca     *identity.DevCA
	cfg    *broker.Config
	addr   string
	stop   func()
	pg     *pgx.Conn
	my     *sql.DB
	prefix string // username prefix of both databases
	table  string
	mydb   string
	certs  string // client.pem, client-key.pem, bundle.pem
}

func randHex(t testing.TB, n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	suffix := randHex(t, 4)
	e := &env{t: t, prefix: "w" + suffix[:6], table: "orders_" + suffix, mydb: "cbw_" + suffix}
	reader := "reader_" + suffix

	pgCfg, err := pgx.ParseConfig(testenv.PostgresDSN(t))
	if err != nil {
		t.Fatal("parse the test PostgreSQL DSN") // the error may quote the password
	}
	e.pg, err = pgx.ConnectConfig(ctx, pgCfg)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	t.Cleanup(func() { e.pg.Close(context.Background()) })
	for _, q := range []string{
		"CREATE TABLE " + e.table + " (id int)",
		"INSERT INTO " + e.table + " VALUES (1), (2), (3)",
		"CREATE ROLE " + reader + " NOLOGIN",
		"GRANT SELECT ON " + e.table + " TO " + reader,
	} {
		if _, err := e.pg.Exec(ctx, q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}
	t.Cleanup(func() {
		for _, q := range []string{"DROP TABLE " + e.table, "DROP ROLE " + reader} {
			_, _ = e.pg.Exec(context.Background(), q)
		}
	})

	myCfg, err := mysql.ParseDSN(testenv.MySQLDSN(t))
	if err != nil {
		t.Fatal("parse the test MariaDB DSN")
	}
	e.my, err = sql.Open("mysql", myCfg.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.my.Close() })
	for _, q := range []string{
		"CREATE DATABASE " + e.mydb,
		"CREATE TABLE " + e.mydb + ".orders (id int)",
		"INSERT INTO " + e.mydb + ".orders VALUES (1), (2)",
	} {
		if _, err := e.my.ExecContext(ctx, q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}
	t.Cleanup(func() { _, _ = e.my.Exec("DROP DATABASE " + e.mydb) })
	myHost, myPort, err := net.SplitHostPort(myCfg.Addr)
	if err != nil {
		t.Fatal(err)
	}

	e.ca, err = identity.NewDevCA(td)
	if err != nil {
		t.Fatal(err)
	}
	e.certs = t.TempDir()
	if err := e.ca.WriteFiles(e.certs, map[string]spiffeid.ID{"client": ordersID}, identity.SVIDOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Setenv("CREDBROKER_TEST_ADMIN_PW", pgCfg.Password)
	t.Setenv("CREDBROKER_TEST_MYSQL_ADMIN_PW", myCfg.Passwd)
	yaml := fmt.Sprintf(`
listen: 127.0.0.1:0
trust_domain: example.org
svid: {cert_file: unused, key_file: unused, bundle_file: unused}
admins: [spiffe://example.org/ops/admin]
lease_store: {path: %[1]s}
revocation: {backoff_base: 100ms, backoff_max: 1s}
watch: {overlap: 2s, disconnect_grace: 1s}
databases:
  main:
    plugin: postgres
    host: %[2]s
    port: %[3]d
    database: %[4]s
    username: %[5]s
    password_env: CREDBROKER_TEST_ADMIN_PW
    sslmode: disable
    username_prefix: %[6]s
  shop:
    plugin: mysql
    host: %[7]s
    port: %[8]s
    database: %[9]s
    username: %[10]s
    password_env: CREDBROKER_TEST_MYSQL_ADMIN_PW
    sslmode: disable
    username_prefix: %[6]s
    user_host: 127.0.0.1
roles:
  pg-orders:
    database: main
    default_ttl: 2s
    max_ttl: 6s
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE %[11]s;
  shop-orders:
    database: shop
    default_ttl: 2s
    max_ttl: 6s
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT SELECT ON %[9]s.orders TO {{name}}
`, filepath.Join(t.TempDir(), "leases.db"), pgCfg.Host, pgCfg.Port, pgCfg.Database, pgCfg.User, e.prefix,
		myHost, myPort, e.mydb, myCfg.User, reader)
	e.cfg, err = broker.ParseConfig([]byte(yaml), builtin.Catalog())
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	e.addr = "127.0.0.1:0"
	e.start()
	t.Cleanup(func() {
		if e.stop != nil {
			e.stop()
		}
		// Nothing may outlive the test.
		if n := e.pgUsers(); n != 0 {
			t.Errorf("%d PostgreSQL users with prefix %s left", n, e.prefix)
		}
		if n := e.myUsers(); n != 0 {
			t.Errorf("%d MariaDB users with prefix %s left", n, e.prefix)
		}
	})
	return e
}

// start runs a broker on e.cfg at e.addr (the same address after a restart).
func (e *env) start() {
	e.t.Helper()
	lis, err := net.Listen("tcp", e.addr)
	if err != nil {
		e.t.Fatal(err)
	}
	e.addr = lis.Addr().String()
	src, err := e.ca.Source(serverID)
	if err != nil {
		e.t.Fatal(err)
	}
	app, err := broker.NewApp(context.Background(), e.cfg, broker.AppOptions{Source: src, CreateStore: true, Listener: lis, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		lis.Close()
		e.t.Fatalf("new app: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx) }()
	e.stop = func() {
		cancel()
		if err := <-done; err != nil {
			e.t.Errorf("broker: %v", err)
		}
		e.stop = nil
	}
}

// client connects as the workload, with its SVID from files.
func (e *env) client() *client.Client {
	e.t.Helper()
	c, err := client.New(context.Background(), e.addr,
		client.WithServerID(serverID.String()),
		client.WithFiles(filepath.Join(e.certs, "client.pem"), filepath.Join(e.certs, "client-key.pem"), filepath.Join(e.certs, "bundle.pem")))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

// admin is an AdminService client over mTLS as the admin.
func (e *env) admin() pb.AdminServiceClient {
	e.t.Helper()
	src, err := e.ca.Source(adminID)
	if err != nil {
		e.t.Fatal(err)
	}
	c, err := client.New(context.Background(), e.addr, client.WithServerID(serverID.String()), client.WithSource(src))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return pb.NewAdminServiceClient(c.Conn())
}

func (e *env) pgUsers() int {
	var n int
	if err := e.pg.QueryRow(context.Background(), "SELECT count(*) FROM pg_roles WHERE rolname LIKE $1", e.prefix+"\\_%").Scan(&n); err != nil {
		e.t.Fatalf("count users: %v", err)
	}
	return n
}

func (e *env) pgUserExists(name string) bool {
	var n int
	if err := e.pg.QueryRow(context.Background(), "SELECT count(*) FROM pg_roles WHERE rolname = $1", name).Scan(&n); err != nil {
		e.t.Fatalf("user exists: %v", err)
	}
	return n == 1
}

func (e *env) myUsers() int {
	var n int
	if err := e.my.QueryRow("SELECT count(*) FROM mysql.user WHERE LEFT(User, ?) = ?", len(e.prefix)+1, e.prefix+"_").Scan(&n); err != nil {
		e.t.Fatalf("count users: %v", err)
	}
	return n
}

func (e *env) myUserExists(name string) bool {
	var n int
	if err := e.my.QueryRow("SELECT count(*) FROM mysql.user WHERE User = ?", name).Scan(&n); err != nil {
		e.t.Fatalf("user exists: %v", err)
	}
	return n > 0
}

// waitFor polls cond until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
