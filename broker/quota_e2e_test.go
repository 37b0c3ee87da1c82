package broker_test

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const quotaRoles = `
  limited:
    database: main
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    quota: {max_leases_per_role: 3, max_leases_per_caller: 2}
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};
  throttled:
    database: main
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    quota: {issue_rate_per_caller: 0.5, issue_burst: 2}
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};
`

// revokeAll revokes every lease the broker holds (so that no user outlives
// the test).
func (e *env) revokeAll() {
	e.t.Helper()
	ctx := context.Background()
	ls, err := e.app.Manager().List(ctx, lease.Query{})
	if err != nil {
		e.t.Fatal(err)
	}
	for _, l := range ls {
		if _, err := e.app.Manager().Revoke(ctx, l.ID); err != nil {
			e.t.Errorf("revoke %s: %v", l.ID, err)
		}
	}
}

// TestQuotaConcurrentIssuance: 16 concurrent issuances by two callers of
// a role with max_leases_per_role 3 and max_leases_per_caller 2 on real
// PostgreSQL create exactly 3 users, at most 2 per caller; every other call
// is RESOURCE_EXHAUSTED naming the limit and leaves nothing behind. A
// revoked lease frees its place.
func TestQuotaConcurrentIssuance(t *testing.T) {
	e := newEnvWith(t, envExtra{roles: quotaRoles})
	defer e.revokeAll()
	ctx := context.Background()
	clients := map[spiffeid.ID]pb.CredentialServiceClient{ordersID: e.creds(ordersID), otherID: e.creds(otherID)}

	var calls []caller
	for id, c := range clients {
		for range 8 {
			calls = append(calls, caller{id, c})
		}
	}
	ok, refused := issueAtOnce(calls, "limited")
	if !checkLimited(t, e, ok, refused) {
		t.FailNow()
	}
	if ls, err := e.app.Manager().List(ctx, lease.Query{Role: "limited"}); err != nil || len(ls) != 3 {
		t.Fatalf("leases of the role: %d, %v; want 3", len(ls), err)
	}

	// The role is full: anyone is refused; once one lease is revoked, its
	// owner may issue again.
	var owner spiffeid.ID
	for id, ids := range ok {
		if len(ids) > 0 {
			owner = id
		}
	}
	if _, err := clients[owner].IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "limited"}); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("issuance into a full role: %v", err)
	}
	if _, err := clients[owner].RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: ok[owner][0]}); err != nil {
		t.Fatal(err)
	}
	if _, err := clients[owner].IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "limited"}); err != nil {
		t.Fatalf("issuance after a revocation freed a place: %v", err)
	}
	if n := e.countUsers(); n != 3 {
		t.Fatalf("%d users on PostgreSQL, want 3", n)
	}
}

// TestQuotaIssueRate: issue_rate_per_caller 0.5/s with burst 2 lets one
// caller have two credentials at once, then refuses it (RESOURCE_EXHAUSTED
// naming the limit and when to retry) but not another caller, and lets it
// again once the broker's clock has moved on.
func TestQuotaIssueRate(t *testing.T) {
	clk := &shiftedClock{}
	e := newEnvWith(t, envExtra{roles: quotaRoles}, clk.option)
	defer e.revokeAll()
	ctx := context.Background()
	orders, other := e.creds(ordersID), e.creds(otherID)
	issue := func(c pb.CredentialServiceClient) error {
		_, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "throttled"})
		return err
	}
	for i := range 2 {
		if err := issue(orders); err != nil {
			t.Fatalf("issuance %d within the burst: %v", i+1, err)
		}
	}
	err := issue(orders)
	if status.Code(err) != codes.ResourceExhausted || !strings.Contains(err.Error(), `role "throttled": issue_rate_per_caller (0.5/s, burst 2) exceeded for this caller: retry in`) {
		t.Fatalf("third issuance: %v, want RESOURCE_EXHAUSTED naming issue_rate_per_caller", err)
	}
	if err := issue(other); err != nil {
		t.Fatalf("another caller is limited by the first one's rate: %v", err)
	}
	clk.advance(2 * time.Second)
	if err := issue(orders); err != nil {
		t.Fatalf("issuance after one token refilled: %v", err)
	}
	if n := e.countUsers(); n != 4 {
		t.Fatalf("%d users, want 4 (the refused issuance created none)", n)
	}

	// ListRoles shows the quotas.
	roles, err := e.adminClient(adminID).ListRoles(ctx, &pb.ListRolesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*pb.Quota{}
	for _, r := range roles.GetRoles() {
		got[r.GetName()] = r.GetQuota()
	}
	if q := got["limited"]; q.GetMaxLeasesPerRole() != 3 || q.GetMaxLeasesPerCaller() != 2 || q.GetIssueRatePerCaller() != 0 || q.GetIssueBurst() != 0 {
		t.Errorf("limited quota = %v", q)
	}
	if q := got["throttled"]; q.GetMaxLeasesPerRole() != 0 || q.GetIssueRatePerCaller() != 0.5 || q.GetIssueBurst() != 2 {
		t.Errorf("throttled quota = %v", q)
	}
	if q := got["reader"]; q.GetMaxLeasesPerRole() != 0 || q.GetIssueRatePerCaller() != 0 {
		t.Errorf("reader quota = %v, want none", q)
	}
}

// TestQuotaAcrossReplicas: three replicas on one PostgreSQL lease store,
// 24 concurrent issuances of the role with max_leases_per_role 3 and
// max_leases_per_caller 2 (two callers, four calls each on each replica):
// exactly 3 users are created, at most 2 per caller, as on one broker. The
// store counts the caps with the CREATING record
// (lease.SharedStore.CreateWithin), where every replica's issuances count;
// a replica's own count of its issuances in flight would also refuse
// callers for issuances the store then refused (fewer than 3 users).
func TestQuotaAcrossReplicas(t *testing.T) {
	storeYAML, _, _ := pgLeaseStore(t)
	a := newEnvWith(t, envExtra{roles: quotaRoles, leaseStore: storeYAML})
	defer a.revokeAll()
	replicas := []*env{a, a.replica(), a.replica()}

	var calls []caller
	for _, r := range replicas {
		for _, id := range []spiffeid.ID{ordersID, otherID} {
			c := r.creds(id)
			for range 4 {
				calls = append(calls, caller{id, c})
			}
		}
	}
	ok, refused := issueAtOnce(calls, "limited")
	checkLimited(t, a, ok, refused)
}

// caller is one workload's client.
type caller struct {
	id spiffeid.ID
	c  pb.CredentialServiceClient
}

// issueAtOnce has every one of calls issue role at the same moment. It
// returns the leases issued, by caller, and the refusals.
func issueAtOnce(calls []caller, role string) (map[spiffeid.ID][]string, []error) {
	ctx := context.Background()
	var (
		mu      sync.Mutex
		ok      = map[spiffeid.ID][]string{}
		refused []error
		wg      sync.WaitGroup
	)
	start := make(chan struct{})
	for _, cl := range calls {
		wg.Go(func() {
			<-start
			resp, err := cl.c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: role})
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				refused = append(refused, err)
				return
			}
			ok[cl.id] = append(ok[cl.id], resp.GetLease().GetId())
		})
	}
	close(start)
	wg.Wait()
	return ok, refused
}

// checkLimited checks what a burst of issuances of the "limited" role
// (max_leases_per_role 3, max_leases_per_caller 2) left: exactly 3 leases,
// at most 2 per caller, every other call RESOURCE_EXHAUSTED naming the
// limit, and 3 users on PostgreSQL. It reports whether all held.
func checkLimited(t *testing.T, e *env, ok map[spiffeid.ID][]string, refused []error) bool {
	t.Helper()
	good := true
	if n := len(ok[ordersID]) + len(ok[otherID]); n != 3 {
		t.Errorf("%d issuances succeeded (%d + %d), want max_leases_per_role 3; refusals: %s", n, len(ok[ordersID]), len(ok[otherID]), tally(refused))
		good = false
	}
	for id, ids := range ok {
		if len(ids) > 2 {
			t.Errorf("%s got %d leases, max_leases_per_caller is 2", id, len(ids))
			good = false
		}
	}
	for _, err := range refused {
		msg := status.Convert(err).Message()
		if status.Code(err) != codes.ResourceExhausted ||
			(!strings.Contains(msg, `role "limited": max_leases_per_role (3) reached`) && !strings.Contains(msg, `role "limited": max_leases_per_caller (2) reached`)) {
			t.Errorf("refusal %v, want RESOURCE_EXHAUSTED naming the limit", err)
			good = false
		}
	}
	if n := e.countUsers(); n != 3 {
		t.Errorf("%d users on PostgreSQL, want 3", n)
		good = false
	}
	return good
}

// tally summarizes errs as "N × code: message" lines, one per distinct
// error, so a failure's refusals stay readable.
func tally(errs []error) string {
	counts := map[string]int{}
	for _, err := range errs {
		st := status.Convert(err)
		counts[st.Code().String()+": "+st.Message()]++
	}
	var lines []string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		lines = append(lines, fmt.Sprintf("%d × %s", counts[k], k))
	}
	return strings.Join(lines, "; ")
}
