// Package testenv locates the real database servers that integration tests
// run against. Tests never skip for lack of a server: a missing server is a
// broken test setup, and a skipped test would hide it. `make test` starts
// throwaway servers and sets the variables read here.
package testenv

import (
	"os"
	"testing"
)

// Environment variables set by scripts/pg-throwaway.sh.
const (
	PostgresDSNVar = "CREDBROKER_TEST_PG_DSN"
	PostgresLogVar = "CREDBROKER_TEST_PG_LOG"
)

// Environment variables set by scripts/mariadb-throwaway.sh.
const (
	MySQLDSNVar = "CREDBROKER_TEST_MYSQL_DSN"
	MySQLLogVar = "CREDBROKER_TEST_MYSQL_LOG"
)

const postgresHint = "run `make test`, which starts a throwaway cluster with scripts/pg-throwaway.sh " +
	"(by hand: eval \"$(scripts/pg-throwaway.sh start .cache/pg-test)\")"

// PostgresDSN returns the admin DSN of the test PostgreSQL cluster. It holds
// a password: never log it.
func PostgresDSN(t testing.TB) string {
	t.Helper()
	return lookup(t, PostgresDSNVar, postgresHint)
}

// PostgresLog returns the path of the test cluster's server log, which
// records every statement (log_statement=all).
func PostgresLog(t testing.TB) string {
	t.Helper()
	return lookup(t, PostgresLogVar, postgresHint)
}

const mysqlHint = "run `make test`, which starts a throwaway MariaDB with scripts/mariadb-throwaway.sh " +
	"(by hand: eval \"$(scripts/mariadb-throwaway.sh start .cache/mariadb-test)\")"

// MySQLDSN returns the admin DSN of the test MariaDB server, in
// go-sql-driver format (root:<password>@tcp(127.0.0.1:<port>)/). It holds a
// password: never log it.
func MySQLDSN(t testing.TB) string {
	t.Helper()
	return lookup(t, MySQLDSNVar, mysqlHint)
}

// MySQLLog returns the path of the test server's general query log, which
// records every statement it receives.
func MySQLLog(t testing.TB) string {
	t.Helper()
	return lookup(t, MySQLLogVar, mysqlHint)
}

func lookup(t testing.TB, name, hint string) string {
	t.Helper()
	v := os.Getenv(name)
	if v == "" {
		t.Fatalf("testenv: %s is not set; %s", name, hint)
	}
	return v
}
