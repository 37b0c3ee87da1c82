package broker_test

import (
	"context"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// offsetClock is the real clock moved forward by a settable offset.
type offsetClock struct{ off atomic.Int64 }

func (c *offsetClock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *offsetClock) Advance(d time.Duration) { c.off.Add(int64(d)) }

// Idempotent issuance end to end, real PostgreSQL and mTLS: a retried
// request_id returns the same lease and credential and creates no second
// user (counted in pg_roles); concurrent retries share one issuance; the
// key is per caller; another role, a bad request_id are refused with
// nothing created; after the replay window and after a restart the retry
// gets ALREADY_EXISTS naming the lease, and no user is created; once the
// lease is revoked the request_id issues anew.
func TestIdempotentIssue(t *testing.T) {
	clk := &offsetClock{}
	e := newEnv(t, func(o *broker.AppOptions) { o.Now = clk.Now })
	ctx := context.Background()
	client := e.creds(ordersID)
	req := func(id, role string) *pb.IssueCredentialRequest {
		return &pb.IssueCredentialRequest{Role: role, Ttl: durationpb.New(10 * time.Minute), RequestId: id}
	}

	first, err := client.IssueCredential(ctx, req("req-A", "reader"))
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	again, err := client.IssueCredential(ctx, req("req-A", "reader"))
	if err != nil {
		t.Fatalf("retry: %v", err)
	}
	if again.GetLease().GetId() != first.GetLease().GetId() || again.GetCredential().GetPassword() != first.GetCredential().GetPassword() ||
		again.GetCredential().GetDsn() != first.GetCredential().GetDsn() {
		t.Fatalf("retry returned lease %s, want %s with the same credential", again.GetLease().GetId(), first.GetLease().GetId())
	}
	if n := e.countUsers(); n != 1 {
		t.Fatalf("%d users after a retried request_id, want 1", n)
	}
	conn, err := login(ctx, again.GetCredential().GetDsn())
	if err != nil {
		t.Fatalf("login with the replayed credential: %v", err)
	}
	conn.Close(ctx)

	// Refusals create nothing.
	for _, tc := range []struct {
		name string
		req  *pb.IssueCredentialRequest
		code codes.Code
	}{
		{"another role", req("req-A", "grantor"), codes.FailedPrecondition},
		{"control character", req("req\n1", "reader"), codes.InvalidArgument},
		{"not ASCII", req("réq", "reader"), codes.InvalidArgument},
		{"too long", req(strings.Repeat("x", 129), "reader"), codes.InvalidArgument},
	} {
		_, err := client.IssueCredential(ctx, tc.req)
		if status.Code(err) != tc.code {
			t.Errorf("%s: %v, want %s", tc.name, err, tc.code)
		}
	}
	if n := e.countUsers(); n != 1 {
		t.Fatalf("%d users after refused requests, want 1", n)
	}

	// The key is per caller: another workload's request_id is its own.
	mine, err := e.creds(otherID).IssueCredential(ctx, req("req-A", "reader"))
	if err != nil || mine.GetLease().GetId() == first.GetLease().GetId() {
		t.Fatalf("another caller's req-A: %v, %v", mine.GetLease().GetId(), err)
	}

	// Concurrent calls with one key: one issuance, one answer for all.
	const n = 8
	var wg sync.WaitGroup
	resps := make([]*pb.IssueCredentialResponse, n)
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { resps[i], errs[i] = client.IssueCredential(ctx, req("req-B", "reader")) })
	}
	wg.Wait()
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("concurrent call %d: %v", i, errs[i])
		}
		if resps[i].GetLease().GetId() != resps[0].GetLease().GetId() || resps[i].GetCredential().GetPassword() != resps[0].GetCredential().GetPassword() {
			t.Fatalf("concurrent call %d got lease %s, call 0 %s", i, resps[i].GetLease().GetId(), resps[0].GetLease().GetId())
		}
	}
	if n := e.countUsers(); n != 3 {
		t.Fatalf("%d users after concurrent calls with one request_id, want 3", n)
	}

	// After the replay window the credential is gone from memory: the
	// retry is told the lease exists, and nothing is created.
	clk.Advance(6 * time.Minute)
	_, err = client.IssueCredential(ctx, req("req-B", "reader"))
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(status.Convert(err).Message(), resps[0].GetLease().GetId()) {
		t.Fatalf("retry after the window: %v, want ALREADY_EXISTS naming lease %s", err, resps[0].GetLease().GetId())
	}

	// After a restart: the request id is in the store, the credential is not.
	e.restart()
	_, err = client.IssueCredential(ctx, req("req-A", "reader"))
	if status.Code(err) != codes.AlreadyExists || !strings.Contains(status.Convert(err).Message(), first.GetLease().GetId()) {
		t.Fatalf("retry after a restart: %v, want ALREADY_EXISTS naming lease %s", err, first.GetLease().GetId())
	}
	if n := e.countUsers(); n != 3 {
		t.Fatalf("%d users after retries past the window and the restart, want 3", n)
	}

	// Once its lease is revoked the request_id is free again.
	if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: first.GetLease().GetId()}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	fresh, err := client.IssueCredential(ctx, req("req-A", "reader"))
	if err != nil || fresh.GetLease().GetId() == first.GetLease().GetId() {
		t.Fatalf("req-A after its lease was revoked: %v, %v", fresh.GetLease().GetId(), err)
	}
	if n := e.countUsers(); n != 3 {
		t.Fatalf("%d users, want 3", n)
	}

	for _, r := range []*pb.IssueCredentialResponse{first, mine, resps[0], fresh} {
		e.assertNoSecret(r.GetCredential().GetPassword())
		if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: r.GetLease().GetId()}); err != nil && r != mine && r != first {
			t.Errorf("revoke %s: %v", r.GetLease().GetId(), err)
		}
	}
	if _, err := e.creds(otherID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: mine.GetLease().GetId()}); err != nil {
		t.Errorf("revoke: %v", err)
	}
}

// A credential replayed to a retry is audited: a second issue record for
// the same lease, with its reason; the password is in neither.
func TestIdempotentIssueAudited(t *testing.T) {
	e, file := newAuditEnv(t, "")
	ctx := context.Background()
	client := e.creds(ordersID)
	var leaseID, password string
	for range 2 {
		resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader", RequestId: "audited-1"})
		if err != nil {
			t.Fatalf("issue: %v", err)
		}
		leaseID, password = resp.GetLease().GetId(), resp.GetCredential().GetPassword()
	}
	var issues []string
	for _, r := range readAudit(t, file) {
		if r.Event == "issue" && r.LeaseID == leaseID {
			issues = append(issues, r.Reason)
		}
	}
	if len(issues) != 2 || issues[0] != "" || !strings.Contains(issues[1], "request_id") {
		t.Fatalf("issue records of lease %s: reasons %q, want a first one and a replay", leaseID, issues)
	}
	if b, err := os.ReadFile(file); err != nil || strings.Contains(string(b), password) {
		t.Fatalf("audit log holds the password (or is unreadable: %v)", err)
	}
	if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: leaseID}); err != nil {
		t.Fatal(err)
	}
}
