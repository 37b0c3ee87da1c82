package postgres_test

import (
	"strings"
	"testing"

	"github.com/credbroker/credbroker/plugins/postgres"
)

const lintCreate = "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}}"

// TestPrivilegedClausesRefused: every privileged clause is found, in the
// statement it is in, and named.
func TestPrivilegedClausesRefused(t *testing.T) {
	cases := []struct {
		name string
		stmt string
		want string
	}{
		{"superuser", lintCreate + " SUPERUSER", "grants SUPERUSER"},
		{"superuser lower case", "create role {{name}} with login superuser password {{password}}", "grants SUPERUSER"},
		{"createrole", lintCreate + " CREATEROLE", "grants CREATEROLE"},
		{"createdb", lintCreate + " CREATEDB", "grants CREATEDB"},
		{"replication", lintCreate + " REPLICATION", "grants REPLICATION"},
		{"bypassrls", lintCreate + " BYPASSRLS", "grants BYPASSRLS"},
		{"old createuser", lintCreate + " CREATEUSER", "grants CREATEUSER"},
		{"alter role superuser", "ALTER ROLE {{name}} WITH SUPERUSER", "grants SUPERUSER"},
		{"alter user createdb", "ALTER USER {{name}} CREATEDB", "grants CREATEDB"},
		{"in role read files", lintCreate + " IN ROLE pg_read_server_files", "grants membership of pg_read_server_files"},
		{"grant write files", "GRANT pg_write_server_files TO {{name}}", "grants membership of pg_write_server_files"},
		{"grant program quoted", `GRANT "pg_execute_server_program" TO {{name}}`, "grants membership of pg_execute_server_program"},
		{"grant signal backend among others", "GRANT orders_reader, PG_SIGNAL_BACKEND TO {{name}}", "grants membership of pg_signal_backend"},
		{"grant read all data", "GRANT pg_read_all_data TO {{name}}", "grants membership of pg_read_all_data"},
		{"grant write all data", "GRANT pg_write_all_data TO {{name}}", "grants membership of pg_write_all_data"},
		{"with grant option", "GRANT SELECT ON orders TO {{name}} WITH GRANT OPTION", "grants WITH GRANT OPTION"},
		{"with admin option", "GRANT orders_reader TO {{name}} WITH ADMIN OPTION", "grants WITH ADMIN OPTION"},
		{"with admin true (16+)", "GRANT orders_reader TO {{name}} WITH INHERIT TRUE, ADMIN TRUE", "grants WITH ADMIN OPTION"},
		{"execute pg_read_file", "GRANT EXECUTE ON FUNCTION pg_read_file(text) TO {{name}}", "grants EXECUTE on pg_read_file"},
		{"alter system", "ALTER SYSTEM SET log_statement = 'none'", "runs ALTER SYSTEM"},
		{"copy program", "COPY (SELECT 1) TO PROGRAM 'curl evil'", "runs COPY ... PROGRAM"},
		{"copy from server file", "COPY orders FROM '/etc/passwd'", "runs COPY to or from a server file"},
		{"load", "LOAD 'auto_explain'", "runs LOAD"},
		{"second statement of an entry", lintCreate + "; ALTER ROLE {{name}} SUPERUSER", "grants SUPERUSER"},
		{"after a comment", "/* harmless */ " + lintCreate + " -- note\n SUPERUSER", "grants SUPERUSER"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := postgres.Factory{}.PrivilegedClauses([]string{lintCreate + " IN ROLE orders_reader", tc.stmt})
			if len(got) != 1 || got[0].Statement != 2 || !strings.HasPrefix(got[0].What, tc.want) {
				t.Fatalf("PrivilegedClauses = %+v, want one in statement 2: %q", got, tc.want)
			}
			if s := got[0].String(); !strings.HasPrefix(s, "creation statement 2 "+tc.want) {
				t.Errorf("String() = %q", s)
			}
		})
	}
}

// TestPrivilegedClausesAllowed: templates that only look privileged to a
// grep (keywords in literals, quoted identifiers, comments, negations,
// settings) pass.
func TestPrivilegedClausesAllowed(t *testing.T) {
	for name, stmt := range map[string]string{
		"readme group role":       lintCreate + " IN ROLE orders_reader;",
		"readme per-user grant":   "GRANT SELECT ON orders TO {{name}};",
		"quoted table":            `GRANT SELECT ON "superuser_log" TO {{name}}`,
		"quoted table like role":  `GRANT SELECT ON "pg_read_server_files_audit" TO {{name}}`,
		"string literal":          "COMMENT ON ROLE {{name}} IS 'not a SUPERUSER, no CREATEDB, no COPY PROGRAM'",
		"escape string":           `COMMENT ON ROLE {{name}} IS E'it\'s SUPERUSER free'`,
		"dollar quote":            "COMMENT ON ROLE {{name}} IS $c$ SUPERUSER; ALTER SYSTEM $c$",
		"line comment":            lintCreate + " -- SUPERUSER would be wrong here",
		"block comment":           lintCreate + " /* CREATEROLE /* nested */ REPLICATION */",
		"negated attributes":      lintCreate + " NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS",
		"unquoted table name":     "GRANT SELECT ON superuser_log TO {{name}}",
		"pg_monitor allowed":      "GRANT pg_monitor TO {{name}}",
		"role setting":            "ALTER ROLE {{name}} SET search_path = replication, public",
		"with admin false":        "GRANT orders_reader TO {{name}} WITH ADMIN FALSE",
		"copy to stdout":          "COPY orders TO STDOUT",
		"revoke grant option for": "REVOKE GRANT OPTION FOR SELECT ON orders FROM {{name}}",
	} {
		t.Run(name, func(t *testing.T) {
			if got := (postgres.Factory{}).PrivilegedClauses([]string{stmt}); len(got) != 0 {
				t.Fatalf("PrivilegedClauses(%q) = %+v, want none", stmt, got)
			}
		})
	}
}
