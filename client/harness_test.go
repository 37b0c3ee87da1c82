package client_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/client"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/plugins/builtin"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

var (
	serverID = brokertest.ServerID
	ordersID = brokertest.OrdersID
	otherID  = brokertest.OtherID
	adminID  = brokertest.AdminID
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
	svid   brokertest.SVIDFiles // the workload's
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx := context.Background()
	suffix := brokertest.RandHex(t, 4)
	e := &env{t: t, prefix: "w" + suffix[:6], table: "orders_" + suffix, mydb: "cbw_" + suffix}
	reader := "reader_" + suffix

	var pgCfg *pgx.ConnConfig
	pgCfg, e.pg = brokertest.Postgres(t)
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

	my := brokertest.OpenMySQL(t, testenv.MySQLDSN(t))
	e.my = my.DB
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

	e.ca = brokertest.NewCA(t)
	e.svid = brokertest.WriteSVID(t, e.ca, t.TempDir(), "client", ordersID, identity.SVIDOptions{})
	t.Setenv("CREDBROKER_TEST_ADMIN_PW", pgCfg.Password)
	t.Setenv("CREDBROKER_TEST_MYSQL_ADMIN_PW", my.Config.Passwd)
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
		my.Host, my.Port, e.mydb, my.Config.User, reader)
	var err error
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
	src, err := e.ca.Source(serverID)
	if err != nil {
		e.t.Fatal(err)
	}
	var stop func()
	e.addr, stop = brokertest.Serve(e.t, e.addr, func(lis net.Listener) (brokertest.Runner, error) {
		return broker.NewApp(context.Background(), e.cfg, broker.AppOptions{Source: src, CreateStore: true, Listener: lis, Logger: slog.New(slog.DiscardHandler)})
	})
	e.stop = func() { stop(); e.stop = nil }
}

// client connects as the workload, with its SVID from files.
func (e *env) client() *client.Client {
	e.t.Helper()
	c, err := client.New(context.Background(), e.addr,
		client.WithServerID(serverID.String()),
		client.WithFiles(e.svid.Cert, e.svid.Key, e.svid.Bundle))
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

func (e *env) pgUsers() int { return len(brokertest.PostgresUsers(e.t, e.pg, e.prefix)) }

func (e *env) pgUserExists(name string) bool { return brokertest.PostgresUserExists(e.t, e.pg, name) }

func (e *env) myUsers() int { return len(brokertest.MySQLUsers(e.t, e.my, e.prefix)) }

func (e *env) myUserExists(name string) bool {
	_, ok := brokertest.MySQLUserHost(e.t, e.my, name)
	return ok
}
