package postgres_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/pluginstest"
	"github.com/credbroker/credbroker/plugins/postgres"
)

// fixture is the per-run setup on the throwaway cluster: a schema holding
// allowed_t and forbidden_t and a NOLOGIN group role that may read
// allowed_t and create tables in the schema. Names carry a random suffix so
// runs never collide.
type fixture struct {
	admin  *pgxpool.Pool
	conn   *pgconn.Config // admin connection settings; holds the admin password
	schema string
	group  string
}

func randomSuffix(t testing.TB) string {
	var b [5]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b[:])
}

func setup(t *testing.T) *fixture {
	t.Helper()
	ctx := t.Context()
	dsn := testenv.PostgresDSN(t)
	cc, err := pgconn.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("parse %s: %v", testenv.PostgresDSNVar, err)
	}
	admin, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatalf("admin pool: %v", err)
	}
	t.Cleanup(admin.Close)

	sfx := randomSuffix(t)
	f := &fixture{admin: admin, conn: cc, schema: "cbt_" + sfx, group: "cbt_" + sfx + "_readers"}
	s, g := pgx.Identifier{f.schema}.Sanitize(), pgx.Identifier{f.group}.Sanitize()
	f.exec(t, `
		CREATE SCHEMA `+s+`;
		CREATE TABLE `+s+`.allowed_t (id int);
		INSERT INTO `+s+`.allowed_t VALUES (1);
		CREATE TABLE `+s+`.forbidden_t (id int);
		GRANT USAGE ON SCHEMA `+s+` TO PUBLIC;
		CREATE ROLE `+g+` NOLOGIN;
		GRANT SELECT ON `+s+`.allowed_t TO `+g+`;
		GRANT CREATE ON SCHEMA `+s+` TO `+g)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if _, err := admin.Exec(ctx, "DROP SCHEMA "+s+" CASCADE; DROP ROLE "+g); err != nil {
			t.Errorf("drop fixture: %v", err)
		}
	})
	return f
}

func (f *fixture) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := f.admin.Exec(t.Context(), sql, args...); err != nil {
		t.Fatalf("admin: %v", err)
	}
}

func (f *fixture) table(name string) string { return pgx.Identifier{f.schema, name}.Sanitize() }

// groupTemplate is the documented default: membership of a group role.
func (f *fixture) groupTemplate() []string {
	return []string{"CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE " +
		pgx.Identifier{f.group}.Sanitize() + ";"}
}

func (f *fixture) perUserGrantTemplate() []string {
	return []string{
		"CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};",
		"GRANT SELECT ON " + f.table("allowed_t") + " TO {{name}};",
	}
}

func (f *fixture) config(t testing.TB) postgres.Config {
	return postgres.Config{
		Host:     f.conn.Host,
		Port:     int(f.conn.Port),
		Database: f.conn.Database,
		Username: f.conn.User,
		Password: f.conn.Password,
		SSLMode:  "disable",
		MaxConns: 16,
	}
}

func (f *fixture) newDB(t *testing.T, c postgres.Config) *postgres.DB {
	t.Helper()
	db, err := postgres.New(t.Context(), c)
	if err != nil {
		t.Fatalf("postgres.New: %v", err)
	}
	t.Cleanup(db.Close)
	return db
}

type session struct{ conn *pgx.Conn }

func (s session) Exec(ctx context.Context, sql string) error {
	_, err := s.conn.Exec(ctx, sql)
	return err
}

func (s session) Ping(ctx context.Context) error { return s.conn.Ping(ctx) }

func (s session) Close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = s.conn.Close(ctx) // closing a dead or closed connection is fine
}

func (f *fixture) login(ctx context.Context, username, password string) (pluginstest.Session, error) {
	cc, err := pgx.ParseConfig("")
	if err != nil {
		return nil, err
	}
	cc.Host, cc.Port, cc.Database = f.conn.Host, f.conn.Port, f.conn.Database
	cc.User, cc.Password = username, password
	cc.TLSConfig, cc.Fallbacks = nil, nil
	cc.ConnectTimeout = 5 * time.Second
	conn, err := pgx.ConnectConfig(ctx, cc)
	if err != nil {
		return nil, err
	}
	return session{conn}, nil
}

func (f *fixture) validUntil(ctx context.Context, username string) (time.Time, error) {
	var until *time.Time
	err := f.admin.QueryRow(ctx, "SELECT rolvaliduntil FROM pg_roles WHERE rolname = $1", username).Scan(&until)
	if err != nil {
		return time.Time{}, err
	}
	if until == nil {
		return time.Time{}, errors.New("VALID UNTIL is not set")
	}
	return *until, nil
}

func (f *fixture) userExists(ctx context.Context, username string) (bool, error) {
	var ok bool
	err := f.admin.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)", username).Scan(&ok)
	return ok, err
}

func TestConformance(t *testing.T) {
	f := setup(t)
	pluginstest.Run(t, f.harness(t, f.config(t)))
}

// harness is the conformance suite's view of the fixture, with the plugin
// connecting as c says.
func (f *fixture) harness(t *testing.T, c postgres.Config) pluginstest.Harness {
	return pluginstest.Harness{
		New: func(t *testing.T) plugins.Database {
			db, err := postgres.New(t.Context(), c)
			if err != nil {
				t.Fatalf("postgres.New as %s: %v", c.Username, err)
			}
			return db
		},
		CreationStatements:     f.groupTemplate(),
		PerUserGrantStatements: f.perUserGrantTemplate(),
		Login:                  f.login,
		AllowedQuery:           "SELECT * FROM " + f.table("allowed_t"),
		ForbiddenQuery:         "SELECT * FROM " + f.table("forbidden_t"),
		ServerExpiry:           f.validUntil,
		CreateOwnedObject: func(ctx context.Context, s pluginstest.Session) error {
			return s.Exec(ctx, "CREATE TABLE "+f.table("owned_"+randomSuffix(t))+" (id int)")
		},
		UserExists: f.userExists,
		SessionCount: func(ctx context.Context, username string) (int, error) {
			var n int
			err := f.admin.QueryRow(ctx, "SELECT count(*) FROM pg_stat_activity WHERE usename = $1", username).Scan(&n)
			return n, err
		},
	}
}

// TestConformanceNonSuperuserAdmin runs the whole suite as the admin
// docs/config.md asks for, which is not a superuser: CREATEROLE, membership
// of pg_signal_backend, ADMIN OPTION on the group role, and the grant option
// on the table granted per user.
func TestConformanceNonSuperuserAdmin(t *testing.T) {
	f := setup(t)
	ctx := t.Context()
	name := f.group[:len(f.group)-len("_readers")] + "_admin"
	pw, err := plugins.GeneratePassword()
	if err != nil {
		t.Fatal(err)
	}
	a, g := pgx.Identifier{name}.Sanitize(), pgx.Identifier{f.group}.Sanitize()
	f.exec(t, `CREATE ROLE `+a+` LOGIN CREATEROLE PASSWORD '`+pw+`';
		GRANT pg_signal_backend TO `+a+`;
		GRANT `+g+` TO `+a+` WITH ADMIN OPTION;
		GRANT SELECT ON `+f.table("allowed_t")+` TO `+a+` WITH GRANT OPTION`)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		// Objects reassigned to the admin go with it.
		if _, err := f.admin.Exec(ctx, "DROP OWNED BY "+a+"; DROP ROLE "+a); err != nil {
			t.Errorf("drop admin: %v", err)
		}
	})
	var super bool
	if err := f.admin.QueryRow(ctx, "SELECT rolsuper FROM pg_roles WHERE rolname = $1", name).Scan(&super); err != nil || super {
		t.Fatalf("admin %s: superuser %v, %v", name, super, err)
	}
	c := f.config(t)
	c.Username, c.Password = name, pw
	pluginstest.Run(t, f.harness(t, c))
}

// create makes a user with the given template and returns its password.
func create(t *testing.T, db *postgres.DB, name string, exp time.Time, stmts []string) string {
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
	err = db.NewUser(t.Context(), plugins.NewUserRequest{Username: name, Password: pw, Expiration: exp, Statements: stmts})
	if err != nil {
		t.Fatalf("NewUser(%s): %v", name, err)
	}
	return pw
}

func generate(t *testing.T, db *postgres.DB, role string) string {
	t.Helper()
	name, err := db.GenerateUsername(role)
	if err != nil {
		t.Fatalf("GenerateUsername(%q): %v", role, err)
	}
	return name
}

// TestPlaintextPasswordNeverReachesServer relies on log_statement=all in the
// throwaway cluster: every statement the plugin sends is in the log.
func TestPlaintextPasswordNeverReachesServer(t *testing.T) {
	f := setup(t)
	logPath := testenv.PostgresLog(t)
	db := f.newDB(t, f.config(t))
	ctx := t.Context()

	name := generate(t, db, "logcheck")
	pw := create(t, db, name, time.Now().Add(time.Hour), f.groupTemplate())
	sess, err := f.login(ctx, name, pw)
	if err != nil {
		t.Fatalf("login as %s: %v", name, err)
	}
	if err := sess.Exec(ctx, "SELECT * FROM "+f.table("allowed_t")); err != nil {
		t.Fatalf("allowed query: %v", err)
	}
	sess.Close()

	var stored string
	if err := f.admin.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", name).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stored, "SCRAM-SHA-256$4096:") {
		t.Errorf("stored password of %s is not a SCRAM-SHA-256 verifier", name)
	}
	if strings.Contains(stored, pw) {
		t.Errorf("pg_authid holds the plaintext password")
	}

	// The server writes its log asynchronously to us: wait until the
	// creation statement shows up, which also proves this is the right log.
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatalf("read server log: %v", err)
		}
		if strings.Contains(string(data), pw) {
			t.Fatalf("server log %s contains the plaintext password", logPath)
		}
		if strings.Contains(string(data), "CREATE ROLE \""+name+"\"") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("server log %s never showed the CREATE ROLE of %s: is log_statement=all set?", logPath, name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ScramIterations sets the verifier's iteration count; the server accepts
// it and the workload logs in with the plaintext over SCRAM as before
// (the throwaway cluster's host auth is scram-sha-256).
func TestScramIterations(t *testing.T) {
	f := setup(t)
	c := f.config(t)
	c.ScramIterations = 16
	db := f.newDB(t, c)
	ctx := t.Context()
	name := generate(t, db, "iters")
	pw := create(t, db, name, time.Now().Add(time.Hour), f.groupTemplate())
	var stored string
	if err := f.admin.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", name).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(stored, "SCRAM-SHA-256$16:") {
		t.Errorf("stored verifier of %s does not carry 16 iterations", name)
	}
	sess, err := f.login(ctx, name, pw)
	if err != nil {
		t.Fatalf("login as %s: %v", name, err)
	}
	sess.Close()
	if _, err := f.login(ctx, name, pw+"x"); err == nil {
		t.Error("login with a wrong password succeeded")
	}
	for _, bad := range []int{-1, postgres.MaxScramIterations + 1} {
		c := f.config(t)
		c.ScramIterations = bad
		if _, err := postgres.New(ctx, c); err == nil {
			t.Errorf("New with %d iterations succeeded", bad)
		}
	}
}

func TestGenerateUsernameHostileRoles(t *testing.T) {
	f := setup(t)
	db := f.newDB(t, f.config(t))
	roles := map[string]string{
		"quotes":           `o'brien "the" role`,
		"spaces":           "  orders   read only  ",
		"unicode":          "ünïcødé-ロール",
		"only unicode":     "日本語",
		"sql injection":    `"; DROP ROLE postgres; --`,
		"bobby tables":     "Robert'); DROP TABLE students;--",
		"empty":            "",
		"nul and controls": "a\x00b\n\tc",
		"placeholder":      "{{name}}{{password}}",
		"uppercase":        "ORDERS_ReadOnly",
		"long":             strings.Repeat("orders-readonly-", 20),
	}
	for tc, role := range roles {
		t.Run(tc, func(t *testing.T) {
			name := generate(t, db, role)
			if !postgres.UsernamePattern.MatchString(name) || len(name) > 63 || !strings.HasPrefix(name, "cb_") {
				t.Fatalf("GenerateUsername(%q) = %q, not a valid name", role, name)
			}
			create(t, db, name, time.Now().Add(time.Hour), f.groupTemplate())
			if ok, err := f.userExists(t.Context(), name); err != nil || !ok {
				t.Fatalf("user %q not created: exists=%v err=%v", name, ok, err)
			}
		})
	}

	t.Run("long role keeps the random part", func(t *testing.T) {
		name := generate(t, db, strings.Repeat("x", 500))
		if len(name) != 63 {
			t.Errorf("len(%q) = %d, want exactly 63", name, len(name))
		}
		random := name[strings.LastIndexByte(name, '_')+1:]
		if len(random) != 26 {
			t.Errorf("random part of %q is %d characters, want 26", name, len(random))
		}
	})
}

func TestValidUntilSetWhenTemplateOmitsIt(t *testing.T) {
	f := setup(t)
	db := f.newDB(t, f.config(t))
	name := generate(t, db, "novaliduntil")
	exp := time.Now().Add(90 * time.Minute).Truncate(time.Microsecond)
	create(t, db, name, exp, []string{"CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}}"})
	got, err := f.validUntil(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Equal(exp) {
		t.Errorf("VALID UNTIL = %s, want %s", got.UTC(), exp.UTC())
	}
}

func TestMarker(t *testing.T) {
	f := setup(t)
	ctx := t.Context()
	c := f.config(t)
	c.Marker = "credbroker-test-" + randomSuffix(t)
	db := f.newDB(t, c)
	other := c
	other.Marker = "credbroker-other-" + randomSuffix(t)
	otherDB := f.newDB(t, other)

	name := generate(t, db, "marker")
	create(t, db, name, time.Now().Add(time.Hour), f.groupTemplate())
	var comment string
	if err := f.admin.QueryRow(ctx, "SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", name).Scan(&comment); err != nil {
		t.Fatal(err)
	}
	if comment != c.Marker {
		t.Errorf("role comment = %q, want marker %q", comment, c.Marker)
	}

	// A role with a valid-looking name but no marker is not the broker's.
	unmarked := generate(t, db, "unmarked")
	f.exec(t, "CREATE ROLE "+pgx.Identifier{unmarked}.Sanitize()+" NOLOGIN")
	t.Cleanup(func() {
		_, _ = f.admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{unmarked}.Sanitize())
	})

	names, err := db.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(names, name) {
		t.Errorf("ListUsers lacks %s", name)
	}
	if slices.Contains(names, unmarked) {
		t.Errorf("ListUsers returns unmarked role %s", unmarked)
	}
	if slices.Contains(names, "postgres") {
		t.Errorf("ListUsers returns the admin role")
	}
	otherNames, err := otherDB.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(otherNames, name) {
		t.Errorf("ListUsers with another marker returns %s", name)
	}

	if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: unmarked}); err == nil {
		t.Errorf("DeleteUser of unmarked role %s succeeded, want refused", unmarked)
	}
	if ok, err := f.userExists(ctx, unmarked); err != nil || !ok {
		t.Errorf("unmarked role %s was dropped (exists=%v, err=%v)", unmarked, ok, err)
	}
}

func TestConnectErrors(t *testing.T) {
	f := setup(t)
	t.Run("wrong admin password", func(t *testing.T) {
		c := f.config(t)
		c.Password = "WrongAdminPassword" + randomSuffix(t)
		_, err := postgres.New(t.Context(), c)
		if !errors.Is(err, plugins.ErrUnavailable) {
			t.Fatalf("New with a wrong password = %v, want ErrUnavailable", err)
		}
		if strings.Contains(err.Error(), c.Password) {
			t.Errorf("connect error contains the admin password")
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		c := f.config(t)
		c.Port = port
		c.ConnectTimeout = 2 * time.Second
		_, err = postgres.New(t.Context(), c)
		if !errors.Is(err, plugins.ErrUnavailable) {
			t.Fatalf("New against a closed port = %v, want ErrUnavailable", err)
		}
		if strings.Contains(err.Error(), c.Password) {
			t.Errorf("connect error contains the admin password")
		}
	})
	t.Run("bad prefix", func(t *testing.T) {
		c := f.config(t)
		c.Prefix = "Bad-Prefix"
		if _, err := postgres.New(t.Context(), c); err == nil {
			t.Fatal("New with an invalid prefix succeeded")
		}
	})
}

func TestRevocationStatements(t *testing.T) {
	f := setup(t)
	ctx := t.Context()
	db := f.newDB(t, f.config(t))

	t.Run("run inside the sequence", func(t *testing.T) {
		name := generate(t, db, "revoke")
		create(t, db, name, time.Now().Add(time.Hour), f.perUserGrantTemplate())
		err := db.DeleteUser(ctx, plugins.DeleteUserRequest{
			Username:   name,
			Statements: []string{"REVOKE SELECT ON " + f.table("allowed_t") + " FROM {{name}}"},
		})
		if err != nil {
			t.Fatalf("DeleteUser: %v", err)
		}
		if ok, _ := f.userExists(ctx, name); ok {
			t.Errorf("user %s still exists", name)
		}
	})

	t.Run("bad snapshot changes nothing", func(t *testing.T) {
		name := generate(t, db, "revoke")
		pw := create(t, db, name, time.Now().Add(time.Hour), f.groupTemplate())
		err := db.DeleteUser(ctx, plugins.DeleteUserRequest{
			Username:   name,
			Statements: []string{"ALTER ROLE {{name}} PASSWORD {{password}}"},
		})
		if !errors.Is(err, plugins.ErrInvalidStatement) {
			t.Fatalf("DeleteUser with {{password}} in a revocation statement = %v, want ErrInvalidStatement", err)
		}
		// Not even NOLOGIN happened.
		sess, err := f.login(ctx, name, pw)
		if err != nil {
			t.Fatalf("login after a refused DeleteUser: %v", err)
		}
		sess.Close()
	})

	t.Run("rejected statement rolls back", func(t *testing.T) {
		name := generate(t, db, "revoke")
		create(t, db, name, time.Now().Add(time.Hour), f.groupTemplate())
		err := db.DeleteUser(ctx, plugins.DeleteUserRequest{
			Username:   name,
			Statements: []string{"REVOKE SELECT ON " + f.table("no_such_table") + " FROM {{name}}"},
		})
		if !errors.Is(err, plugins.ErrInvalidStatement) {
			t.Fatalf("DeleteUser with a failing revocation statement = %v, want ErrInvalidStatement", err)
		}
		if ok, _ := f.userExists(ctx, name); !ok {
			t.Errorf("user %s dropped although its revocation failed", name)
		}
	})
}

func TestUpdateAbsentUser(t *testing.T) {
	f := setup(t)
	db := f.newDB(t, f.config(t))
	name := generate(t, db, "absent")
	err := db.UpdateUser(t.Context(), plugins.UpdateUserRequest{Username: name, Expiration: time.Now().Add(time.Hour)})
	if err == nil || errors.Is(err, plugins.ErrInvalidUsername) || errors.Is(err, plugins.ErrUnavailable) {
		t.Fatalf("UpdateUser of an absent user = %v, want a plain error", err)
	}
}
