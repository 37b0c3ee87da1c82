package broker

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/identity"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestCodeName(t *testing.T) {
	for c, want := range map[codes.Code]string{
		codes.OK:                 "OK",
		codes.PermissionDenied:   "PERMISSION_DENIED",
		codes.Unauthenticated:    "UNAUTHENTICATED",
		codes.Unavailable:        "UNAVAILABLE",
		codes.DeadlineExceeded:   "DEADLINE_EXCEEDED",
		codes.FailedPrecondition: "FAILED_PRECONDITION",
	} {
		if got := codeName(c); got != want {
			t.Errorf("codeName(%v) = %q, want %q", c, got, want)
		}
	}
}

func TestClip(t *testing.T) {
	cases := []struct {
		name string
		in   string
	}{
		{"short", "a reason"},
		{"ascii", strings.Repeat("x", 3000)},
		{"multibyte", strings.Repeat("é", 1000)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := clip(tc.in)
			if len(got) > maxReason || !utf8.ValidString(got) {
				t.Fatalf("clip: %d bytes, valid UTF-8 %v", len(got), utf8.ValidString(got))
			}
			if len(tc.in) <= maxReason && got != tc.in {
				t.Fatalf("clip changed a short reason: %q", got)
			}
		})
	}
}

// recordSink is a recordWriter that keeps the records.
type recordSink struct {
	mu   sync.Mutex
	recs []audit.Record
}

func (s *recordSink) Write(_ context.Context, r audit.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, r)
	return nil
}

func (s *recordSink) WriteAll(_ context.Context, rs []audit.Record) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.recs = append(s.recs, rs...)
	return nil
}

// summary is what a test compares of a record.
type summary struct {
	Event  audit.Event
	Caller string
	By     audit.By
	Result string
}

func (s *recordSink) summaries() []summary {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []summary
	for _, r := range s.recs {
		out = append(out, summary{r.Event, r.Caller, r.By, r.Result})
	}
	return out
}

// TestAuditRegistryAndAdmin: the SPIRE sweep, a deregistration, a
// registration and an unauthenticated call each leave their records.
func TestAuditRegistryAndAdmin(t *testing.T) {
	s, sweep, m, _, now := listServer(t)
	sink := &recordSink{}
	aud := &auditor{w: sink, failClosed: true, log: slog.New(slog.DiscardHandler)}
	s.audit, sweep.audit = aud, aud
	adminID := spiffeid.RequireFromString("spiffe://example.org/ops/admin")
	s.admins = identity.NewAdminSet([]spiffeid.ID{adminID})
	kept, gone := "spiffe://example.org/kept", "spiffe://example.org/gone"
	issueFor(t, m, kept, *now)
	issueFor(t, m, gone, *now)
	issueFor(t, m, gone, *now)

	ctx := context.Background()
	sweep.observe(ctx, *now, map[string]time.Time{kept: *now})
	admin := adminService{Server: s}
	actx := identity.WithCaller(ctx, adminID)
	if _, err := admin.DeregisterWorkload(actx, &pb.DeregisterWorkloadRequest{SpiffeId: kept}); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.RegisterWorkload(actx, &pb.RegisterWorkloadRequest{SpiffeId: kept}); err != nil {
		t.Fatal(err)
	}
	info := &grpc.UnaryServerInfo{FullMethod: "/credbroker.v1.CredentialService/IssueCredential"}
	_, err := s.UnaryAuth(ctx, &pb.IssueCredentialRequest{Role: "reader"}, info, func(context.Context, any) (any, error) {
		t.Fatal("handler ran without a caller")
		return nil, nil
	})
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("UnaryAuth without a peer: %v", err)
	}

	a := adminID.String()
	want := []summary{
		{audit.EventRevoke, "", audit.BySPIRE, "ok"},
		{audit.EventRevoke, "", audit.BySPIRE, "ok"},
		{audit.EventRevoke, a, audit.ByDeregistration, "ok"},
		{audit.EventDeregister, a, "", "ok"},
		{audit.EventRegister, a, "", "ok"},
		{audit.EventRefused, "", "", "UNAUTHENTICATED"},
	}
	if got := sink.summaries(); !slices.Equal(got, want) {
		t.Fatalf("records\n got %+v\nwant %+v", got, want)
	}
	sink.mu.Lock()
	defer sink.mu.Unlock()
	if r := sink.recs[0]; r.Reason != "owner "+gone || r.LeaseID == "" || r.Username == "" {
		t.Errorf("spire revoke record = %+v", r)
	}
	if r := sink.recs[3]; !strings.Contains(r.Reason, kept) || !strings.Contains(r.Reason, "1 leases revoked") {
		t.Errorf("deregister record = %+v", r)
	}
	if r := sink.recs[4]; r.Reason != "workload "+kept+" registered (was deregistered: true)" {
		t.Errorf("register record = %+v", r)
	}
	if r := sink.recs[5]; r.Role != "reader" || r.Reason != info.FullMethod {
		t.Errorf("refused record = %+v", r)
	}
}
