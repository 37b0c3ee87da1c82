package broker_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	driver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/testenv"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// writePasswordFile writes pw to a new 0600 file in dir.
func writePasswordFile(t *testing.T, dir, name, pw string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(pw+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func readPasswordFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("%s has mode %v, want 0600", filepath.Base(path), fi.Mode().Perm())
	}
	return strings.TrimRight(string(b), "\n")
}

// issueAndRevoke issues a credential for role and revokes it: the
// database's admin works.
func (e *env) issueAndRevoke(role string) {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c := e.creds(ordersID)
	r, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: role})
	if err != nil {
		e.t.Fatalf("issue %s: %v", role, err)
	}
	if _, err := c.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: r.GetLease().GetId()}); err != nil {
		e.t.Fatalf("revoke %s: %v", role, err)
	}
}

func (e *env) rotate(db string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_, err := e.adminClient(adminID).RotateAdminCredential(ctx, &pb.RotateAdminCredentialRequest{Database: db})
	return err
}

// TestRotateAdminPostgres rotates the broker's own admin password on the
// scram-sha-256 throwaway cluster: afterwards the old password is refused,
// the new one is only in password_file (0600), never in the broker's log,
// the audit log or the server's statement log; the broker still issues,
// also once the server has ended every admin session (new connections log
// in with the new password) and after a restart (which reads the new
// file). A database on password_env, an unknown database and a non-admin
// caller are refused and change nothing. A side file left by a rotation cut
// short is resolved at start both ways; a schedule (rotate_admin_every)
// rotates a password_file older than its interval at start.
func TestRotateAdminPostgres(t *testing.T) {
	ctx := context.Background()
	cfgPG, su := brokertest.Postgres(t)
	sfx := brokertest.RandHex(t, 4)
	rot, sched := "cbrot_"+sfx, "cbsched_"+sfx
	pw0, schedPW := brokertest.RandHex(t, 16), brokertest.RandHex(t, 16)
	t.Cleanup(func() {
		for _, r := range []string{rot, sched} {
			_, _ = su.Exec(context.Background(), "DROP ROLE IF EXISTS "+r)
		}
	})
	for _, q := range []string{
		fmt.Sprintf("CREATE ROLE %s LOGIN CREATEROLE PASSWORD '%s'", rot, pw0),
		"GRANT pg_signal_backend TO " + rot,
		fmt.Sprintf("CREATE ROLE %s LOGIN CREATEROLE PASSWORD '%s'", sched, schedPW),
	} {
		if _, err := su.Exec(ctx, q); err != nil {
			t.Fatalf("setup: %v", err)
		}
	}
	dir := t.TempDir()
	file := writePasswordFile(t, dir, "rot.password", pw0)
	schedFile := writePasswordFile(t, dir, "sched.password", schedPW)
	// Last written two hours ago: the hourly schedule is overdue at start.
	old := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(schedFile, old, old); err != nil {
		t.Fatal(err)
	}
	auditFile := filepath.Join(dir, "audit.log")
	prefix := "r" + sfx[:6]
	dbs := fmt.Sprintf(`
  rot:
    plugin: postgres
    host: %[1]s
    port: %[2]d
    database: %[3]s
    username: %[4]s
    password_file: %[5]s
    sslmode: disable
    username_prefix: %[8]s
  sched:
    plugin: postgres
    host: %[1]s
    port: %[2]d
    database: %[3]s
    username: %[6]s
    password_file: %[7]s
    sslmode: disable
    username_prefix: %[8]s
    rotate_admin_every: 1h
`, cfgPG.Host, cfgPG.Port, cfgPG.Database, rot, file, sched, schedFile, prefix)
	roles := `
  rot-role:
    database: rot
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};
`
	e := newEnvWith(t, envExtra{databases: dbs, roles: roles, top: "audit: {file: " + auditFile + "}"})
	login := func(user, pw string) error {
		c := cfgPG.Copy()
		c.User, c.Password = user, pw
		conn, err := pgx.ConnectConfig(ctx, c)
		if err == nil {
			conn.Close(ctx)
		}
		return err
	}
	e.issueAndRevoke("rot-role")

	t.Run("refused", func(t *testing.T) {
		ctx := context.Background()
		_, err := e.adminClient(ordersID).RotateAdminCredential(ctx, &pb.RotateAdminCredentialRequest{Database: "rot"})
		if statusCode(err) != codes.PermissionDenied {
			t.Errorf("non-admin: %v, want PermissionDenied", err)
		}
		err = e.rotate("main")
		wantStatus(t, status.Convert(err), codes.FailedPrecondition, `database "main"`, "password_env")
		wantStatus(t, status.Convert(e.rotate("nosuch")), codes.NotFound, "no such database")
		wantStatus(t, status.Convert(e.rotate("")), codes.InvalidArgument, "database is required")
		// A side file of an unfinished rotation: no new one starts.
		side := writePasswordFile(t, dir, "rot.password.next", brokertest.RandHex(t, 20))
		wantStatus(t, status.Convert(e.rotate("rot")), codes.FailedPrecondition, `database "rot"`, "outcome is unknown")
		if err := os.Remove(side); err != nil {
			t.Fatal(err)
		}
		if got := readPasswordFile(t, file); got != pw0 {
			t.Error("a refused rotation changed password_file")
		}
		if err := login(rot, pw0); err != nil {
			t.Errorf("a refused rotation changed the password: %v", err)
		}
	})

	var pw1 string
	t.Run("rotate", func(t *testing.T) {
		if err := e.rotate("rot"); err != nil {
			t.Fatalf("rotate: %v", err)
		}
		pw1 = readPasswordFile(t, file)
		if pw1 == pw0 || len(pw1) < 32 {
			t.Fatalf("password_file was not rewritten with a new password")
		}
		if _, err := os.Stat(file + ".next"); !os.IsNotExist(err) {
			t.Errorf("side file left after a rotation: %v", err)
		}
		if err := login(rot, pw0); err == nil {
			t.Error("the old admin password still logs in")
		}
		if err := login(rot, pw1); err != nil {
			t.Errorf("the new admin password does not log in: %v", err)
		}
		e.issueAndRevoke("rot-role")
		// Every admin session ended by the server: the pool logs in again,
		// with the new password.
		if _, err := su.Exec(ctx, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1", rot); err != nil {
			t.Fatal(err)
		}
		brokertest.WaitFor(t, 10*time.Second, "issuance after the admin sessions ended", func() bool {
			r, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "rot-role"})
			if err != nil {
				return false
			}
			if _, err := e.creds(ordersID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: r.GetLease().GetId()}); err != nil {
				t.Fatalf("revoke: %v", err)
			}
			return true
		})
		e.restart()
		e.issueAndRevoke("rot-role")
	})

	var schedNew string
	t.Run("schedule", func(t *testing.T) {
		brokertest.WaitFor(t, 15*time.Second, "the overdue scheduled rotation", func() bool { return readPasswordFile(t, schedFile) != schedPW })
		schedNew = readPasswordFile(t, schedFile)
		if err := login(sched, schedPW); err == nil {
			t.Error("the scheduled rotation left the old password working")
		}
		if err := login(sched, schedNew); err != nil {
			t.Errorf("the scheduled rotation's password does not log in: %v", err)
		}
	})

	t.Run("recovery", func(t *testing.T) {
		e.stop()
		e.stop = nil
		// A crash after the ALTER, before the rename: the server has the
		// side file's password.
		pwSet := brokertest.RandHex(t, 20)
		if _, err := su.Exec(ctx, fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", rot, pwSet)); err != nil {
			t.Fatal(err)
		}
		writePasswordFile(t, dir, "rot.password.next", pwSet)
		e.start()
		if got := readPasswordFile(t, file); got != pwSet {
			t.Error("the side file's working password was not moved over password_file")
		}
		if _, err := os.Stat(file + ".next"); !os.IsNotExist(err) {
			t.Errorf("side file left after recovery: %v", err)
		}
		e.issueAndRevoke("rot-role")

		// A crash before the ALTER: the side file's password was never set.
		e.stop()
		e.stop = nil
		writePasswordFile(t, dir, "rot.password.next", brokertest.RandHex(t, 20))
		e.start()
		if got := readPasswordFile(t, file); got != pwSet {
			t.Error("a side file whose password was never set replaced password_file")
		}
		if _, err := os.Stat(file + ".next"); !os.IsNotExist(err) {
			t.Errorf("side file of a password never set left: %v", err)
		}
		e.issueAndRevoke("rot-role")
	})

	e.stop()
	e.stop = nil
	var rotations int
	for _, r := range readAudit(t, auditFile) {
		if r.Event == audit.EventRotateAdmin && r.Result == audit.ResultOK {
			rotations++
			if r.Database != "rot" && r.Database != "sched" {
				t.Errorf("rotate_admin record for database %q", r.Database)
			}
		}
	}
	if rotations != 2 {
		t.Errorf("%d successful rotate_admin records, want 2 (one by RPC, one by schedule)", rotations)
	}
	// pw0 and schedPW were set by this test in plaintext (CREATE ROLE …
	// PASSWORD), so only the broker's own passwords are looked for in the
	// server's log; every one of them in the broker's and the audit log.
	for _, pw := range []string{pw0, schedPW} {
		e.assertNoSecret(pw)
	}
	secrets := []string{pw1, schedNew}
	for _, pw := range secrets {
		e.assertNoSecret(pw)
	}
	for _, path := range []string{auditFile, testenv.PostgresLog(t)} {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, pw := range secrets {
			if strings.Contains(string(b), pw) {
				t.Errorf("an admin password appears in %s", filepath.Base(path))
			}
		}
	}
}

// TestRotateAdminMariaDB rotates the broker's admin password on the
// throwaway MariaDB: the old password is refused, the broker issues with
// the new one, after a restart too, and the plaintext is not in the
// server's general log (the hash form, IDENTIFIED BY PASSWORD, is sent).
func TestRotateAdminMariaDB(t *testing.T) {
	root, host, port := mariaRoot(t)
	sfx := brokertest.RandHex(t, 4)
	schema, admin := "cbr_"+sfx, "cbrot_"+sfx
	pw0 := brokertest.RandHex(t, 16)
	instance := "r" + sfx
	prefix := "q" + sfx[:6]
	t.Cleanup(func() {
		for _, q := range []string{"DROP USER IF EXISTS '" + admin + "'@'%'", "DROP DATABASE IF EXISTS " + schema,
			"DROP ROLE IF EXISTS 'credbroker:" + instance + "'"} {
			_, _ = root.Exec(q)
		}
	})
	for _, q := range []string{
		"CREATE DATABASE " + schema,
		"CREATE TABLE " + schema + ".orders (id int)",
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", admin, pw0),
		fmt.Sprintf("GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO '%s'@'%%'", admin),
		fmt.Sprintf("GRANT SELECT ON mysql.* TO '%s'@'%%'", admin),
		fmt.Sprintf("GRANT SELECT ON %s.* TO '%s'@'%%' WITH GRANT OPTION", schema, admin),
	} {
		if _, err := root.Exec(q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}
	dir := t.TempDir()
	file := writePasswordFile(t, dir, "shop.password", pw0)
	dbs := fmt.Sprintf(`
  rshop:
    plugin: mysql
    host: %[1]s
    port: %[2]s
    database: %[3]s
    username: %[4]s
    password_file: %[5]s
    sslmode: disable
    username_prefix: %[6]s
    user_host: 127.0.0.1
`, host, port, schema, admin, file, prefix)
	roles := fmt.Sprintf(`
  rshop-role:
    database: rshop
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT SELECT ON %s.orders TO {{name}}
`, schema)
	e := newEnvWith(t, envExtra{databases: dbs, roles: roles, top: "instance_id: " + instance})
	login := func(pw string) error {
		cc, _ := driver.ParseDSN(testenv.MySQLDSN(t))
		cc.User, cc.Passwd, cc.DBName = admin, pw, schema
		db, err := sql.Open("mysql", cc.FormatDSN())
		if err != nil {
			return err
		}
		defer db.Close()
		return db.Ping()
	}
	e.issueAndRevoke("rshop-role")

	if err := e.rotate("rshop"); err != nil {
		t.Fatalf("rotate: %v", err)
	}
	pw1 := readPasswordFile(t, file)
	if pw1 == pw0 {
		t.Fatal("password_file was not rewritten")
	}
	if err := login(pw0); err == nil {
		t.Error("the old admin password still logs in")
	}
	if err := login(pw1); err != nil {
		t.Errorf("the new admin password does not log in: %v", err)
	}
	e.issueAndRevoke("rshop-role")
	// Every admin connection ended: the pool logs in again with the new one.
	killSessions(t, root, admin)
	brokertest.WaitFor(t, 10*time.Second, "issuance after the admin's connections were killed", func() bool {
		ctx := context.Background()
		r, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "rshop-role"})
		if err != nil {
			return false
		}
		if _, err := e.creds(ordersID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: r.GetLease().GetId()}); err != nil {
			t.Fatalf("revoke: %v", err)
		}
		return true
	})
	e.restart()
	e.issueAndRevoke("rshop-role")

	b, err := os.ReadFile(testenv.MySQLLog(t))
	if err != nil {
		t.Fatal(err)
	}
	for _, pw := range []string{pw0, pw1} {
		e.assertNoSecret(pw)
	}
	if strings.Contains(string(b), pw1) {
		t.Error("the new admin password is in MariaDB's general log")
	}
	if !strings.Contains(string(b), "ALTER USER '"+admin+"'@'%' IDENTIFIED BY PASSWORD '*") {
		t.Error("no ALTER USER … IDENTIFIED BY PASSWORD '<hash>' in MariaDB's general log")
	}
}
