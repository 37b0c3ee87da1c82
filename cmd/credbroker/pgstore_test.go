package main_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/lease/pgstore"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// newFixturePGStore is newFixture with its lease store in a new schema of
// the test PostgreSQL (the data server too), created by `credbroker
// init-store`; the schema is dropped when t ends, after the broker stops.
func newFixturePGStore(t *testing.T) (*fixture, string) {
	t.Helper()
	dsn := testenv.PostgresDSN(t)
	pgc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal("parse the test DSN (not shown: it holds a password)")
	}
	schema := storeSchema(t, pgc)
	// CRASH_TEST_PG_PASSWORD is set by the fixture before init-store runs.
	store := fmt.Sprintf(`lease_store:
  postgres: {host: %s, port: %d, database: %s, username: %s, password_env: CRASH_TEST_PG_PASSWORD, sslmode: disable, schema: %s}`,
		pgc.Host, pgc.Port, pgc.Database, pgc.User, schema)
	return newFixtureStore(t, dsn, "", "", store), schema
}

// storeSchema names a new schema for a lease store on the server pgc
// reaches, dropped when t ends (after the brokers stop: register it before
// the fixture).
func storeSchema(t *testing.T, pgc *pgx.ConnConfig) string {
	t.Helper()
	schema := "cbcrash_" + randomSuffix(t)
	t.Cleanup(func() {
		ctx := context.Background()
		admin, err := pgx.ConnectConfig(ctx, pgc)
		if err != nil {
			t.Errorf("drop the store's schema: %v", err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{schema}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop the store's schema: %v", err)
		}
	})
	return schema
}

func randomSuffix(t *testing.T) string {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// A broker on a PostgreSQL lease store (made by init-store) is killed with
// SIGKILL after an issue: restarted, it finds the lease, the user is backed,
// and revocation works; migrate of a current store changes nothing.
func TestPostgresStoreSurvivesKill(t *testing.T) {
	f, schema := newFixturePGStore(t)
	config := f.configPath()
	var n int
	if err := f.admin.QueryRow(context.Background(), "SELECT count(*) FROM "+pgx.Identifier{schema}.Sanitize()+".schema_version").Scan(&n); err != nil || n != pgstore.SchemaVersion() {
		t.Fatalf("init-store made no versioned schema: %d rows, %v", n, err)
	}
	f.start("")
	resp, err := f.issue(time.Minute)
	if err != nil {
		t.Fatalf("issue: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	f.kill()
	f.start("")
	if got := f.users(); len(got) != 1 || got[0] != resp.GetLease().GetUsername() {
		t.Fatalf("users after kill and restart %v, want the lease's %s", got, resp.GetLease().GetUsername())
	}
	f.assertEveryUserBacked()

	out, err := exec.CommandContext(ctx, binary, "migrate", "--config", config).CombinedOutput()
	if err != nil || !strings.Contains(string(out), fmt.Sprintf("schema version %d", pgstore.SchemaVersion())) {
		t.Fatalf("migrate of a current store: %v\n%s", err, out)
	}
	rev, err := pb.NewAdminServiceClient(f.conn("admin")).RevokeLeases(ctx, &pb.RevokeLeasesRequest{Role: "reader"})
	if err != nil || rev.GetRevoked() != 1 {
		t.Fatalf("revoke: %v %v", rev, err)
	}
	f.waitNoUsers(time.Second)
}
