package broker_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins/builtin"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// capableStore is a lease.Store with the optional abilities of the real
// one (boltstore.Store). A wrapper must forward them: without them the
// Manager takes another restore path (DeferLoad loads synchronously), and
// the faults would be tested on a broker that is not the real one.
type capableStore interface {
	lease.Store
	lease.Verifier
	lease.SizeHinter
	lease.BulkPutter
}

// failingStore fails Put of ACTIVE records while armed: the durable
// "credential handed out" write. Everything else, the optional abilities
// included, goes to the wrapped store.
type failingStore struct {
	capableStore
	armed atomic.Bool
}

var _ capableStore = (*failingStore)(nil)

func (f *failingStore) Put(ctx context.Context, l lease.Lease) error {
	if f.armed.Load() && l.State == lease.StateActive {
		return errors.New("injected: disk full")
	}
	return f.capableStore.Put(ctx, l)
}

func TestStoreWriteFailureFailsClosed(t *testing.T) {
	fs := &failingStore{}
	e := newEnv(t, func(o *broker.AppOptions) {
		o.WrapStore = func(s lease.Store) lease.Store {
			c, ok := s.(capableStore)
			if !ok {
				t.Fatalf("the broker's store %T lacks the optional abilities the wrapper forwards", s)
			}
			fs.capableStore = c
			return fs
		}
	})
	ctx := context.Background()
	fs.armed.Store(true)
	_, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	wantCode(t, err, codes.Unavailable)
	// The user created before the failed write was dropped, and nothing is
	// left in the store.
	if n := e.countUsers(); n != 0 {
		t.Fatalf("%d users left after a failed store write", n)
	}
	l, err := e.adminClient(adminID).ListLeases(ctx, &pb.AdminListLeasesRequest{})
	if err != nil || len(l.GetLeases()) != 0 {
		t.Fatalf("leases after failed write: %v %v", l.GetLeases(), err)
	}
	fs.armed.Store(false)
	resp, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("issue after the store recovered: %v", err)
	}
	if _, err := e.creds(ordersID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: resp.GetLease().GetId()}); err != nil {
		t.Fatal(err)
	}
}

func TestMissingOrCorruptStoreRefusesToStart(t *testing.T) {
	dir := t.TempDir()
	cfg := func(path string) *broker.Config {
		c, err := broker.ParseConfig([]byte(fmt.Sprintf(`
trust_domain: example.org
svid: {cert_file: x, key_file: x, bundle_file: x}
lease_store: {path: %s}
databases:
  main: {plugin: postgres, host: 127.0.0.1, port: 1, database: x, username: x, password_env: HOME}
roles:
  r: {database: main, default_ttl: 1m, max_ttl: 1m, allowed_spiffe_ids: ["spiffe://example.org/*"], creation_statements: ["CREATE ROLE {{name}}"]}
`, path)), builtin.Catalog())
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	ca := brokertest.NewCA(t)
	src, err := ca.Source(serverID)
	if err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.db")
	_, err = broker.NewApp(context.Background(), cfg(missing), broker.AppOptions{Source: src})
	if err == nil || !strings.Contains(err.Error(), "init-store") {
		t.Fatalf("missing store: got %v, want a refusal that points to init-store", err)
	}
	if _, statErr := os.Stat(missing); statErr == nil {
		t.Fatal("a missing store was created silently")
	}
	corrupt := filepath.Join(dir, "corrupt.db")
	if err := os.WriteFile(corrupt, []byte(strings.Repeat("not a bbolt file ", 1000)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err = broker.NewApp(context.Background(), cfg(corrupt), broker.AppOptions{Source: src})
	if !errors.Is(err, lease.ErrStoreCorrupt) {
		t.Fatalf("corrupt store: got %v, want ErrStoreCorrupt", err)
	}
}

func TestDeregisterWorkload(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.adminClient(adminID)
	resp, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := login(ctx, resp.GetCredential().GetDsn())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)

	d, err := admin.DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: ordersID.String()})
	if err != nil || d.GetRevoked() != 1 {
		t.Fatalf("deregister: %v %v", d, err)
	}
	if e.userExists(resp.GetCredential().GetUsername()) {
		t.Fatal("user survived deregistration")
	}
	if conn.Ping(ctx) == nil {
		t.Fatal("session survived deregistration")
	}
	// Its SVID is still valid, but it gets nothing until registered again.
	_, err = e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	wantCode(t, err, codes.PermissionDenied)
	// Other workloads are unaffected.
	other, err := e.creds(otherID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("other workload: %v", err)
	}
	r, err := admin.RegisterWorkload(ctx, &pb.RegisterWorkloadRequest{SpiffeId: ordersID.String()})
	if err != nil || !r.GetWasDeregistered() {
		t.Fatalf("register: %v %v", r, err)
	}
	again, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("issue after registering again: %v", err)
	}
	for _, id := range []string{other.GetLease().GetId(), again.GetLease().GetId()} {
		if _, err := admin.RevokeLeases(ctx, &pb.RevokeLeasesRequest{LeaseIdPrefix: id}); err != nil {
			t.Fatal(err)
		}
	}
	_, err = e.adminClient(ordersID).RegisterWorkload(ctx, &pb.RegisterWorkloadRequest{SpiffeId: ordersID.String()})
	wantCode(t, err, codes.PermissionDenied)
}

func TestOrphanReconciler(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.adminClient(adminID)
	live, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatal(err)
	}
	// Three users that look like the broker's: one orphan with this
	// instance's marker, one marked by another instance, one unmarked.
	mk := func(suffix, comment string) string {
		name := fmt.Sprintf("%s_reader_%s", e.prefix, suffix)
		q := "CREATE ROLE " + pgx.Identifier{name}.Sanitize()
		if _, err := e.admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
		if comment != "" {
			if _, err := e.admin.Exec(ctx, "COMMENT ON ROLE "+pgx.Identifier{name}.Sanitize()+" IS '"+comment+"'"); err != nil {
				t.Fatal(err)
			}
		}
		return name
	}
	orphan := mk("aaaaaaaaaaaaaaaaaaaaaaaaaa", "credbroker:default")
	foreign := mk("bbbbbbbbbbbbbbbbbbbbbbbbbb", "credbroker:other-instance")
	unmarked := mk("cccccccccccccccccccccccccc", "")
	t.Cleanup(func() {
		for _, n := range []string{foreign, unmarked, orphan} {
			_, _ = e.admin.Exec(context.Background(), "DROP ROLE IF EXISTS "+pgx.Identifier{n}.Sanitize())
		}
	})

	rep, err := admin.ListOrphans(ctx, &pb.ListOrphansRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var main *pb.DatabaseOrphans
	for _, d := range rep.GetDatabases() {
		if d.GetDatabase() == "main" {
			main = d
		}
		if d.GetDatabase() == "down" && d.GetError() == "" {
			t.Error("an unreachable database reported no error")
		}
	}
	if main == nil || len(main.GetUsernames()) != 1 || main.GetUsernames()[0] != orphan {
		t.Fatalf("orphans of main: %v, want only %s", main, orphan)
	}
	if !e.userExists(orphan) {
		t.Fatal("the dry run dropped something")
	}
	_, err = e.adminClient(ordersID).ListOrphans(ctx, &pb.ListOrphansRequest{})
	wantCode(t, err, codes.PermissionDenied)

	if n := e.app.Reconcile(ctx); n != 1 {
		t.Fatalf("reconcile dropped %d users, want 1", n)
	}
	if e.userExists(orphan) || !e.userExists(foreign) || !e.userExists(unmarked) || !e.userExists(live.GetCredential().GetUsername()) {
		t.Fatal("the reconciler dropped the wrong users")
	}
	if _, err := e.creds(ordersID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: live.GetLease().GetId()}); err != nil {
		t.Fatal(err)
	}
	// The foreign and unmarked roles are not the broker's: drop them here so
	// the env's leftover check sees only what the broker made.
	for _, n := range []string{foreign, unmarked} {
		if _, err := e.admin.Exec(ctx, "DROP ROLE "+pgx.Identifier{n}.Sanitize()); err != nil {
			t.Fatal(err)
		}
	}
}

// 50 concurrent RevokeLease calls racing the expiry loop on one lease: one
// effective drop, every caller OK or NOT_FOUND.
func TestConcurrentRevokesAndExpiry(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.creds(ordersID)
	resp, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "shortlived", Ttl: durationpb.New(time.Second)})
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetLease().GetId()
	time.Sleep(time.Until(resp.GetLease().GetExpireTime().AsTime()))
	var wg sync.WaitGroup
	var ok, notFound atomic.Int32
	for range 50 {
		wg.Go(func() {
			_, err := c.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: id})
			switch code := statusCode(err); code {
			case codes.OK:
				ok.Add(1)
			case codes.NotFound:
				notFound.Add(1)
			default:
				t.Errorf("revoke returned %s: %v", code, err)
			}
		})
	}
	wg.Wait()
	t.Logf("%d callers got OK, %d NOT_FOUND", ok.Load(), notFound.Load())
	if e.userExists(resp.GetCredential().GetUsername()) {
		t.Fatal("user survived")
	}
	if drops := strings.Count(e.log.String(), `"lease_id":"`+id+`"`); drops == 0 {
		t.Fatal("no log of the revocation")
	}
	if n := strings.Count(e.log.String(), `"msg":"lease: revoked"`) + strings.Count(e.log.String(), `"msg":"lease: expired"`); n != 1 {
		t.Fatalf("%d effective revocations logged, want exactly 1", n)
	}
}

// Renew racing revoke never resurrects a lease.
func TestRenewRacingRevoke(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.creds(ordersID)
	for range 10 {
		resp, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
		if err != nil {
			t.Fatal(err)
		}
		id := resp.GetLease().GetId()
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				if i%2 == 0 {
					_, _ = c.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: id})
				} else {
					_, _ = c.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: id})
				}
			})
		}
		wg.Wait()
		if e.userExists(resp.GetCredential().GetUsername()) {
			t.Fatal("user exists after revoke raced renew")
		}
		if _, err := c.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: id}); statusCode(err) != codes.NotFound {
			t.Fatalf("renew after revoke: %v", err)
		}
	}
}
