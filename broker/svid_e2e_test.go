package broker_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// oneSVID is a Source serving one SVID and the test CA's bundle.
type oneSVID struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (s oneSVID) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

func (s oneSVID) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle.GetX509BundleForTrustDomain(td)
}

// countedConn dials the broker as id with an SVID valid for ttl from now
// and counts the TLS handshakes of the client connection: each new
// connection is a new handshake.
func (e *env) countedConn(id spiffeid.ID, ttl time.Duration) (*grpc.ClientConn, *x509svid.SVID, *atomic.Int32) {
	e.t.Helper()
	certPEM, keyPEM, err := e.ca.IssueSVID(id, identity.SVIDOptions{TTL: ttl})
	if err != nil {
		e.t.Fatal(err)
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		e.t.Fatal(err)
	}
	cfg := identity.ClientTLSConfig(oneSVID{svid: svid, bundle: e.ca.Bundle()}, serverID)
	handshakes := &atomic.Int32{}
	cfg.VerifyConnection = func(tls.ConnectionState) error {
		handshakes.Add(1)
		return nil
	}
	cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() { cc.Close() })
	return cc, svid, handshakes
}

// shiftedClock is the broker's injected clock: the wall clock plus an
// offset the test moves forward.
type shiftedClock struct{ off atomic.Int64 }

func (c *shiftedClock) Now() time.Time              { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *shiftedClock) advance(d time.Duration)     { c.off.Add(int64(d)) }
func (c *shiftedClock) option(o *broker.AppOptions) { o.Now = c.Now }

// TestSVIDExpiresOnOpenConnection: a connection opened with a valid SVID
// serves nothing once the SVID has expired, on the broker's injected
// clock or in real time: unary and stream calls on the same connection
// are UNAUTHENTICATED, each refusal is in the audit log with the caller,
// and nothing is issued.
func TestSVIDExpiresOnOpenConnection(t *testing.T) {
	clk := &shiftedClock{}
	file := filepath.Join(t.TempDir(), "audit.log")
	e := newEnvWith(t, envExtra{top: fmt.Sprintf("audit: {file: %s}", file)}, clk.option)
	ctx := context.Background()

	refusedAfter := func(t *testing.T, cc *grpc.ClientConn, handshakes *atomic.Int32) {
		t.Helper()
		_, err := pb.NewCredentialServiceClient(cc).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
		wantCode(t, err, codes.Unauthenticated)
		if !strings.Contains(err.Error(), "expired") {
			t.Errorf("refusal does not say the SVID expired: %v", err)
		}
		_, err = pb.NewCredentialServiceClient(cc).ListLeases(ctx, &pb.ListLeasesRequest{})
		wantCode(t, err, codes.Unauthenticated)
		// A stream (health Watch) goes through StreamAuth.
		w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
		if err == nil {
			_, err = w.Recv()
		}
		wantCode(t, err, codes.Unauthenticated)
		if n := handshakes.Load(); n != 1 {
			t.Errorf("%d handshakes, want the calls on the one connection", n)
		}
	}

	t.Run("injected clock", func(t *testing.T) {
		cc, _, handshakes := e.countedConn(ordersID, time.Hour)
		if _, err := pb.NewCredentialServiceClient(cc).ListLeases(ctx, &pb.ListLeasesRequest{}); err != nil {
			t.Fatalf("call with a valid SVID: %v", err)
		}
		clk.advance(time.Hour + time.Minute)
		defer clk.advance(-(time.Hour + time.Minute))
		refusedAfter(t, cc, handshakes)
	})

	t.Run("real time", func(t *testing.T) {
		cc, svid, handshakes := e.countedConn(ordersID, 2*time.Second)
		if _, err := pb.NewCredentialServiceClient(cc).ListLeases(ctx, &pb.ListLeasesRequest{}); err != nil {
			t.Fatalf("call with a valid SVID: %v", err)
		}
		time.Sleep(time.Until(svid.Certificates[0].NotAfter) + 1100*time.Millisecond)
		refusedAfter(t, cc, handshakes)
	})

	if n := e.countUsers(); n != 0 {
		t.Fatalf("%d users issued to an expired SVID", n)
	}
	if ls, err := e.app.Manager().List(ctx, lease.Query{}); err != nil || len(ls) != 0 {
		t.Fatalf("leases after refused calls: %v %v", ls, err)
	}
	var refused []audit.Record
	for _, r := range readAudit(t, file) {
		if r.Event == audit.EventRefused {
			refused = append(refused, r)
		}
	}
	if len(refused) != 6 {
		t.Fatalf("%d refused records, want 6 (3 calls × 2): %+v", len(refused), refused)
	}
	for _, r := range refused {
		if r.Caller != ordersID.String() || r.Result != "UNAUTHENTICATED" || !strings.Contains(r.Reason, "expired at") {
			t.Errorf("refused record = %+v", r)
		}
	}
	if r := refused[0]; r.Role != "reader" || !strings.HasPrefix(r.Reason, "/credbroker.v1.CredentialService/IssueCredential: ") {
		t.Errorf("refused IssueCredential record = %+v", r)
	}
}

// TestMaxConnectionAge: the server ends every connection after
// server.max_connection_age with a GOAWAY; the client reconnects by
// itself, which is a new TLS handshake presenting the SVID again, and its
// calls keep working.
func TestMaxConnectionAge(t *testing.T) {
	e := newEnvWith(t, envExtra{top: "server: {max_connection_age: 300ms, max_connection_age_grace: 200ms}"})
	ctx := context.Background()
	cc, _, handshakes := e.countedConn(ordersID, time.Hour)
	client := pb.NewCredentialServiceClient(cc)
	if _, err := client.ListLeases(ctx, &pb.ListLeasesRequest{}); err != nil {
		t.Fatal(err)
	}
	if n := handshakes.Load(); n != 1 {
		t.Fatalf("%d handshakes after the first call", n)
	}
	// Calls keep succeeding across several connection ages.
	var errs []error
	deadline := time.Now().Add(1500 * time.Millisecond)
	for time.Now().Before(deadline) {
		if _, err := client.ListLeases(ctx, &pb.ListLeasesRequest{}); err != nil {
			errs = append(errs, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if len(errs) > 0 {
		t.Fatalf("calls failed across connection ages: %v", errs)
	}
	if n := handshakes.Load(); n < 3 {
		t.Fatalf("%d handshakes in 1.5s with max_connection_age 300ms, want a new connection after each GOAWAY", n)
	}
	t.Logf("%d handshakes", handshakes.Load())
}

// TestSVIDExpiresDuringStream: a stream opened with a valid SVID ends
// UNAUTHENTICATED when the SVID expires (the stream's context ends then),
// not when its connection is recycled, and is recorded as refused.
func TestSVIDExpiresDuringStream(t *testing.T) {
	file := filepath.Join(t.TempDir(), "audit.log")
	e := newEnvWith(t, envExtra{top: fmt.Sprintf("audit: {file: %s}", file)})
	ctx := context.Background()
	cc, svid, _ := e.countedConn(ordersID, 2*time.Second)
	w, err := healthpb.NewHealthClient(cc).Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if h, err := w.Recv(); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("first watch answer: %v %v", h, err)
	}
	notAfter := svid.Certificates[0].NotAfter
	_, err = w.Recv()
	wantCode(t, err, codes.Unauthenticated)
	if late := time.Since(notAfter); late < 0 || late > 2*time.Second {
		t.Fatalf("stream ended %s after the SVID's expiry", late)
	}
	var found bool
	for _, r := range readAudit(t, file) {
		if r.Event == audit.EventRefused && r.Caller == ordersID.String() && strings.Contains(r.Reason, "/grpc.health.v1.Health/Watch: ") && strings.Contains(r.Reason, "during the stream") {
			found = true
		}
	}
	if !found {
		t.Fatal("no refused record for the stream")
	}
}
