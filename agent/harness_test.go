package agent_test

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/client"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/plugins/builtin"
)

var (
	serverID = brokertest.ServerID
	ordersID = brokertest.OrdersID
)

// env is a real broker (in process, real mTLS with a CA made here) on the
// throwaway PostgreSQL, with role pg-orders whose leases last 2s and at
// most 6s, rotated by WatchCredential with a 2s overlap (the old user is
// dropped 2s after each rotation) and a 1s disconnect grace. The tests ask
// for ttls of 3s or 6s: with 2s, a login on a loaded machine can arrive
// after the VALID UNTIL that a late renewal was about to extend.
type env struct {
	t      *testing.T
	ca     *identity.DevCA
	cfg    *broker.Config
	stop   func()  // the running broker's
	my     *sql.DB // with newMySQLEnv: the MariaDB admin connection
	addr   string
	pg     *pgx.Conn
	pgHost string
	pgPort uint16
	pgDB   string
	prefix string               // username prefix
	svid   brokertest.SVIDFiles // the workload's
	dir    string               // for the agent's files
}

func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, false)
}

// newMySQLEnv is newEnv with also role shop-orders on the throwaway
// MariaDB (SELECT on <db>.orders), leases of 3s and at most 6s.
func newMySQLEnv(t *testing.T) *env {
	t.Helper()
	return newEnvWith(t, true)
}

func newEnvWith(t *testing.T, withMySQL bool) *env {
	t.Helper()
	ctx := context.Background()
	suffix := brokertest.RandHex(t, 4)
	e := &env{t: t, prefix: "a" + suffix[:6], dir: t.TempDir()}
	table, reader := "orders_"+suffix, "reader_"+suffix

	var pgCfg *pgx.ConnConfig
	pgCfg, e.pg = brokertest.Postgres(t)
	e.pgHost, e.pgPort, e.pgDB = pgCfg.Host, pgCfg.Port, pgCfg.Database
	for _, q := range []string{
		"CREATE TABLE " + table + " (id int)",
		"CREATE ROLE " + reader + " NOLOGIN",
		"GRANT SELECT ON " + table + " TO " + reader,
	} {
		if _, err := e.pg.Exec(ctx, q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}

	var myDB, myRole string
	if withMySQL {
		myDB, myRole = e.mysqlSetup(suffix)
	}

	ca := brokertest.NewCA(t)
	e.svid = brokertest.WriteSVID(t, ca, t.TempDir(), "client", ordersID, identity.SVIDOptions{})
	t.Setenv("CREDBROKER_TEST_ADMIN_PW", pgCfg.Password)
	cfg, err := broker.ParseConfig([]byte(fmt.Sprintf(`
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
%[8]sroles:
  pg-orders:
    database: main
    default_ttl: 2s
    max_ttl: 6s
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE %[7]s;
%[9]s`, filepath.Join(t.TempDir(), "leases.db"), pgCfg.Host, pgCfg.Port, pgCfg.Database, pgCfg.User, e.prefix, reader, myDB, myRole)),
		builtin.Catalog())
	if err != nil {
		t.Fatalf("config: %v", err)
	}
	e.ca, e.cfg, e.addr = ca, cfg, "127.0.0.1:0"
	e.start()
	t.Cleanup(func() {
		if e.stop != nil {
			e.stop()
		}
		for _, q := range []string{"DROP TABLE " + table, "DROP ROLE " + reader} {
			_, _ = e.pg.Exec(context.Background(), q)
		}
	})
	// Registered after the broker's stop, so it runs first: nothing the
	// test left may outlive it (a -once lease is revoked by the test).
	t.Cleanup(func() {
		if n := e.users(); n != 0 {
			t.Errorf("%d PostgreSQL users with prefix %s left", n, e.prefix)
		}
		if n := e.myUsers(); withMySQL && n != 0 {
			t.Errorf("%d MariaDB users with prefix %s left", n, e.prefix)
		}
	})
	return e
}

// start runs a broker on e.cfg at e.addr (the same address after a
// restart; the lease store is kept).
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

// config is an agent config for this broker with SVID files, then extra.
func (e *env) config(extra string) string {
	return fmt.Sprintf(`broker:
  addr: %s
  server_id: %s
svid:
  cert_file: %s
  key_file: %s
  bundle_file: %s
`, e.addr, serverID, e.svid.Cert, e.svid.Key, e.svid.Bundle) + extra
}

func (e *env) writeConfig(extra string) string {
	p := filepath.Join(e.dir, "agent.yaml")
	if err := os.WriteFile(p, []byte(e.config(extra)), 0o600); err != nil {
		e.t.Fatal(err)
	}
	return p
}

func (e *env) client() *client.Client {
	e.t.Helper()
	c, err := client.New(context.Background(), e.addr, client.WithServerID(serverID.String()),
		client.WithFiles(e.svid.Cert, e.svid.Key, e.svid.Bundle))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { c.Close() })
	return c
}

func (e *env) users() int { return len(brokertest.PostgresUsers(e.t, e.pg, e.prefix)) }

func (e *env) userExists(name string) bool { return brokertest.PostgresUserExists(e.t, e.pg, name) }

// login connects with a DSN the agent rendered and runs a query.
func login(ctx context.Context, dsn string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(context.Background())
	return c.Ping(ctx)
}

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

// binaries builds credbroker, credbroker-agent and the test app pglogin
// once per run.
func binaries(t *testing.T) (credbroker, pglogin string) {
	t.Helper()
	buildOnce.Do(func() {
		binDir, buildErr = os.MkdirTemp("", "agent-test-bin")
		if buildErr != nil {
			return
		}
		for _, b := range [][2]string{{"credbroker", "../cmd/credbroker"}, {"credbroker-agent", "../cmd/credbroker-agent"}, {"pglogin", "./testdata/pglogin"}} {
			out, err := exec.Command("go", "build", "-o", filepath.Join(binDir, b[0]), b[1]).CombinedOutput()
			if err != nil {
				buildErr = fmt.Errorf("go build %s: %v\n%s", b[1], err, out)
				return
			}
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return filepath.Join(binDir, "credbroker"), filepath.Join(binDir, "pglogin")
}

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// mysqlSetup creates database cba_<suffix> with a table orders on the
// throwaway MariaDB, and returns the broker config's database shop and
// role shop-orders for it.
func (e *env) mysqlSetup(suffix string) (dbYAML, roleYAML string) {
	t := e.t
	my := brokertest.OpenMySQL(t, testenv.MySQLDSN(t))
	e.my = my.DB
	db := "cba_" + suffix
	for _, q := range []string{"CREATE DATABASE " + db, "CREATE TABLE " + db + ".orders (id int)", "INSERT INTO " + db + ".orders VALUES (1), (2)"} {
		if _, err := e.my.Exec(q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}
	t.Cleanup(func() { _, _ = e.my.Exec("DROP DATABASE " + db) })
	t.Setenv("CREDBROKER_TEST_MYSQL_ADMIN_PW", my.Config.Passwd)
	return fmt.Sprintf(`  shop:
    plugin: mysql
    host: %s
    port: %s
    database: %s
    username: %s
    password_env: CREDBROKER_TEST_MYSQL_ADMIN_PW
    sslmode: disable
    username_prefix: %s
    user_host: 127.0.0.1
`, my.Host, my.Port, db, my.Config.User, e.prefix), fmt.Sprintf(`  shop-orders:
    database: shop
    default_ttl: 3s
    max_ttl: 6s
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT SELECT ON %s.orders TO {{name}}
`, db)
}

func (e *env) myUsers() int {
	if e.my == nil {
		return 0
	}
	return len(brokertest.MySQLUsers(e.t, e.my, e.prefix))
}
