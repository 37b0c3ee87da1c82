package broker_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/internal/brokertest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// watchRoles is a role for streams: a 2s ttl and a 6s max_ttl, so that a
// stream renews every second or so and rotates every three.
const watchRoles = `
  watched:
    database: main
    default_ttl: 2s
    max_ttl: 6s
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};
`

func newWatchEnv(t *testing.T, grace string, more string) *env {
	return newEnvWith(t, envExtra{
		roles: watchRoles,
		top:   fmt.Sprintf("watch: {overlap: 2s, disconnect_grace: %s}\n%s", grace, more),
	})
}

// streamEnd reads a stream until it ends, each message within timeout,
// and returns the status it ended with. Renewals may come first; a second
// ISSUED fails the test.
func streamEnd(t *testing.T, s pb.CredentialService_WatchCredentialClient, timeout time.Duration) error {
	t.Helper()
	for {
		m, err := recv(t, s, timeout)
		if err != nil {
			return err
		}
		if m.GetEvent() == pb.WatchCredentialResponse_ISSUED {
			t.Fatal("a second ISSUED")
		}
	}
}

// recv receives the next message of a stream within timeout.
func recv(t *testing.T, s pb.CredentialService_WatchCredentialClient, timeout time.Duration) (*pb.WatchCredentialResponse, error) {
	t.Helper()
	type res struct {
		m   *pb.WatchCredentialResponse
		err error
	}
	ch := make(chan res, 1)
	go func() {
		m, err := s.Recv()
		ch <- res{m, err}
	}()
	select {
	case r := <-ch:
		return r.m, r.err
	case <-time.After(timeout):
		t.Fatalf("no message from the stream within %s", timeout)
		return nil, nil
	}
}

func (e *env) canLogin(dsn string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := login(ctx, dsn)
	if err != nil {
		return err
	}
	defer c.Close(ctx)
	var one int
	return c.QueryRow(ctx, "SELECT 1").Scan(&one)
}

// TestWatchCredentialRenewsRotatesAndRevokesAfterGrace: a stream gets a
// credential, sees it renewed at a 2s ttl, gets the next one before the
// first reaches its max expiry (both log in during the overlap, the old
// user is dropped after it), twice; when the client goes away, every user
// of the stream is dropped after the grace period. The audit log and the
// metrics show every issue, renewal and revocation.
func TestWatchCredentialRenewsRotatesAndRevokesAfterGrace(t *testing.T) {
	auditFile := filepath.Join(t.TempDir(), "audit.log")
	e := newWatchEnv(t, "1s", fmt.Sprintf("audit: {file: %s}\nmetrics: {listen: 127.0.0.1:0}", auditFile))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := e.creds(ordersID).WatchCredential(ctx, &pb.WatchCredentialRequest{Role: "watched"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := recv(t, s, 20*time.Second)
	if err != nil {
		t.Fatalf("first message: %v", err)
	}
	if m.GetEvent() != pb.WatchCredentialResponse_ISSUED || m.GetCredential().GetPassword() == "" {
		t.Fatalf("first message: event %s, credential set %t; want ISSUED with a credential", m.GetEvent(), m.GetCredential() != nil)
	}
	if err := e.canLogin(m.GetCredential().GetDsn()); err != nil {
		t.Fatalf("login with the issued credential: %v", err)
	}
	cur := m
	var passwords []string
	renewed := 0
	for rotation := 1; rotation <= 2; rotation++ {
		renewals := 0
		for {
			m, err = recv(t, s, 20*time.Second)
			if err != nil {
				t.Fatalf("rotation %d: stream ended: %v", rotation, err)
			}
			if m.GetEvent() == pb.WatchCredentialResponse_RENEWED {
				if m.GetLease().GetId() != cur.GetLease().GetId() {
					t.Fatalf("RENEWED names lease %s, want the current %s", m.GetLease().GetId(), cur.GetLease().GetId())
				}
				if !m.GetLease().GetExpireTime().AsTime().After(cur.GetLease().GetExpireTime().AsTime()) {
					t.Fatal("RENEWED did not move the expiry")
				}
				if m.GetCredential() != nil {
					t.Fatal("RENEWED carries a credential")
				}
				cur.Lease = m.GetLease()
				renewals++
				renewed++
				continue
			}
			break
		}
		if m.GetEvent() != pb.WatchCredentialResponse_ROTATED {
			t.Fatalf("rotation %d: event %s, want ROTATED", rotation, m.GetEvent())
		}
		if renewals == 0 {
			t.Errorf("rotation %d: no RENEWED before it (ttl 2s, max_ttl 6s)", rotation)
		}
		prev := m.GetPreviousLease()
		if prev.GetId() != cur.GetLease().GetId() {
			t.Fatalf("ROTATED previous_lease %s, want %s", prev.GetId(), cur.GetLease().GetId())
		}
		if now := time.Now(); !now.Before(cur.GetLease().GetMaxExpireTime().AsTime()) {
			t.Fatalf("rotated at %s, after the old lease's max expiry %s", now, cur.GetLease().GetMaxExpireTime().AsTime())
		}
		if m.GetLease().GetId() == prev.GetId() || m.GetCredential().GetUsername() == cur.GetCredential().GetUsername() {
			t.Fatal("ROTATED did not bring a new lease and user")
		}
		// Both log in during the overlap.
		if err := e.canLogin(m.GetCredential().GetDsn()); err != nil {
			t.Fatalf("rotation %d: login with the new credential: %v", rotation, err)
		}
		if err := e.canLogin(cur.GetCredential().GetDsn()); err != nil {
			t.Fatalf("rotation %d: login with the previous credential during the overlap: %v", rotation, err)
		}
		old := cur.GetCredential().GetUsername()
		brokertest.WaitFor(t, 15*time.Second, "the previous user dropped after the overlap", func() bool { return !e.userExists(old) })
		if d := time.Until(prev.GetExpireTime().AsTime()); d > 500*time.Millisecond {
			t.Errorf("previous user gone %s before the announced end of the overlap", d)
		}
		e.assertNoSecret(m.GetCredential().GetPassword())
		passwords = append(passwords, cur.GetCredential().GetPassword())
		cur = m
	}
	cancel() // the client goes away
	brokertest.WaitFor(t, 15*time.Second, "the stream's users dropped after the grace period", func() bool { return e.countUsers() == 0 })
	leases, err := e.adminClient(adminID).ListLeases(context.Background(), &pb.AdminListLeasesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if n := len(leases.GetLeases()); n != 0 {
		t.Fatalf("%d leases left after the grace period", n)
	}
	passwords = append(passwords, cur.GetCredential().GetPassword())

	// 3 issued; every renewal; 3 revoked by the stream (two overlaps ended,
	// the last lease after the grace period), as its owner.
	count := map[audit.Event]int{}
	raw, err := os.ReadFile(auditFile)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range readAudit(t, auditFile) {
		if r.Role != "watched" {
			continue
		}
		count[r.Event]++
		if r.Event == audit.EventRevoke && (r.By != audit.ByOwner || r.Caller != ordersID.String()) {
			t.Errorf("revoke record by %q caller %q, want by owner %s", r.By, r.Caller, ordersID)
		}
	}
	// The stream may renew once more after the last message read. The
	// last lease is revoked after the grace period or, if its 2s ttl runs
	// out first (no more renewals once the client is gone), expires.
	ended := count[audit.EventRevoke] + count[audit.EventExpire]
	if count[audit.EventIssue] != 3 || count[audit.EventRenew] < renewed || count[audit.EventRevoke] < 2 || ended != 3 || len(count) > 4 {
		t.Errorf("audit records: %v; want 3 issue, at least %d renew, 3 revoke or expire (2 revoke at least) and nothing else", count, renewed)
	}
	metrics := e.scrape()
	for series, want := range map[string]float64{
		`credbroker_leases_issued_total{database="main",outcome="ok",role="watched"}`:    3,
		`credbroker_leases_renewed_total{database="main",outcome="ok",role="watched"}`:   float64(count[audit.EventRenew]),
		`credbroker_leases_revoked_total{database="main",reason="owner",role="watched"}`: float64(count[audit.EventRevoke]),
	} {
		if got := sample(metrics, series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	for _, pw := range passwords {
		if strings.Contains(string(raw), pw) || strings.Contains(metrics, pw) {
			t.Fatal("a password is in the audit log or the metrics")
		}
		e.assertNoSecret(pw)
	}
}

// TestWatchCredentialDisconnectGrace: a client that goes away has its
// stream's user dropped after the grace period (1s), long before its lease
// (1m) would expire.
func TestWatchCredentialDisconnectGrace(t *testing.T) {
	e := newWatchEnv(t, "1s", "")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	s, err := e.creds(ordersID).WatchCredential(ctx, &pb.WatchCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatal(err)
	}
	m, err := recv(t, s, 20*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	user := m.GetCredential().GetUsername()
	cancel()
	gone := time.Now()
	time.Sleep(500 * time.Millisecond)
	if !e.userExists(user) {
		t.Fatal("user dropped before the grace period")
	}
	brokertest.WaitFor(t, 15*time.Second, "the user dropped after the grace period", func() bool { return !e.userExists(user) })
	if d := time.Since(gone); d < 900*time.Millisecond || d > 20*time.Second {
		t.Fatalf("user dropped %s after the client went away, want about 1s", d)
	}
}

// TestWatchCredentialEndings: deregistration ends a stream with
// PERMISSION_DENIED, a revoke of its lease with ABORTED, a bad request with
// INVALID_ARGUMENT and nothing issued, a broker shutdown with UNAVAILABLE.
func TestWatchCredentialEndings(t *testing.T) {
	e := newWatchEnv(t, "0s", "")
	ctx := context.Background()
	open := func(role string, ttl *durationpb.Duration) (pb.CredentialService_WatchCredentialClient, *pb.WatchCredentialResponse) {
		t.Helper()
		s, err := e.creds(ordersID).WatchCredential(ctx, &pb.WatchCredentialRequest{Role: role, Ttl: ttl})
		if err != nil {
			t.Fatal(err)
		}
		m, err := recv(t, s, 20*time.Second)
		if err != nil {
			t.Fatalf("first message: %v", err)
		}
		return s, m
	}
	endsWith := func(s pb.CredentialService_WatchCredentialClient, want codes.Code) {
		t.Helper()
		if err := streamEnd(t, s, 20*time.Second); statusCode(err) != want {
			t.Fatalf("stream ended with %v, want %s", err, want)
		}
	}

	t.Run("bad request", func(t *testing.T) {
		for _, tc := range []struct {
			name string
			role string
			ttl  *durationpb.Duration
			want codes.Code
		}{
			{"empty role", "", nil, codes.InvalidArgument},
			{"negative ttl", "watched", durationpb.New(-time.Second), codes.InvalidArgument},
			{"unknown role", "nope", nil, codes.NotFound},
		} {
			t.Run(tc.name, func(t *testing.T) {
				s, err := e.creds(ordersID).WatchCredential(ctx, &pb.WatchCredentialRequest{Role: tc.role, Ttl: tc.ttl})
				if err != nil {
					t.Fatal(err)
				}
				if _, err := recv(t, s, 10*time.Second); statusCode(err) != tc.want {
					t.Fatalf("got %v, want %s", err, tc.want)
				}
				if n := e.countUsers(); n != 0 {
					t.Fatalf("%d users after a refused stream", n)
				}
			})
		}
	})

	t.Run("revoke", func(t *testing.T) {
		s, m := open("watched", nil)
		if _, err := e.creds(ordersID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: m.GetLease().GetId()}); err != nil {
			t.Fatal(err)
		}
		endsWith(s, codes.Aborted)
		if e.userExists(m.GetCredential().GetUsername()) {
			t.Fatal("revoked user still exists")
		}
	})

	t.Run("admin revoke", func(t *testing.T) {
		s, m := open("watched", nil)
		if _, err := e.adminClient(adminID).RevokeLeases(ctx, &pb.RevokeLeasesRequest{LeaseIdPrefix: m.GetLease().GetId()}); err != nil {
			t.Fatal(err)
		}
		endsWith(s, codes.Aborted)
	})

	t.Run("shutdown", func(t *testing.T) {
		s, m := open("watched", durationpb.New(5*time.Second))
		start := time.Now()
		e.restart()
		endsWith(s, codes.Unavailable)
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("shutdown took %s with a stream open", d)
		}
		// disconnect_grace 0: the lease is left to expire, not revoked.
		l, err := e.creds(ordersID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: m.GetLease().GetId()})
		if err != nil {
			t.Fatalf("the stream's lease after the shutdown: %v (want it kept until its expiry)", err)
		}
		if l.GetLease().GetState() != pb.Lease_REVOKED {
			t.Fatalf("state %s", l.GetLease().GetState())
		}
	})

	t.Run("deregistration", func(t *testing.T) {
		s, m := open("watched", nil)
		r, err := e.adminClient(adminID).DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: ordersID.String()})
		if err != nil {
			t.Fatal(err)
		}
		if r.GetRevoked() != 1 {
			t.Errorf("deregistration revoked %d leases, want 1", r.GetRevoked())
		}
		endsWith(s, codes.PermissionDenied)
		if e.userExists(m.GetCredential().GetUsername()) {
			t.Fatal("deregistered workload's user still exists")
		}
		// And a new stream is refused at once.
		s2, err := e.creds(ordersID).WatchCredential(ctx, &pb.WatchCredentialRequest{Role: "watched"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := recv(t, s2, 10*time.Second); statusCode(err) != codes.PermissionDenied {
			t.Fatalf("new stream of a deregistered workload: %v", err)
		}
	})
}
