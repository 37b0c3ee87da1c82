package broker_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/testenv"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// mariaRoot connects to the throwaway MariaDB as root.
func mariaRoot(t *testing.T) (*sql.DB, string, string) {
	t.Helper()
	my := brokertest.OpenMySQL(t, testenv.MySQLDSN(t))
	return my.DB, my.Host, my.Port
}

func (e *env) health(service string) healthpb.HealthCheckResponse_ServingStatus {
	e.t.Helper()
	return healthOf(e.t, healthpb.NewHealthClient(e.conn(ordersID)), service)
}

func healthOf(t *testing.T, hc healthpb.HealthClient, service string) healthpb.HealthCheckResponse_ServingStatus {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := hc.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("health %s: %v", service, err)
	}
	return r.GetStatus()
}

func (e *env) waitHealth(service string, want healthpb.HealthCheckResponse_ServingStatus) {
	e.t.Helper()
	hc := healthpb.NewHealthClient(e.conn(ordersID))
	brokertest.WaitFor(e.t, 15*time.Second, service+" "+want.String(), func() bool { return healthOf(e.t, hc, service) == want })
}

// issueErr asks for role as ordersID and returns the status of the failure.
func (e *env) issueErr(role string) *status.Status {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: role})
	if err == nil {
		e.t.Fatalf("issue %s: succeeded, want a failure", role)
	}
	return status.Convert(err)
}

func wantStatus(t *testing.T, st *status.Status, code codes.Code, parts ...string) {
	t.Helper()
	if st.Code() != code {
		t.Fatalf("code = %v (%q), want %v", st.Code(), st.Message(), code)
	}
	for _, p := range parts {
		if !strings.Contains(st.Message(), p) {
			t.Errorf("message %q does not say %q", st.Message(), p)
		}
	}
}

// TestAdminErrorsPostgres: an admin without CREATEROLE gets
// FAILED_PRECONDITION naming the database, not "internal error"; an admin
// whose login is refused gets UNAVAILABLE naming the database, and the
// database's health service follows its login: NOT_SERVING while refused,
// SERVING once it works again, NOT_SERVING when it breaks while serving.
func TestAdminErrorsPostgres(t *testing.T) {
	ctx := context.Background()
	cfgPG, su := brokertest.Postgres(t) // as the superuser, to set up admin users
	suffix := brokertest.RandHex(t, 4)
	weak, flaky := "cbweak_"+suffix, "cbflaky_"+suffix
	weakPW, flakyPW := brokertest.RandHex(t, 16), brokertest.RandHex(t, 16)
	t.Cleanup(func() {
		for _, r := range []string{weak, flaky} {
			_, _ = su.Exec(context.Background(), "DROP ROLE IF EXISTS "+r)
		}
	})
	for _, q := range []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", weak, weakPW),
		// The flaky admin's password starts out wrong.
		fmt.Sprintf("CREATE ROLE %s LOGIN CREATEROLE PASSWORD '%s'", flaky, brokertest.RandHex(t, 16)),
	} {
		if _, err := su.Exec(ctx, q); err != nil {
			t.Fatalf("setup: %v", err)
		}
	}
	t.Setenv("CB_TEST_WEAK_PW", weakPW)
	t.Setenv("CB_TEST_FLAKY_PW", flakyPW)
	dbs := fmt.Sprintf(`
  weak:
    plugin: postgres
    host: %[1]s
    port: %[2]d
    database: %[3]s
    username: %[4]s
    password_env: CB_TEST_WEAK_PW
    sslmode: disable
    username_prefix: %[6]s
  flaky:
    plugin: postgres
    host: %[1]s
    port: %[2]d
    database: %[3]s
    username: %[5]s
    password_env: CB_TEST_FLAKY_PW
    sslmode: disable
    ping_interval: 200ms
    username_prefix: %[6]s
`, cfgPG.Host, cfgPG.Port, cfgPG.Database, weak, flaky, "x"+suffix[:6])
	roles := `
  weak-role:
    database: weak
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}};
  flaky-role:
    database: flaky
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}};
`
	e := newEnvWith(t, envExtra{databases: dbs, roles: roles})

	t.Run("missing CREATEROLE", func(t *testing.T) {
		wantStatus(t, e.issueErr("weak-role"), codes.FailedPrecondition, `database "weak"`, "lacks a privilege")
		if got := e.health(broker.DatabaseHealthPrefix + "weak"); got != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("weak: %v, want SERVING (its login works; only a role's statements lack a privilege)", got)
		}
	})
	t.Run("login refused", func(t *testing.T) {
		e.waitHealth(broker.DatabaseHealthPrefix+"flaky", healthpb.HealthCheckResponse_NOT_SERVING)
		wantStatus(t, e.issueErr("flaky-role"), codes.Unavailable, `database "flaky"`, "refused the broker's admin login")
		for _, svc := range []string{"", broker.DatabaseHealthPrefix + "main"} {
			if got := e.health(svc); got != healthpb.HealthCheckResponse_SERVING {
				t.Errorf("health %q = %v while one database is down, want SERVING", svc, got)
			}
		}
		if got := e.health(broker.DatabaseHealthPrefix + "down"); got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("down (closed port): %v, want NOT_SERVING", got)
		}
	})
	t.Run("login fixed, then broken", func(t *testing.T) {
		if _, err := su.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", flaky, flakyPW)); err != nil {
			t.Fatal(err)
		}
		e.waitHealth(broker.DatabaseHealthPrefix+"flaky", healthpb.HealthCheckResponse_SERVING)
		c, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "flaky-role"})
		if err != nil {
			t.Fatalf("issue after the login was fixed: %v", err)
		}
		if _, err := e.creds(ordersID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: c.GetLease().GetId()}); err != nil {
			t.Fatal(err)
		}
		// A new password and the admin's sessions ended: the pool has to
		// log in again, and cannot. A login that was being authenticated
		// with the old password while the password changed is not yet in
		// pg_stat_activity under its user and survives one termination
		// (PostgreSQL checks a password only at login), so the sessions
		// are ended again until the broker sees the login refused.
		if _, err := su.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", flaky, brokertest.RandHex(t, 16))); err != nil {
			t.Fatal(err)
		}
		hc := healthpb.NewHealthClient(e.conn(ordersID))
		brokertest.WaitFor(t, 15*time.Second, "flaky NOT_SERVING", func() bool {
			if _, err := su.Exec(ctx, fmt.Sprintf("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '%s'", flaky)); err != nil {
				t.Fatal(err)
			}
			return healthOf(t, hc, broker.DatabaseHealthPrefix+"flaky") == healthpb.HealthCheckResponse_NOT_SERVING
		})
		// Connections the pool still holds were ended by the server: a call
		// that meets one is told the database is unavailable; once the pool
		// has to log in, that the login is refused.
		for i := 0; ; i++ {
			st := e.issueErr("flaky-role")
			wantStatus(t, st, codes.Unavailable, `database "flaky"`)
			if strings.Contains(st.Message(), "admin login") {
				break
			}
			if i == 20 {
				t.Fatalf("after %d calls still %q, never the refused login", i, st.Message())
			}
		}
	})
	for _, pw := range []string{weakPW, flakyPW} {
		e.assertNoSecret(pw)
	}
}

// TestAdminErrorsMariaDB: a MariaDB admin that lacks a privilege on the
// configured schema (the broker's pool cannot even use it) gets
// FAILED_PRECONDITION naming the database, not "internal error", and its
// health is NOT_SERVING; one whose template needs a privilege it lacks
// (SET DEFAULT ROLE … FOR needs UPDATE on mysql.*) gets FAILED_PRECONDITION
// too, and nothing is left behind. A refused login flips the database's
// health to NOT_SERVING and back.
func TestAdminErrorsMariaDB(t *testing.T) {
	root, host, port := mariaRoot(t)
	suffix := brokertest.RandHex(t, 4)
	schema, grp := "cbw_"+suffix, "cbw_reader_"+suffix
	noschema, nodefault := "cbns_"+suffix, "cbnd_"+suffix
	nsPW, ndPW := brokertest.RandHex(t, 16), brokertest.RandHex(t, 16)
	prefix := "w" + suffix[:6]
	// An instance of its own: the admin creates the marker role itself (and
	// so may grant it); another admin's marker role would need granting
	// WITH ADMIN OPTION first.
	instance := "w" + suffix
	setup := []string{
		"CREATE DATABASE " + schema,
		"CREATE TABLE " + schema + ".orders (id int)",
		"CREATE ROLE " + grp,
		"GRANT SELECT ON " + schema + ".orders TO " + grp,
		// No privilege at all on the schema.
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", noschema, nsPW),
		fmt.Sprintf("GRANT CREATE USER ON *.* TO '%s'@'%%'", noschema),
		// Everything docs/config.md listed before, but not UPDATE on mysql.*.
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", nodefault, ndPW),
		fmt.Sprintf("GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO '%s'@'%%'", nodefault),
		fmt.Sprintf("GRANT SELECT ON mysql.* TO '%s'@'%%'", nodefault),
		fmt.Sprintf("GRANT SELECT ON %s.* TO '%s'@'%%'", schema, nodefault),
		fmt.Sprintf("GRANT %s TO '%s'@'%%' WITH ADMIN OPTION", grp, nodefault),
	}
	t.Cleanup(func() {
		for _, q := range []string{
			"DROP USER IF EXISTS '" + noschema + "'@'%'", "DROP USER IF EXISTS '" + nodefault + "'@'%'",
			"DROP ROLE IF EXISTS " + grp, "DROP DATABASE IF EXISTS " + schema,
			"DROP ROLE IF EXISTS 'credbroker:" + instance + "'",
		} {
			_, _ = root.Exec(q)
		}
	})
	for _, q := range setup {
		if _, err := root.Exec(q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}
	t.Setenv("CB_TEST_NS_PW", nsPW)
	t.Setenv("CB_TEST_ND_PW", ndPW)
	dbs := fmt.Sprintf(`
  noschema:
    plugin: mysql
    host: %[1]s
    port: %[2]s
    database: %[3]s
    username: %[4]s
    password_env: CB_TEST_NS_PW
    sslmode: disable
    username_prefix: %[6]s
    user_host: 127.0.0.1
  nodefault:
    plugin: mysql
    host: %[1]s
    port: %[2]s
    database: %[3]s
    username: %[5]s
    password_env: CB_TEST_ND_PW
    sslmode: disable
    ping_interval: 200ms
    username_prefix: %[6]s
    user_host: 127.0.0.1
`, host, port, schema, noschema, nodefault, prefix)
	roles := fmt.Sprintf(`
  noschema-role:
    database: noschema
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
  nodefault-role:
    database: nodefault
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT %[1]s TO {{name}}
      - SET DEFAULT ROLE %[1]s FOR {{name}}
`, grp)
	e := newEnvWith(t, envExtra{databases: dbs, roles: roles, top: "instance_id: " + instance})
	leftovers := func() []string {
		rows, err := root.Query("SELECT User FROM mysql.user WHERE LEFT(User, ?) = ?", len(prefix)+1, prefix+"_")
		if err != nil {
			t.Fatal(err)
		}
		defer rows.Close()
		var out []string
		for rows.Next() {
			var n string
			_ = rows.Scan(&n)
			out = append(out, n)
		}
		return out
	}

	t.Run("no privilege on the schema", func(t *testing.T) {
		wantStatus(t, e.issueErr("noschema-role"), codes.FailedPrecondition, `database "noschema"`, "lacks a privilege")
		if got := e.health(broker.DatabaseHealthPrefix + "noschema"); got != healthpb.HealthCheckResponse_NOT_SERVING {
			t.Errorf("noschema: %v, want NOT_SERVING (the admin cannot use the configured schema)", got)
		}
	})
	t.Run("template needs UPDATE on mysql", func(t *testing.T) {
		wantStatus(t, e.issueErr("nodefault-role"), codes.FailedPrecondition, `database "nodefault"`, "lacks a privilege")
		if got := e.health(broker.DatabaseHealthPrefix + "nodefault"); got != healthpb.HealthCheckResponse_SERVING {
			t.Errorf("nodefault: %v, want SERVING", got)
		}
		if l := leftovers(); len(l) != 0 {
			t.Errorf("users left behind: %v", l)
		}
		// With the privilege docs/config.md now lists, the same role works.
		if _, err := root.Exec(fmt.Sprintf("GRANT UPDATE ON mysql.* TO '%s'@'%%'", nodefault)); err != nil {
			t.Fatal(err)
		}
		c, err := e.creds(ordersID).IssueCredential(context.Background(), &pb.IssueCredentialRequest{Role: "nodefault-role"})
		if err != nil {
			t.Fatalf("issue with UPDATE on mysql.*: %v", err)
		}
		if _, err := e.creds(ordersID).RevokeLease(context.Background(), &pb.RevokeLeaseRequest{LeaseId: c.GetLease().GetId()}); err != nil {
			t.Fatal(err)
		}
	})
	t.Run("login refused and back", func(t *testing.T) {
		svc := broker.DatabaseHealthPrefix + "nodefault"
		e.waitHealth(svc, healthpb.HealthCheckResponse_SERVING)
		if _, err := root.Exec(fmt.Sprintf("ALTER USER '%s'@'%%' IDENTIFIED BY '%s'", nodefault, brokertest.RandHex(t, 16))); err != nil {
			t.Fatal(err)
		}
		killSessions(t, root, nodefault)
		e.waitHealth(svc, healthpb.HealthCheckResponse_NOT_SERVING)
		wantStatus(t, e.issueErr("nodefault-role"), codes.Unavailable, `database "nodefault"`, "admin login")
		if _, err := root.Exec(fmt.Sprintf("ALTER USER '%s'@'%%' IDENTIFIED BY '%s'", nodefault, ndPW)); err != nil {
			t.Fatal(err)
		}
		e.waitHealth(svc, healthpb.HealthCheckResponse_SERVING)
	})
	if l := leftovers(); len(l) != 0 {
		t.Errorf("users left behind: %v", l)
	}
	for _, pw := range []string{nsPW, ndPW} {
		e.assertNoSecret(pw)
	}
}

// killSessions ends every connection of user on the MariaDB server.
func killSessions(t *testing.T, root *sql.DB, user string) {
	t.Helper()
	rows, err := root.Query("SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?", user)
	if err != nil {
		t.Fatal(err)
	}
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	rows.Close()
	for _, id := range ids {
		_, _ = root.Exec(fmt.Sprintf("KILL CONNECTION %d", id))
	}
}
