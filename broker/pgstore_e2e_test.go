package broker_test

import (
	"context"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/testenv"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// pgLeaseStore returns a lease_store: section on a new schema of the test
// PostgreSQL (the data server: another schema), and the schema's quoted
// name. The schema is dropped when t ends, after the broker has stopped
// (cleanups run last-registered first: call this before newEnvWith).
func pgLeaseStore(t *testing.T) (yaml, schema string, store broker.PostgresStoreConfig) {
	t.Helper()
	ctx := context.Background()
	pc, err := pgx.ParseConfig(testenv.PostgresDSN(t))
	if err != nil {
		t.Fatalf("parse test dsn (not shown: it holds a password)")
	}
	name := "cbe2e_" + brokertest.RandHex(t, 6)
	t.Cleanup(func() {
		admin, err := pgx.ConnectConfig(ctx, pc)
		if err != nil {
			t.Errorf("drop the store's schema: %v", err)
			return
		}
		defer admin.Close(ctx)
		if _, err := admin.Exec(ctx, "DROP SCHEMA IF EXISTS "+pgx.Identifier{name}.Sanitize()+" CASCADE"); err != nil {
			t.Errorf("drop the store's schema: %v", err)
		}
	})
	// CREDBROKER_TEST_ADMIN_PW is set by newEnvWith.
	store = broker.PostgresStoreConfig{
		Host: pc.Host, Port: int(pc.Port), Database: pc.Database, Username: pc.User,
		PasswordEnv: "CREDBROKER_TEST_ADMIN_PW", SSLMode: "disable", MaxConnections: 4,
		ConnectTimeout: broker.Duration{Duration: 5 * time.Second}, Schema: name,
	}
	return fmt.Sprintf(`lease_store:
  postgres:
    host: %s
    port: %d
    database: %s
    username: %s
    password_env: CREDBROKER_TEST_ADMIN_PW
    sslmode: disable
    max_connections: 4
    schema: %s`, pc.Host, pc.Port, pc.Database, pc.User, name), pgx.Identifier{name}.Sanitize(), store
}

// The broker end to end on a PostgreSQL lease store: issue, log in, renew,
// a second broker on the store renewing the lease too, restart (the lease survives, in
// the store and in the database), revoke.
func TestPostgresLeaseStore(t *testing.T) {
	storeYAML, schema, _ := pgLeaseStore(t)
	e := newEnvWith(t, envExtra{leaseStore: storeYAML})
	ctx := context.Background()
	client := e.creds(ordersID)

	resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader", Ttl: durationpb.New(time.Minute)})
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	l, cred := resp.GetLease(), resp.GetCredential()
	conn, err := login(ctx, cred.GetDsn())
	if err != nil {
		t.Fatalf("login with the issued credential: %v", err)
	}
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+e.table).Scan(&n); err != nil || n != 2 {
		t.Fatalf("allowed query: n=%d err=%v", n, err)
	}
	conn.Close(ctx)

	renewed, err := client.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: l.GetId(), Increment: durationpb.New(5 * time.Minute)})
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	newExp := renewed.GetLease().GetExpireTime().AsTime()
	if !newExp.After(l.GetExpireTime().AsTime()) {
		t.Fatalf("renew did not extend: %s -> %s", l.GetExpireTime().AsTime(), newExp)
	}

	// The lease is a row of the store, as renewed.
	var (
		state  string
		expire time.Time
	)
	if err := e.admin.QueryRow(ctx, "SELECT state, expire_time FROM "+schema+".leases WHERE id = $1", l.GetId()).Scan(&state, &expire); err != nil {
		t.Fatalf("the lease's row: %v", err)
	}
	if state != "ACTIVE" || !expire.Equal(newExp.Truncate(time.Microsecond)) {
		t.Errorf("stored %s expiring %s, want ACTIVE expiring %s", state, expire, newExp)
	}

	// Any number of brokers share the store: a second one on it sees the
	// lease and renews it, and the first sees the renewal.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	second := e.opts
	second.CreateStore = false
	second.Listener = lis
	app, err := broker.NewApp(ctx, e.cfg, second)
	if err != nil {
		t.Fatalf("a second broker on the same PostgreSQL store: %v", err)
	}
	again, err := app.Manager().Renew(ctx, l.GetId(), 7*time.Minute)
	if err != nil {
		t.Fatalf("renew through the second broker: %v", err)
	}
	got, err := e.app.Manager().Get(ctx, l.GetId())
	if err != nil || !got.ExpireTime.Equal(again.ExpireTime) {
		t.Fatalf("the first broker sees %+v, %v; want the expiry %s the second set", got, err, again.ExpireTime)
	}
	newExp = again.ExpireTime
	stopped, cancel := context.WithCancel(ctx)
	cancel()
	if err := app.Run(stopped); err != nil {
		t.Errorf("second broker run: %v", err)
	}

	e.restart()
	list, err := client.ListLeases(ctx, &pb.ListLeasesRequest{})
	if err != nil || len(list.GetLeases()) != 1 {
		t.Fatalf("list after restart: %v, %v", list, err)
	}
	if got := list.GetLeases()[0]; got.GetId() != l.GetId() || got.GetState() != pb.Lease_ACTIVE || !got.GetExpireTime().AsTime().Equal(newExp) {
		t.Fatalf("lease after restart: %v, want %s ACTIVE expiring %s", got, l.GetId(), newExp)
	}
	if conn, err := login(ctx, cred.GetDsn()); err != nil {
		t.Fatalf("login after restart: %v", err)
	} else {
		conn.Close(ctx)
	}
	// A renew after the restart is stored too.
	if _, err := client.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: l.GetId(), Increment: durationpb.New(6 * time.Minute)}); err != nil {
		t.Fatalf("renew after restart: %v", err)
	}

	rev, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: l.GetId()})
	if err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if rev.GetLease().GetState() != pb.Lease_REVOKED {
		t.Fatalf("state after revoke %s", rev.GetLease().GetState())
	}
	if e.userExists(cred.GetUsername()) {
		t.Fatal("user still exists after revoke")
	}
	if err := e.admin.QueryRow(ctx, "SELECT count(*) FROM "+schema+".leases").Scan(&n); err != nil || n != 0 {
		t.Errorf("rows left in the store after revoke: %d, %v", n, err)
	}
	e.assertNoSecret(cred.GetPassword())
	pc, _ := pgx.ParseConfig(testenv.PostgresDSN(t))
	e.assertNoSecret(pc.Password)
}

// serve never creates a PostgreSQL store: a schema nobody initialized is
// refused with the advice the bbolt store gives.
func TestPostgresLeaseStoreMissing(t *testing.T) {
	_, _, store := pgLeaseStore(t)
	e := newEnv(t)
	cfg := *e.cfg
	cfg.LeaseStore = broker.LeaseStoreConfig{Postgres: &store}
	opts := e.opts
	opts.CreateStore = false
	_, err := broker.NewApp(context.Background(), &cfg, opts)
	if err == nil || !strings.Contains(err.Error(), "does not exist") || !strings.Contains(err.Error(), "credbroker init-store") {
		t.Fatalf("missing store: got %v, want a refusal that points to init-store", err)
	}
	t.Logf("missing store refused: %v", err)
}
