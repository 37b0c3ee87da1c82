package mysql_test

import (
	"strings"
	"testing"

	"github.com/credbroker/credbroker/plugins/mysql"
)

const lintCreate = "CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}"

// TestPrivilegedClausesRefused: every privileged clause is found, in the
// statement it is in, and named.
func TestPrivilegedClausesRefused(t *testing.T) {
	cases := []struct {
		name string
		stmt string
		want string
	}{
		{"all on *.*", "GRANT ALL PRIVILEGES ON *.* TO {{name}}", "grants ALL PRIVILEGES ON *.*"},
		{"all on *.* lower case", "grant all on *.* to {{name}}", "grants ALL ON *.*"},
		{"select on *.*", "GRANT SELECT ON *.* TO {{name}}", "grants SELECT ON *.*"},
		{"super", "GRANT SUPER ON *.* TO {{name}}", "grants SUPER"},
		{"file", "GRANT FILE ON *.* TO {{name}}", "grants FILE"},
		{"process among others", "GRANT SELECT, PROCESS ON *.* TO {{name}}", "grants PROCESS"},
		{"shutdown", "GRANT SHUTDOWN ON *.* TO {{name}}", "grants SHUTDOWN"},
		{"reload", "GRANT RELOAD ON *.* TO {{name}}", "grants RELOAD"},
		{"create user", "GRANT CREATE USER ON *.* TO {{name}}", "grants CREATE USER"},
		{"grant option privilege", "GRANT GRANT OPTION ON shop.* TO {{name}}", "grants GRANT OPTION"},
		{"with grant option", "GRANT SELECT ON shop.* TO {{name}} WITH GRANT OPTION", "grants WITH GRANT OPTION"},
		{"role with admin option", "GRANT orders_reader TO {{name}} WITH ADMIN OPTION", "grants WITH ADMIN OPTION"},
		{"usage on *.* with grant option", "GRANT USAGE ON *.* TO {{name}} WITH GRANT OPTION", "grants WITH GRANT OPTION"},
		{"proxy", "GRANT PROXY ON ''@'' TO {{name}}", "grants PROXY"},
		{"replication slave", "GRANT REPLICATION SLAVE ON *.* TO {{name}}", "grants REPLICATION SLAVE"},
		{"binlog admin", "GRANT BINLOG ADMIN ON *.* TO {{name}}", "grants BINLOG ADMIN"},
		{"mysql 8 dynamic", "GRANT SYSTEM_VARIABLES_ADMIN ON *.* TO {{name}}", "grants SYSTEM_VARIABLES_ADMIN"},
		{"grant tables", "GRANT SELECT ON mysql.user TO {{name}}", "grants SELECT ON the mysql schema"},
		{"grant tables quoted", "GRANT INSERT ON `mysql`.* TO {{name}}", "grants INSERT ON the mysql schema"},
		{"column grant then *.*", "GRANT SELECT (id, name), UPDATE ON *.* TO {{name}}", "grants SELECT, UPDATE ON *.*"},
		{"set global", "SET GLOBAL general_log = OFF", "runs SET GLOBAL"},
		{"set @@global", "SET @@global.general_log = 0", "runs SET GLOBAL"},
		{"install plugin", "INSTALL SONAME 'server_audit'", "runs INSTALL"},
		{"load data", "LOAD DATA INFILE '/etc/passwd' INTO TABLE t", "runs LOAD DATA"},
		{"into outfile", "SELECT 1 INTO OUTFILE '/tmp/x'", "writes a server file (INTO OUTFILE)"},
		{"write grant tables", "UPDATE mysql.user SET Super_priv = 'Y'", "writes the grant tables"},
		{"executable comment", "GRANT /*!50000 SUPER, */ SELECT ON shop.* TO {{name}}", "grants SUPER"},
		{"mariadb executable comment", "GRANT SELECT ON shop.* TO {{name}} /*M!100100 WITH GRANT OPTION */", "grants WITH GRANT OPTION"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := mysql.Factory{}.PrivilegedClauses([]string{lintCreate, tc.stmt})
			if len(got) != 1 || got[0].Statement != 2 || !strings.HasPrefix(got[0].What, tc.want) {
				t.Fatalf("PrivilegedClauses = %+v, want one in statement 2: %q", got, tc.want)
			}
		})
	}
}

// TestPrivilegedClausesAllowed: templates that only look privileged to a
// grep pass.
func TestPrivilegedClausesAllowed(t *testing.T) {
	for name, stmt := range map[string]string{
		"readme create":           lintCreate,
		"readme role grant":       "GRANT orders_reader TO {{name}}",
		"readme default role":     "SET DEFAULT ROLE orders_reader FOR {{name}}",
		"database grant":          "GRANT SELECT, INSERT ON shop.* TO {{name}}",
		"all on one database":     "GRANT ALL PRIVILEGES ON shop.* TO {{name}}",
		"table grant":             "GRANT SELECT ON shop.orders TO {{name}}",
		"backquoted table":        "GRANT SELECT ON shop.`super_log` TO {{name}}",
		"table named like priv":   "GRANT SELECT ON shop.process_log TO {{name}}",
		"schema named mysqlapp":   "GRANT SELECT ON mysqlapp.* TO {{name}}",
		"string literal":          "CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}} COMMENT 'no SUPER, no ON *.*, no FILE'",
		"escaped quote in string": `CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}} COMMENT 'it\'s not WITH GRANT OPTION'`,
		"hash comment":            "GRANT SELECT ON shop.* TO {{name}} # WITH GRANT OPTION",
		"dash comment":            "GRANT SELECT ON shop.* TO {{name}} -- ON *.*",
		"block comment":           "GRANT SELECT ON shop.* TO {{name}} /* SUPER ON *.* */",
		"session setting":         "SET SESSION sql_mode = 'ANSI'",
		"with resource options":   lintCreate + " WITH MAX_USER_CONNECTIONS 10",
		"usage on *.* (options)":  "GRANT USAGE ON *.* TO {{name}} REQUIRE SSL WITH MAX_QUERIES_PER_HOUR 100",
	} {
		t.Run(name, func(t *testing.T) {
			if got := (mysql.Factory{}).PrivilegedClauses([]string{stmt}); len(got) != 0 {
				t.Fatalf("PrivilegedClauses(%q) = %+v, want none", stmt, got)
			}
		})
	}
}
