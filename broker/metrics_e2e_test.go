package broker_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/internal/brokertest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// scrape GETs the broker's /metrics.
func (e *env) scrape() string {
	e.t.Helper()
	addr := e.app.MetricsAddr()
	if addr == nil {
		e.t.Fatal("metrics are off")
	}
	resp, err := http.Get("http://" + addr.String() + "/metrics")
	if err != nil {
		e.t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		e.t.Fatalf("scrape: %s, %v", resp.Status, err)
	}
	return string(b)
}

// sample is the value of series (name{labels} as the text format writes
// it, labels sorted) in a scrape, or -1 if absent.
func sample(text, series string) float64 {
	sc := bufio.NewScanner(strings.NewReader(text))
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return -2
			}
			return f
		}
	}
	return -1
}

// TestMetricsScenario: 3 issued, 2 revoked by their owner, 1 expired, 1
// denied; the scrape shows exactly that and no secret or identity.
func TestMetricsScenario(t *testing.T) {
	e := newEnvWith(t, envExtra{top: "metrics: {listen: 127.0.0.1:0}"})
	ctx := context.Background()
	client := e.creds(ordersID)

	var secrets []string // passwords, usernames, lease ids
	issue := func(role string, ttl time.Duration) *pb.IssueCredentialResponse {
		t.Helper()
		resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: role, Ttl: durationpb.New(ttl)})
		if err != nil {
			t.Fatalf("issue %s: %v", role, err)
		}
		secrets = append(secrets, resp.GetCredential().GetPassword(), resp.GetCredential().GetUsername(), resp.GetLease().GetId())
		return resp
	}
	a := issue("reader", time.Minute)
	b := issue("reader", time.Minute)
	issue("shortlived", time.Second)
	for _, r := range []*pb.IssueCredentialResponse{a, b} {
		if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: r.GetLease().GetId()}); err != nil {
			t.Fatalf("revoke: %v", err)
		}
	}
	_, err := e.creds(evilID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if statusCode(err) != codes.PermissionDenied {
		t.Fatalf("evil issue: %v, want PERMISSION_DENIED", err)
	}
	var text string
	// One scrape is not a snapshot: Prometheus gathers the collectors
	// concurrently, so the gauges read from the lease manager may lag the
	// expiry counter by the moment the lease leaves the manager. Wait until
	// both show the expiry.
	brokertest.WaitFor(t, 15*time.Second, "the shortlived lease to expire", func() bool {
		text = e.scrape()
		return sample(text, `credbroker_leases_revoked_total{database="main",reason="expiry",role="shortlived"}`) == 1 &&
			sample(text, `credbroker_revoking_leases`) == 0
	})

	issueM := pb.CredentialService_IssueCredential_FullMethodName
	revokeM := pb.CredentialService_RevokeLease_FullMethodName
	want := map[string]float64{
		fmt.Sprintf(`credbroker_grpc_requests_total{code="OK",method=%q}`, issueM):                  3,
		fmt.Sprintf(`credbroker_grpc_requests_total{code="PermissionDenied",method=%q}`, issueM):    1,
		fmt.Sprintf(`credbroker_grpc_requests_total{code="OK",method=%q}`, revokeM):                 2,
		fmt.Sprintf(`credbroker_grpc_request_duration_seconds_count{method=%q}`, issueM):            4,
		`credbroker_leases_issued_total{database="main",outcome="ok",role="reader"}`:                2,
		`credbroker_leases_issued_total{database="main",outcome="ok",role="shortlived"}`:            1,
		`credbroker_leases_issued_total{database="main",outcome="PERMISSION_DENIED",role="reader"}`: 1,
		`credbroker_leases_revoked_total{database="main",reason="owner",role="reader"}`:             2,
		`credbroker_leases_revoked_total{database="main",reason="expiry",role="shortlived"}`:        1,
		`credbroker_expiry_lag_seconds_count`:                                                       1,
		`credbroker_leases{state="ACTIVE"}`:                                                         0,
		`credbroker_leases{state="CREATING"}`:                                                       0,
		`credbroker_leases{state="REVOKING"}`:                                                       0,
		`credbroker_revoking_leases`:                                                                0,
		`credbroker_oldest_revoking_age_seconds`:                                                    0,
		`credbroker_revocation_failures_total`:                                                      0,
		`credbroker_plugin_call_duration_seconds_count{database="main",operation="new_user"}`:       3,
		`credbroker_plugin_call_duration_seconds_count{database="main",operation="delete_user"}`:    3,
	}
	// Every lease record write: CREATING and ACTIVE per issuance, REVOKING
	// per revocation (the deletes are writes too).
	if got := sample(text, "credbroker_store_commit_batch_size_sum"); got < 3*2+3*2 {
		t.Errorf("credbroker_store_commit_batch_size_sum = %v, want at least 12 writes", got)
	}
	if got := sample(text, "credbroker_store_commit_errors_total"); got != 0 {
		t.Errorf("credbroker_store_commit_errors_total = %v, want 0", got)
	}
	for series, v := range want {
		if got := sample(text, series); got != v {
			t.Errorf("%s = %v, want %v", series, got, v)
		}
	}
	for _, prefix := range []string{"credbroker_build_info{", "go_goroutines ", "process_cpu_seconds_total "} {
		if !strings.Contains(text, "\n"+prefix) {
			t.Errorf("no %s... in the scrape", prefix)
		}
	}
	if strings.Contains(text, `credbroker_plugin_call_errors_total{database="main"`) {
		t.Error("a plugin call on main failed")
	}
	for _, s := range append(secrets, "spiffe://", ordersID.Path(), evilID.Path(), e.prefix+"_") {
		if s != "" && strings.Contains(text, s) {
			t.Errorf("%q appears in the metrics output", s)
		}
	}
	if resp, err := http.Get("http://" + e.app.MetricsAddr().String() + "/"); err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET / = %s, want 404: the listener serves /metrics only", resp.Status)
		}
	}
}

// TestMetricsOff: without metrics: no listener.
func TestMetricsOff(t *testing.T) {
	e := newEnv(t)
	if addr := e.app.MetricsAddr(); addr != nil {
		t.Fatalf("metrics served on %s without metrics: in the config", addr)
	}
}

// TestMetricsRevocationBacklog: a drop that keeps failing shows in the
// failure counter, the backlog gauge and the oldest-age gauge, which clear
// once the database lets the drop through.
func TestMetricsRevocationBacklog(t *testing.T) {
	e := newEnvWith(t, envExtra{top: "metrics: {listen: 127.0.0.1:0}"})
	ctx := context.Background()
	client := e.creds(ordersID)
	resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "grantor"})
	if err != nil {
		t.Fatal(err)
	}
	// grantor's revocation statement names the table: without it every
	// drop fails.
	renamed := e.table + "_away"
	if _, err := e.admin.Exec(ctx, fmt.Sprintf("ALTER TABLE %s RENAME TO %s", e.table, renamed)); err != nil {
		t.Fatal(err)
	}
	if _, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: resp.GetLease().GetId()}); err == nil {
		t.Fatal("revoke succeeded without the table")
	}
	var text string
	brokertest.WaitFor(t, 10*time.Second, "a retried drop to fail too", func() bool {
		text = e.scrape()
		return sample(text, "credbroker_revocation_failures_total") >= 2 &&
			sample(text, "credbroker_oldest_revoking_age_seconds") > 0
	})
	if got := sample(text, "credbroker_revoking_leases"); got != 1 {
		t.Errorf("credbroker_revoking_leases = %v, want 1", got)
	}
	if got := sample(text, `credbroker_leases{state="REVOKING"}`); got != 1 {
		t.Errorf(`credbroker_leases{state="REVOKING"} = %v, want 1`, got)
	}
	if got := sample(text, `credbroker_plugin_call_errors_total{database="main",operation="delete_user"}`); got < 2 {
		t.Errorf("plugin delete_user errors = %v, want at least 2", got)
	}

	if _, err := e.admin.Exec(ctx, fmt.Sprintf("ALTER TABLE %s RENAME TO %s", renamed, e.table)); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitFor(t, 10*time.Second, "the retried drop to succeed", func() bool {
		text = e.scrape()
		return sample(text, "credbroker_revoking_leases") == 0
	})
	if got := sample(text, "credbroker_oldest_revoking_age_seconds"); got != 0 {
		t.Errorf("credbroker_oldest_revoking_age_seconds = %v after recovery, want 0", got)
	}
	if got := sample(text, `credbroker_leases_by_role{role="grantor"}`); got != -1 && got != 0 {
		t.Errorf("grantor leases = %v after recovery, want none", got)
	}
	if e.userExists(resp.GetCredential().GetUsername()) {
		t.Error("user still exists after recovery")
	}
}
