package broker_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// newAuditEnv starts a broker whose audit log is a file in a temporary
// directory, with the audit: section's other keys given in more.
func newAuditEnv(t *testing.T, more string) (*env, string) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "audit.log")
	e := newEnvWith(t, envExtra{top: fmt.Sprintf("audit: {file: %s%s}", file, more)})
	return e, file
}

// readAudit returns the records of file, in order.
func readAudit(t *testing.T, file string) []audit.Record {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []audit.Record
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var r audit.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %d: %v", len(out)+1, err)
		}
		out = append(out, r)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// TestAuditScenario: issue ×3, renew, revoke by the owner, an admin's bulk
// revoke, one expiry and one refused call, each recorded in order with
// the right event, by and result; the file verifies, and no password
// issued appears in it.
func TestAuditScenario(t *testing.T) {
	e, file := newAuditEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := e.creds(ordersID)
	var passwords []string
	issue := func(role string, ttl time.Duration) *pb.IssueCredentialResponse {
		t.Helper()
		resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: role, Ttl: durationpb.New(ttl)})
		if err != nil {
			t.Fatalf("issue %s: %v", role, err)
		}
		passwords = append(passwords, resp.GetCredential().GetPassword())
		return resp
	}

	l1 := issue("reader", time.Minute).GetLease()
	l2 := issue("reader", time.Minute).GetLease()
	if _, err := client.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: l1.GetId(), Increment: durationpb.New(2 * time.Minute)}); err != nil {
		t.Fatalf("renew: %v", err)
	}
	if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: l1.GetId()}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	bulk, err := e.adminClient(adminID).RevokeLeases(ctx, &pb.RevokeLeasesRequest{Role: "reader"})
	if err != nil || bulk.GetRevoked() != 1 {
		t.Fatalf("bulk revoke = %v, %v; want 1 revoked", bulk, err)
	}
	l3 := issue("shortlived", time.Second).GetLease()
	brokertest.WaitFor(t, 15*time.Second, "the expiry record", func() bool {
		b, _ := os.ReadFile(file)
		return strings.Contains(string(b), `"event":"expire"`)
	})
	billing := spiffeid.RequireFromPath(td, "/billing/job")
	_, err = e.creds(billing).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("issue by billing: %v, want PERMISSION_DENIED", err)
	}
	e.stop() // closes the writer: its head file is synced
	e.stop = nil

	type want struct {
		event         audit.Event
		caller, lease string
		by            audit.By
		result        string
	}
	orders, admin := ordersID.String(), adminID.String()
	wants := []want{
		{audit.EventConfigLoad, "", "", "", "ok"},
		{audit.EventIssue, orders, l1.GetId(), "", "ok"},
		{audit.EventIssue, orders, l2.GetId(), "", "ok"},
		{audit.EventRenew, orders, l1.GetId(), "", "ok"},
		{audit.EventRevoke, orders, l1.GetId(), audit.ByOwner, "ok"},
		{audit.EventRevoke, admin, l2.GetId(), audit.ByAdmin, "ok"},
		{audit.EventBulkRevoke, admin, "", audit.ByAdmin, "ok"},
		{audit.EventIssue, orders, l3.GetId(), "", "ok"},
		{audit.EventExpire, "", l3.GetId(), audit.ByExpiry, "ok"},
		{audit.EventRefused, billing.String(), "", "", "PERMISSION_DENIED"},
	}
	recs := readAudit(t, file)
	if len(recs) != len(wants) {
		for _, r := range recs {
			t.Logf("%+v", r)
		}
		t.Fatalf("%d records, want %d", len(recs), len(wants))
	}
	for i, w := range wants {
		r := recs[i]
		got := want{r.Event, r.Caller, r.LeaseID, r.By, r.Result}
		if got != w {
			t.Errorf("record %d = %+v, want %+v", i+1, got, w)
		}
		if r.Seq != uint64(i+1) {
			t.Errorf("record %d has seq %d", i+1, r.Seq)
		}
	}
	if r := recs[1]; r.Role != "reader" || r.Database != "main" || !strings.HasPrefix(r.Username, e.prefix+"_") {
		t.Errorf("issue record = %+v, want role reader, database main, a username with prefix %s", r, e.prefix)
	}
	if r := recs[6]; r.Role != "reader" || !strings.HasPrefix(r.Reason, "1 leases revoked") {
		t.Errorf("bulk_revoke record = %+v, want role reader and a count of 1", r)
	}
	if r := recs[9]; r.Role != "reader" || r.Reason != "/credbroker.v1.CredentialService/IssueCredential" {
		t.Errorf("refused record = %+v, want role reader and the method as reason", r)
	}
	if !strings.Contains(recs[0].Reason, "roles") {
		t.Errorf("config_load reason %q", recs[0].Reason)
	}

	rep, err := audit.Verify(file)
	if err != nil {
		t.Fatalf("audit.Verify: %v", err)
	}
	t.Logf("verify: %+v", rep)
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	for i, pw := range passwords {
		if pw == "" || strings.Contains(string(b), pw) {
			t.Fatalf("password %d is empty or appears in the audit file", i+1)
		}
		e.assertNoSecret(pw)
	}
}

// TestAuditFailClosed: once the audit log cannot be written, issuance
// answers UNAVAILABLE and leaves no user and no lease behind.
func TestAuditFailClosed(t *testing.T) {
	e, file := newAuditEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client := e.creds(ordersID)
	resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("issue before the failure: %v", err)
	}
	if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: resp.GetLease().GetId()}); err != nil {
		t.Fatal(err)
	}
	if err := e.app.CloseAuditLog(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		_, err = client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
		if status.Code(err) != codes.Unavailable || status.Convert(err).Message() != "audit log unavailable" {
			t.Fatalf("issue with the audit log closed: %v, want UNAVAILABLE: audit log unavailable", err)
		}
	}
	if n := e.countUsers(); n != 0 {
		t.Fatalf("%d users with prefix %s left after refused issuance", n, e.prefix)
	}
	ls, err := e.app.Manager().List(ctx, lease.Query{})
	if err != nil || len(ls) != 0 {
		t.Fatalf("leases left: %v, %v", ls, err)
	}
	// Only the records written before the failure are in the file, and they
	// verify.
	if _, err := audit.Verify(file); err != nil {
		t.Fatalf("audit.Verify: %v", err)
	}
	if recs := readAudit(t, file); len(recs) != 3 || recs[2].Event != audit.EventRevoke {
		t.Fatalf("records %+v, want config_load, issue, revoke", recs)
	}
}

// TestAuditFailOpen: with fail_closed off, issuance goes on when the audit
// log cannot be written, and the failure is logged.
func TestAuditFailOpen(t *testing.T) {
	e, _ := newAuditEnv(t, ", fail_closed: false")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.app.CloseAuditLog(); err != nil {
		t.Fatal(err)
	}
	client := e.creds(ordersID)
	resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("issue with fail_closed off: %v", err)
	}
	if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: resp.GetLease().GetId()}); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(e.log.String(), "audit: issue record not written") {
		t.Fatal("the failed issue record is not logged")
	}
	e.assertNoSecret(resp.GetCredential().GetPassword())
}

// TestAuditOrphanDrop: the reconciler records each orphan it drops.
func TestAuditOrphanDrop(t *testing.T) {
	e, file := newAuditEnv(t, "")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	orphan := e.prefix + "_reader_aaaaaaaaaaaaaaaaaaaaaaaaaa"
	for _, q := range []string{
		"CREATE ROLE " + pgx.Identifier{orphan}.Sanitize(),
		"COMMENT ON ROLE " + pgx.Identifier{orphan}.Sanitize() + " IS 'credbroker:default'",
	} {
		if _, err := e.admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	if n := e.app.Reconcile(ctx); n != 1 {
		t.Fatalf("reconcile dropped %d users, want 1", n)
	}
	e.stop()
	e.stop = nil
	recs := readAudit(t, file)
	if len(recs) != 2 {
		t.Fatalf("records %+v, want config_load, orphan_drop", recs)
	}
	if r := recs[1]; r.Event != audit.EventOrphanDrop || r.Database != "main" || r.Username != orphan || r.Result != audit.ResultOK {
		t.Fatalf("orphan record = %+v", r)
	}
	if _, err := audit.Verify(file); err != nil {
		t.Fatalf("audit.Verify: %v", err)
	}
}

// TestAuditIssueUndone: the issue record is written while the lease is
// made ACTIVE; when that write of the lease store fails, the credential
// is not returned, the user is dropped, and a revoke record by "issuance"
// follows the issue record for the same lease.
func TestAuditIssueUndone(t *testing.T) {
	file := filepath.Join(t.TempDir(), "audit.log")
	fs := &failingStore{}
	e := newEnvWith(t, envExtra{top: fmt.Sprintf("audit: {file: %s}", file)}, func(o *broker.AppOptions) {
		o.WrapStore = func(s lease.Store) lease.Store {
			fs.capableStore = s.(capableStore)
			return fs
		}
	})
	ctx := context.Background()
	fs.armed.Store(true)
	_, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	wantCode(t, err, codes.Unavailable)
	if n := e.countUsers(); n != 0 {
		t.Fatalf("%d users left after a failed activation", n)
	}
	var issued, undone []audit.Record
	for _, r := range readAudit(t, file) {
		switch {
		case r.Event == audit.EventIssue:
			issued = append(issued, r)
		case r.Event == audit.EventRevoke && r.By == audit.ByIssuance:
			undone = append(undone, r)
		}
	}
	if len(issued) != 1 || len(undone) != 1 {
		t.Fatalf("records: %d issue, %d revoke by issuance; want 1 and 1", len(issued), len(undone))
	}
	if issued[0].LeaseID != undone[0].LeaseID || undone[0].Seq <= issued[0].Seq || undone[0].Result != "UNAVAILABLE" {
		t.Errorf("issue record %+v, then %+v: want the same lease, later, result UNAVAILABLE", issued[0], undone[0])
	}
	if _, err := audit.Verify(file); err != nil {
		t.Errorf("verify: %v", err)
	}
}
