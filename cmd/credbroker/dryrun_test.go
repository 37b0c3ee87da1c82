package main_test

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	driver "github.com/go-sql-driver/mysql"
	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/internal/testenv"
)

// TestCheckConfigDryRun runs `credbroker check-config --dry-run` on four
// roles: a PostgreSQL role and a MariaDB role (the README's template with
// SET DEFAULT ROLE) whose admins have every privilege, a PostgreSQL role
// whose admin lacks CREATEROLE, and the README's MariaDB role under an
// admin with everything docs/config.md listed before but UPDATE on mysql.*.
// The two good roles pass, the two others fail with the database's message
// naming the role and the database, and no probe user is left on either
// server.
func TestCheckConfigDryRun(t *testing.T) {
	ctx := context.Background()
	pgc, err := pgx.ParseConfig(testenv.PostgresDSN(t))
	if err != nil {
		t.Fatal("parse the test DSN (not shown: it holds a password)")
	}
	pg, err := pgx.ConnectConfig(ctx, pgc)
	if err != nil {
		t.Fatalf("connect to PostgreSQL: %v", err)
	}
	defer pg.Close(ctx)
	mc, err := driver.ParseDSN(testenv.MySQLDSN(t))
	if err != nil {
		t.Fatalf("parse %s: malformed DSN", testenv.MySQLDSNVar)
	}
	my, err := sql.Open("mysql", mc.FormatDSN())
	if err != nil {
		t.Fatal(err)
	}
	defer my.Close()
	myHost, myPort, err := net.SplitHostPort(mc.Addr)
	if err != nil {
		t.Fatal(err)
	}

	sfx := randomSuffix(t)[:8]
	prefix := "d" + sfx[:6]
	pgReader, pgTable, pgWeak := "dr_reader_"+sfx, "dr_orders_"+sfx, "dr_weak_"+sfx
	mySchema, myReader, myWeak := "dr_"+sfx, "dr_reader_"+sfx, "dr_weak_"+sfx
	weakPW, myWeakPW := randomSuffix(t), randomSuffix(t)
	instance := "dr" + sfx
	t.Cleanup(func() {
		for _, q := range []string{"DROP TABLE IF EXISTS " + pgTable, "DROP ROLE IF EXISTS " + pgReader, "DROP ROLE IF EXISTS " + pgWeak} {
			_, _ = pg.Exec(context.Background(), q)
		}
		for _, q := range []string{"DROP USER IF EXISTS '" + myWeak + "'@'%'", "DROP ROLE IF EXISTS " + myReader,
			"DROP DATABASE IF EXISTS " + mySchema, "DROP ROLE IF EXISTS 'credbroker:" + instance + "'"} {
			_, _ = my.Exec(q)
		}
	})
	for _, q := range []string{
		"CREATE TABLE " + pgTable + " (id int)",
		"CREATE ROLE " + pgReader + " NOLOGIN",
		"GRANT SELECT ON " + pgTable + " TO " + pgReader,
		fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", pgWeak, weakPW),
	} {
		if _, err := pg.Exec(ctx, q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}
	for _, q := range []string{
		"CREATE DATABASE " + mySchema,
		"CREATE TABLE " + mySchema + ".orders (id int)",
		"CREATE ROLE " + myReader,
		"GRANT SELECT ON " + mySchema + ".orders TO " + myReader,
		fmt.Sprintf("CREATE USER '%s'@'%%' IDENTIFIED BY '%s'", myWeak, myWeakPW),
		fmt.Sprintf("GRANT CREATE USER, PROCESS, CONNECTION ADMIN ON *.* TO '%s'@'%%'", myWeak),
		fmt.Sprintf("GRANT SELECT ON mysql.* TO '%s'@'%%'", myWeak),
		fmt.Sprintf("GRANT SELECT ON %s.* TO '%s'@'%%'", mySchema, myWeak),
		fmt.Sprintf("GRANT %s TO '%s'@'%%' WITH ADMIN OPTION", myReader, myWeak),
		// Both MariaDB admins share the instance's marker role: made here,
		// so the weak one needs it WITH ADMIN OPTION.
		"CREATE ROLE 'credbroker:" + instance + "'",
		fmt.Sprintf("GRANT 'credbroker:%s' TO '%s'@'%%' WITH ADMIN OPTION", instance, myWeak),
	} {
		if _, err := my.Exec(q); err != nil {
			t.Fatalf("setup %q: %v", q, err)
		}
	}

	dir := t.TempDir()
	myTemplate := fmt.Sprintf(`
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT %[1]s TO {{name}}
      - SET DEFAULT ROLE %[1]s FOR {{name}}`, myReader)
	config := fmt.Sprintf(`
listen: 127.0.0.1:0
trust_domain: example.org
instance_id: %[1]s
svid: {cert_file: unused, key_file: unused, bundle_file: unused}
lease_store: {path: %[2]s/leases.db}
databases:
  pgok:
    plugin: postgres
    host: %[3]s
    port: %[4]d
    database: %[5]s
    username: %[6]s
    password_env: DR_PG_PW
    sslmode: disable
    username_prefix: %[7]s
  pgweak:
    plugin: postgres
    host: %[3]s
    port: %[4]d
    database: %[5]s
    username: %[8]s
    password_env: DR_PGWEAK_PW
    sslmode: disable
    username_prefix: %[7]s
  myok:
    plugin: mysql
    host: %[9]s
    port: %[10]s
    database: %[11]s
    username: %[12]s
    password_env: DR_MY_PW
    sslmode: disable
    username_prefix: %[7]s
  myweak:
    plugin: mysql
    host: %[9]s
    port: %[10]s
    database: %[11]s
    username: %[13]s
    password_env: DR_MYWEAK_PW
    sslmode: disable
    username_prefix: %[7]s
roles:
  pg-ok:
    database: pgok
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE %[14]s;
      - GRANT SELECT ON %[15]s TO {{name}};
    revocation_statements:
      - REVOKE ALL ON %[15]s FROM {{name}};
  pg-weak:
    database: pgweak
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}};
  my-ok:
    database: myok
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:%[16]s
    revocation_statements:
      - REVOKE %[17]s FROM {{name}}
  my-weak:
    database: myweak
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:%[16]s
`, instance, dir, pgc.Host, pgc.Port, pgc.Database, pgc.User, prefix, pgWeak,
		myHost, myPort, mySchema, mc.User, myWeak, pgReader, pgTable, myTemplate, myReader)
	path := filepath.Join(dir, "credbroker.yaml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(binary, "check-config", "--config", path, "--dry-run")
	cmd.Env = append(os.Environ(), "DR_PG_PW="+pgc.Password, "DR_PGWEAK_PW="+weakPW, "DR_MY_PW="+mc.Passwd, "DR_MYWEAK_PW="+myWeakPW)
	out, err := cmd.CombinedOutput()
	text := string(out)
	for _, pw := range []string{pgc.Password, weakPW, mc.Passwd, myWeakPW} {
		if strings.Contains(text, pw) {
			t.Fatal("a password appears in the dry run's output")
		}
	}
	t.Logf("check-config --dry-run:\n%s", text)
	if err == nil {
		t.Fatal("the dry run passed with two roles whose admin lacks a privilege")
	}
	if !strings.Contains(text, "dry run: 2 of 4 roles failed") {
		t.Errorf("no summary of 2 failed roles in the output")
	}
	for _, want := range []string{
		"roles.pg-ok (database pgok): ok\n",
		"roles.my-ok (database myok): ok\n",
		"roles.pg-weak (database pgweak): FAILED: ",
		"roles.my-weak (database myweak): FAILED: ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("output lacks %q", want)
		}
	}
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.HasPrefix(line, "roles.pg-weak "):
			if !strings.Contains(line, "creation statement 1 rejected: permission denied to create role (SQLSTATE 42501)") {
				t.Errorf("pg-weak: %q does not carry PostgreSQL's message", line)
			}
		case strings.HasPrefix(line, "roles.my-weak "):
			if !strings.Contains(line, "creation statement 3 rejected: Access denied") || !strings.Contains(line, "to database 'mysql' (error 1044)") {
				t.Errorf("my-weak: %q does not carry MariaDB's message", line)
			}
		}
	}

	// No probe user is left, on either server, whatever failed.
	var n int
	if err := pg.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE starts_with(rolname, $1)", prefix+"_").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d probe roles left in PostgreSQL", n)
	}
	if err := my.QueryRow("SELECT count(*) FROM mysql.user WHERE LEFT(User, ?) = ?", len(prefix)+1, prefix+"_").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Errorf("%d probe users left in MariaDB", n)
	}
	// The MariaDB probe of my-ok did exist (no transactional DDL) and went
	// through the revocation sequence: its CREATE and DROP are in the
	// server's log.
	log, err := os.ReadFile(testenv.MySQLLog(t))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(log), "DROP USER IF EXISTS '"+prefix+"_my_ok_") {
		t.Error("no DROP USER of the my-ok probe in MariaDB's general log")
	}

	// With the privilege docs/config.md now lists, the README's template
	// passes the dry run under the weak admin too.
	if _, err := my.Exec(fmt.Sprintf("GRANT UPDATE ON mysql.* TO '%s'@'%%'", myWeak)); err != nil {
		t.Fatal(err)
	}
	cmd = exec.Command(binary, "check-config", "--config", path, "--dry-run")
	cmd.Env = append(os.Environ(), "DR_PG_PW="+pgc.Password, "DR_PGWEAK_PW="+weakPW, "DR_MY_PW="+mc.Passwd, "DR_MYWEAK_PW="+myWeakPW)
	out, _ = cmd.CombinedOutput()
	if !strings.Contains(string(out), "roles.my-weak (database myweak): ok\n") || !strings.Contains(string(out), "dry run: 1 of 4 roles failed") {
		t.Errorf("after GRANT UPDATE ON mysql.*:\n%s", out)
	}
}
