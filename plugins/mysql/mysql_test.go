package mysql_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	driver "github.com/go-sql-driver/mysql"

	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/mysql"
	"github.com/credbroker/credbroker/plugins/pluginstest"
)

// fixture is the per-test setup on the throwaway server: a database holding
// allowed_t and forbidden_t, and a role that may read allowed_t and create
// tables in the database. Names carry a random suffix so runs never collide.
type fixture struct {
	admin *sql.DB
	conn  *driver.Config // admin connection settings; holds the admin password
	db    string         // database (schema) name
	role  string
}

func randomSuffix(t testing.TB) string {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

// ident quotes a fixture identifier (test-made, [a-z0-9_] only).
func ident(s string) string { return "`" + s + "`" }

func setup(t *testing.T) *fixture {
	t.Helper()
	cc, err := driver.ParseDSN(testenv.MySQLDSN(t))
	if err != nil {
		// The DSN holds the admin password; the driver's error may quote it.
		t.Fatalf("parse %s: malformed DSN", testenv.MySQLDSNVar)
	}
	admin, err := sql.Open("mysql", cc.FormatDSN())
	if err != nil {
		t.Fatalf("admin pool: %v", err)
	}
	t.Cleanup(func() { admin.Close() })

	sfx := randomSuffix(t)
	f := &fixture{admin: admin, conn: cc, db: "cbt_" + sfx, role: "cbt_" + sfx + "_readers"}
	d, r := ident(f.db), ident(f.role)
	f.exec(t,
		"CREATE DATABASE "+d,
		"CREATE TABLE "+d+".allowed_t (id int)",
		"INSERT INTO "+d+".allowed_t VALUES (1)",
		"CREATE TABLE "+d+".forbidden_t (id int)",
		"CREATE ROLE "+r,
		"GRANT SELECT ON "+d+".allowed_t TO "+r,
		"GRANT CREATE ON "+d+".* TO "+r,
	)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		for _, q := range []string{"DROP DATABASE " + d, "DROP ROLE " + r} {
			if _, err := admin.ExecContext(ctx, q); err != nil {
				t.Errorf("drop fixture: %v", err)
			}
		}
	})
	return f
}

func (f *fixture) exec(t *testing.T, stmts ...string) {
	t.Helper()
	for _, s := range stmts {
		if _, err := f.admin.ExecContext(t.Context(), s); err != nil {
			t.Fatalf("admin: %s: %v", s, err)
		}
	}
}

func (f *fixture) table(name string) string { return ident(f.db) + "." + ident(name) }

// roleTemplate is the documented group pattern: the user gets a role that
// holds the privileges, active from login on.
func (f *fixture) roleTemplate() []string {
	return []string{
		"CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}",
		"GRANT " + ident(f.role) + " TO {{name}}",
		"SET DEFAULT ROLE " + ident(f.role) + " FOR {{name}}",
	}
}

func (f *fixture) perUserGrantTemplate() []string {
	return []string{
		"CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}",
		"GRANT SELECT ON " + f.table("allowed_t") + " TO {{name}}",
	}
}

func (f *fixture) config(t testing.TB) mysql.Config {
	t.Helper()
	host, port, err := net.SplitHostPort(f.conn.Addr)
	if err != nil {
		t.Fatal(err)
	}
	p, err := strconv.Atoi(port)
	if err != nil {
		t.Fatal(err)
	}
	return mysql.Config{
		Host:     host,
		Port:     p,
		Database: f.db,
		Username: f.conn.User,
		Password: f.conn.Passwd,
		TLS:      "false",
		MaxConns: 16,
	}
}

func (f *fixture) newDB(t *testing.T, c mysql.Config) *mysql.DB {
	t.Helper()
	db, err := mysql.New(t.Context(), c)
	if err != nil {
		t.Fatalf("mysql.New: %v", err)
	}
	t.Cleanup(db.Close)
	return db
}

// session is one connection, never silently replaced: after a KILL its
// next statement fails.
type session struct {
	pool *sql.DB
	conn *sql.Conn
}

func (s session) Exec(ctx context.Context, q string) error {
	_, err := s.conn.ExecContext(ctx, q)
	return err
}

func (s session) Ping(ctx context.Context) error { return s.conn.PingContext(ctx) }

func (s session) Close() {
	_ = s.conn.Close() // closing a dead or closed connection is fine
	_ = s.pool.Close()
}

func (f *fixture) login(ctx context.Context, username, password string) (pluginstest.Session, error) {
	return f.loginAt(ctx, f.conn.Addr, username, password)
}

func (f *fixture) loginAt(ctx context.Context, addr, username, password string) (session, error) {
	c := driver.NewConfig()
	c.User, c.Passwd = username, password
	c.Net, c.Addr = "tcp", addr
	c.Timeout = 5 * time.Second
	c.Logger = &driver.NopLogger{}
	conn, err := driver.NewConnector(c)
	if err != nil {
		return session{}, err
	}
	pool := sql.OpenDB(conn)
	sc, err := pool.Conn(ctx)
	if err != nil {
		pool.Close()
		return session{}, err
	}
	return session{pool: pool, conn: sc}, nil
}

func (f *fixture) userExists(ctx context.Context, username string) (bool, error) {
	var n int
	err := f.admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM mysql.user WHERE User = ?", username).Scan(&n)
	return n > 0, err
}

func (f *fixture) sessionCount(ctx context.Context, username string) (int, error) {
	var n int
	err := f.admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = ?", username).Scan(&n)
	return n, err
}

// nameLimit reads the server's user-name limit independently of the plugin.
func (f *fixture) nameLimit(t *testing.T) int {
	t.Helper()
	var n int
	err := f.admin.QueryRowContext(t.Context(), `SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA = 'mysql' AND TABLE_NAME = 'user' AND COLUMN_NAME = 'User'`).Scan(&n)
	if err != nil {
		t.Fatalf("read name limit: %v", err)
	}
	return n
}

func TestConformance(t *testing.T) {
	f := setup(t)
	pluginstest.Run(t, pluginstest.Harness{
		New: func(t *testing.T) plugins.Database {
			db, err := mysql.New(t.Context(), f.config(t))
			if err != nil {
				t.Fatalf("mysql.New: %v", err)
			}
			return db
		},
		CreationStatements:     f.roleTemplate(),
		PerUserGrantStatements: f.perUserGrantTemplate(),
		Login:                  f.login,
		AllowedQuery:           "SELECT * FROM " + f.table("allowed_t"),
		ForbiddenQuery:         "SELECT * FROM " + f.table("forbidden_t"),
		// No ServerExpiry: the plugin reports Capabilities().ServerExpiry
		// false, and the suite checks that instead.
		CreateOwnedObject: func(ctx context.Context, s pluginstest.Session) error {
			return s.Exec(ctx, "CREATE TABLE "+f.table("owned_"+randomSuffix(t))+" (id int)")
		},
		UserExists:   f.userExists,
		SessionCount: f.sessionCount,
	})
}

// create makes a user with the given template and returns its password.
func create(t *testing.T, db *mysql.DB, name string, stmts []string) string {
	t.Helper()
	pw, err := plugins.GeneratePassword()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name}); err != nil {
			t.Errorf("cleanup: DeleteUser(%s): %v", name, err)
		}
	})
	err = db.NewUser(t.Context(), plugins.NewUserRequest{Username: name, Password: pw, Expiration: time.Now().Add(time.Hour), Statements: stmts})
	if err != nil {
		t.Fatalf("NewUser(%s): %s", name, strings.ReplaceAll(err.Error(), pw, "[password]"))
	}
	return pw
}

func generate(t *testing.T, db *mysql.DB, role string) string {
	t.Helper()
	name, err := db.GenerateUsername(role)
	if err != nil {
		t.Fatalf("GenerateUsername(%q): %v", role, err)
	}
	return name
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
