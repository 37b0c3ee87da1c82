package pgstore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

var bg = context.Background()

// dsnEnv names the server the tests use: a throwaway cluster with
// scram-sha-256 logins (scripts/pg-throwaway.sh; scripts/test.sh sets it).
const dsnEnv = "CREDBROKER_TEST_PG_DSN"

// testConfig is the store Config of the test server, in a new schema of
// its own that is dropped when t ends.
func testConfig(t testing.TB) Config {
	t.Helper()
	c := serverConfig(t)
	c.Schema = "cbtest_" + randomHex(t)
	t.Cleanup(func() { dropSchema(t, c) })
	return c
}

// serverConfig reads the test server from dsnEnv, field by field, so that
// nothing prints the DSN and its password.
func serverConfig(t testing.TB) Config {
	t.Helper()
	dsn := os.Getenv(dsnEnv)
	if dsn == "" {
		t.Skipf("%s is not set: no PostgreSQL to test the store on (start one with "+
			"`eval \"$(scripts/pg-throwaway.sh start DIR)\"`; scripts/test.sh does)", dsnEnv)
	}
	pc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatalf("%s does not parse (not shown: it holds a password)", dsnEnv)
	}
	if pc.Password == "" {
		t.Fatalf("%s has no password: the store must be tested with password auth", dsnEnv)
	}
	return Config{
		Host:           pc.Host,
		Port:           int(pc.Port),
		Database:       pc.Database,
		Username:       pc.User,
		Password:       pc.Password,
		SSLMode:        "disable",
		MaxConns:       4,
		ConnectTimeout: 5 * time.Second,
	}
}

func randomHex(t testing.TB) string {
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// adminPool is a pool on the test server for the tests' own SQL.
func adminPool(t testing.TB, c Config) *pgxpool.Pool {
	t.Helper()
	c = c.withDefaults()
	pc, err := c.poolConfig()
	if err != nil {
		t.Fatal(err)
	}
	pool, err := pgxpool.NewWithConfig(bg, pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	return pool
}

func exec(t testing.TB, c Config, sql string, args ...any) {
	t.Helper()
	if _, err := adminPool(t, c).Exec(bg, sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

func dropSchema(t testing.TB, c Config) {
	t.Helper()
	exec(t, c, `DROP SCHEMA IF EXISTS `+quoteIdent(c.Schema)+` CASCADE`)
}

// initOpen initializes the store of c and opens it; it is closed when t
// ends.
func initOpen(t testing.TB, c Config) *Store {
	t.Helper()
	if err := Init(bg, c); err != nil {
		t.Fatalf("Init: %v", err)
	}
	return mustOpen(t, c)
}

func mustOpen(t testing.TB, c Config) *Store {
	t.Helper()
	s, err := Open(bg, c)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}
