package broker_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	driver "github.com/go-sql-driver/mysql"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/testenv"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// mariaEnv is the MariaDB side of a broker started by newMariaEnv: a
// database on the throwaway server with a readable and a forbidden table.
type mariaEnv struct {
	*env
	t      *testing.T
	admin  *sql.DB
	db     string // database (schema)
	prefix string // username_prefix of the mysql databases
	host   string
	port   string
}

// newMariaEnv starts one broker with the PostgreSQL databases and roles of
// newEnv plus:
//
//	shop           mysql database on the throwaway MariaDB, user_host 127.0.0.1
//	shopdown       mysql database on a closed port
//	shop-reader    CREATE USER + GRANT SELECT ON orders (per-user grant)
//	shop-group     the README's template: a group role, made the default
//	shop-short     the same with max_ttl 3s
//	shop-broken    a template whose second GRANT fails
//	shop-down      on shopdown
func newMariaEnv(t *testing.T) *mariaEnv {
	t.Helper()
	ctx := context.Background()
	my := brokertest.OpenMySQL(t, testenv.MySQLDSN(t))
	cc, admin, host, port := my.Config, my.DB, my.Host, my.Port
	suffix := brokertest.RandHex(t, 4)
	m := &mariaEnv{t: t, admin: admin, db: "cbe_" + suffix, prefix: "m" + suffix[:6], host: host, port: port}
	for _, q := range []string{
		"CREATE DATABASE " + m.db,
		"CREATE TABLE " + m.db + ".orders (id int)",
		"INSERT INTO " + m.db + ".orders VALUES (1), (2)",
		"CREATE TABLE " + m.db + ".payments (id int)",
		// The group role of the README's template.
		"CREATE ROLE " + m.db + "_reader",
		"GRANT SELECT ON " + m.db + ".orders TO " + m.db + "_reader",
	} {
		if _, err := admin.ExecContext(ctx, q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}
	// Registered before the broker starts, so it runs after the broker has
	// stopped: nothing the broker made on MariaDB may outlive the test.
	t.Cleanup(func() {
		if names := m.users(); len(names) != 0 {
			t.Errorf("MariaDB users with prefix %s left after the test: %v", m.prefix, names)
			for _, n := range names {
				_, _ = admin.Exec("DROP USER IF EXISTS '" + n + "'@'127.0.0.1'")
			}
		}
		_, _ = admin.Exec("DROP DATABASE " + m.db)
		_, _ = admin.Exec("DROP ROLE " + m.db + "_reader")
	})
	t.Setenv("CREDBROKER_TEST_MYSQL_ADMIN_PW", cc.Passwd)

	databases := fmt.Sprintf(`
  shop:
    plugin: mysql
    host: %[1]s
    port: %[2]s
    database: %[3]s
    username: %[4]s
    password_env: CREDBROKER_TEST_MYSQL_ADMIN_PW
    sslmode: disable
    username_prefix: %[5]s
    user_host: 127.0.0.1
  shopdown:
    plugin: mysql
    host: 127.0.0.1
    port: %[6]d
    database: shop
    username: root
    password_env: CREDBROKER_TEST_MYSQL_ADMIN_PW
    connect_timeout: 2s
    username_prefix: %[5]s
`, host, port, m.db, cc.User, m.prefix, brokertest.ClosedPort(t))
	roles := fmt.Sprintf(`
  shop-reader:
    database: shop
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT SELECT ON %[1]s.orders TO {{name}}
    revocation_statements:
      - REVOKE SELECT ON %[1]s.orders FROM {{name}}
  shop-group:
    database: shop
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT %[1]s_reader TO {{name}}
      - SET DEFAULT ROLE %[1]s_reader FOR {{name}}
  shop-short:
    database: shop
    default_ttl: 1s
    max_ttl: 3s
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT SELECT ON %[1]s.orders TO {{name}}
  shop-broken:
    database: shop
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT SELECT ON %[1]s.orders TO {{name}}
      - GRANT SELECT ON %[1]s.no_such_table TO {{name}}
  shop-down:
    database: shopdown
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
`, m.db)
	m.env = newEnvWith(t, envExtra{databases: databases, roles: roles})
	return m
}

// users lists the MariaDB accounts with the env's prefix.
func (m *mariaEnv) users() []string { return brokertest.MySQLUsers(m.t, m.admin, m.prefix) }

func (m *mariaEnv) mariaUserHost(name string) (string, bool) {
	return brokertest.MySQLUserHost(m.t, m.admin, name)
}

func (m *mariaEnv) mariaUserExists(name string) bool {
	_, ok := m.mariaUserHost(name)
	return ok
}

// mariaLogin opens one connection with a credential's DSN, as a workload
// would with go-sql-driver/mysql.
func mariaLogin(ctx context.Context, dsn string) (*sql.DB, *sql.Conn, error) {
	cfg, err := driver.ParseDSN(dsn)
	if err != nil {
		return nil, nil, err
	}
	// The sessions tests kill would otherwise print "unexpected EOF".
	cfg.Logger = &driver.NopLogger{}
	connector, err := driver.NewConnector(cfg)
	if err != nil {
		return nil, nil, err
	}
	db := sql.OpenDB(connector)
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, nil, err
	}
	return db, conn, nil
}

// TestPostgresAndMariaDBExpire: one broker issues a PostgreSQL and a
// MariaDB credential, both work, and the expiry loop removes both users
// and their open sessions. MariaDB has no VALID UNTIL, so this loop is the
// only thing that ends the MariaDB user.
func TestPostgresAndMariaDBExpire(t *testing.T) {
	m := newMariaEnv(t)
	ctx := context.Background()
	client := m.creds(ordersID)

	pgResp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "shortlived", Ttl: durationpb.New(2 * time.Second)})
	if err != nil {
		t.Fatalf("issue PostgreSQL credential: %v", err)
	}
	myResp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "shop-short", Ttl: durationpb.New(2 * time.Second)})
	if err != nil {
		t.Fatalf("issue MariaDB credential: %v", err)
	}
	pgUser, myUser := pgResp.GetCredential().GetUsername(), myResp.GetCredential().GetUsername()
	t.Logf("PostgreSQL user %s, MariaDB user %s", pgUser, myUser)
	if c := myResp.GetCredential(); c.GetDatabase() != "shop" || c.GetDbName() != m.db || c.GetHost() != m.host || fmt.Sprint(c.GetPort()) != m.port {
		t.Fatalf("MariaDB credential points elsewhere: %v", c)
	}
	if !strings.HasPrefix(myUser, m.prefix+"_shop_short_") {
		t.Fatalf("MariaDB username %q lacks the configured prefix and role", myUser)
	}
	if host, ok := m.mariaUserHost(myUser); !ok || host != "127.0.0.1" {
		t.Fatalf("MariaDB account %s@%q (exists=%v), want host 127.0.0.1 from user_host", myUser, host, ok)
	}

	pgConn, err := login(ctx, pgResp.GetCredential().GetDsn())
	if err != nil {
		t.Fatalf("PostgreSQL login: %v", err)
	}
	defer pgConn.Close(ctx)
	var n int
	if err := pgConn.QueryRow(ctx, "SELECT count(*) FROM "+m.table).Scan(&n); err != nil || n != 2 {
		t.Fatalf("PostgreSQL allowed query: n=%d err=%v", n, err)
	}

	myPool, myConn, err := mariaLogin(ctx, myResp.GetCredential().GetDsn())
	if err != nil {
		t.Fatalf("MariaDB login with the issued DSN: %v", err)
	}
	defer myPool.Close()
	defer myConn.Close()
	if err := myConn.QueryRowContext(ctx, "SELECT COUNT(*) FROM orders").Scan(&n); err != nil || n != 2 {
		t.Fatalf("MariaDB allowed query: n=%d err=%v", n, err)
	}
	if _, err := myConn.ExecContext(ctx, "SELECT * FROM payments"); err == nil {
		t.Fatal("MariaDB forbidden query succeeded")
	}

	expiry := myResp.GetLease().GetExpireTime().AsTime()
	brokertest.WaitFor(t, 15*time.Second, "the expiry loop to drop both users", func() bool {
		return !m.userExists(pgUser) && !m.mariaUserExists(myUser)
	})
	t.Logf("both users dropped %s after the MariaDB lease's expiry", time.Since(expiry).Round(time.Millisecond))
	// The user is gone a moment before DeleteUser returns (a last sweep of
	// the process list follows the drop), and the lease only then.
	brokertest.WaitFor(t, 5*time.Second, "both leases to end", func() bool {
		list, err := client.ListLeases(ctx, &pb.ListLeasesRequest{})
		return err == nil && len(list.GetLeases()) == 0
	})
	if err := pgConn.Ping(ctx); err == nil {
		t.Error("PostgreSQL session survived expiry")
	}
	if err := myConn.PingContext(ctx); err == nil {
		t.Error("MariaDB session survived expiry")
	}
	var sessions int
	if err := m.admin.QueryRow("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?", myUser).Scan(&sessions); err != nil || sessions != 0 {
		t.Errorf("%d MariaDB session(s) of %s after expiry (err=%v)", sessions, myUser, err)
	}
	if _, _, err := mariaLogin(ctx, myResp.GetCredential().GetDsn()); err == nil {
		t.Error("MariaDB login after expiry succeeded")
	}
	m.assertNoSecret(pgResp.GetCredential().GetPassword())
	m.assertNoSecret(myResp.GetCredential().GetPassword())
}

// TestMariaDBIssueRenewRevoke is the MariaDB side of TestIssueLoginRenewRevoke,
// plus the failure paths that differ from PostgreSQL.
func TestMariaDBIssueRenewRevoke(t *testing.T) {
	m := newMariaEnv(t)
	ctx := context.Background()
	client := m.creds(ordersID)

	resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "shop-reader", Ttl: durationpb.New(30 * time.Second)})
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	l, cred := resp.GetLease(), resp.GetCredential()
	pool, conn, err := mariaLogin(ctx, cred.GetDsn())
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer pool.Close()
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "INSERT INTO orders VALUES (3)"); err == nil {
		t.Fatal("write through a read-only template succeeded")
	}

	// No server-side expiry to move: renewal is the lease's alone, and works.
	renewed, err := client.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: l.GetId(), Increment: durationpb.New(5 * time.Minute)})
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	if !renewed.GetLease().GetExpireTime().AsTime().After(l.GetExpireTime().AsTime()) {
		t.Fatal("renew did not extend the lease")
	}

	if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: l.GetId()}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	// The open session is gone when RevokeLease returns, and so is the user.
	if err := conn.PingContext(ctx); err == nil {
		t.Fatal("the user's open session survived revocation")
	}
	if m.mariaUserExists(cred.GetUsername()) {
		t.Fatal("user still exists after revoke")
	}
	if _, _, err := mariaLogin(ctx, cred.GetDsn()); err == nil {
		t.Fatal("login after revoke succeeded")
	}

	// The README's template passes the privilege lint (the config loaded)
	// and works: the group role is active at login.
	t.Run("README group-role template", func(t *testing.T) {
		resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "shop-group"})
		if err != nil {
			t.Fatalf("issue: %v", err)
		}
		pool, conn, err := mariaLogin(ctx, resp.GetCredential().GetDsn())
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		defer pool.Close()
		defer conn.Close()
		var n int
		if err := conn.QueryRowContext(ctx, "SELECT count(*) FROM orders").Scan(&n); err != nil || n != 2 {
			t.Fatalf("read through the group role: %d, %v", n, err)
		}
		if _, err := conn.ExecContext(ctx, "SELECT * FROM payments"); err == nil {
			t.Fatal("read of a table the group role lacks succeeded")
		}
		if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: resp.GetLease().GetId()}); err != nil {
			t.Fatalf("revoke: %v", err)
		}
	})
	t.Run("failing grant leaves nothing", func(t *testing.T) {
		_, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "shop-broken"})
		wantCode(t, err, codes.InvalidArgument)
	})
	t.Run("server down", func(t *testing.T) {
		_, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "shop-down"})
		wantCode(t, err, codes.Unavailable)
	})
	if names := m.users(); len(names) != 0 {
		t.Fatalf("MariaDB users left after refused issuances: %v", names)
	}
	leases, err := m.adminClient(adminID).ListLeases(ctx, &pb.AdminListLeasesRequest{})
	if err != nil || len(leases.GetLeases()) != 0 {
		t.Fatalf("leases after refused issuances: %v %v", leases.GetLeases(), err)
	}
	m.assertNoSecret(cred.GetPassword())
	// Nor did the server ever see the plaintext.
	general, err := os.ReadFile(testenv.MySQLLog(t))
	if err != nil {
		t.Fatalf("read the general log: %v", err)
	}
	if !strings.Contains(string(general), cred.GetUsername()) {
		t.Fatal("the general log does not show the user's creation: wrong log?")
	}
	if strings.Contains(string(general), cred.GetPassword()) {
		t.Fatal("the MariaDB general log contains the plaintext password")
	}
}
