package broker_test

import (
	"context"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/spiretest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// spireFixture is a SPIRE server and agent with two registration entries:
// the broker's (uid 0, with its DNS name) and the client workload's (user
// nobody); and the broker's SVID source on the agent's Workload API.
type spireFixture struct {
	*spiretest.SPIRE
	clientEntry     string   // the client's entry ID
	clientSelectors []string // its selectors, to register it again
	brokerSrc       identity.Source
}

func startSPIRE(t *testing.T) spireFixture {
	t.Helper()
	sp := spiretest.Start(t, spiretest.Options{TrustDomain: td.Name()})
	sp.CreateEntry(t, serverID.String(), []string{"unix:uid:0"}, true, []string{"localhost"})
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	f := spireFixture{SPIRE: sp, clientSelectors: []string{"unix:uid:" + nobody.Uid}}
	f.clientEntry = sp.CreateEntry(t, ordersID.String(), f.clientSelectors, false, nil)
	wctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := identity.NewWorkloadAPISource(wctx, sp.WorkloadAPIAddr())
	if err != nil {
		t.Fatalf("broker SVID from the Workload API: %v", err)
	}
	t.Cleanup(func() { src.Close() })
	f.brokerSrc = src
	return f
}

// TestSPIREDeregistrationRevokes runs a real SPIRE server and agent. The
// broker's own SVID comes from the agent's Workload API; the client is
// another unix user (nobody) whose SVID the agent issues. Deleting the
// client's registration entry revokes its lease within the poll interval:
// user dropped, open session ended, further issuance refused. Registering it
// again re-admits it. A SPIRE server outage revokes nothing.
func TestSPIREDeregistrationRevokes(t *testing.T) {
	const poll = time.Second
	ctx := context.Background()
	sp := startSPIRE(t)

	e := newEnvWith(t, envExtra{top: fmt.Sprintf(`
metrics: {listen: 127.0.0.1:0}
registry:
  spire_server_address: %s
  spire_server_id: %s
  poll_interval: %s
`, sp.ServerAddr(), sp.ServerID(), poll)}, func(o *broker.AppOptions) { o.Source = sp.brokerSrc })

	// The client workload's SVID, fetched from the agent as user nobody.
	dir := t.TempDir()
	sp.FetchX509(t, "nobody", dir)
	client := spireClient(t, e.addr, dir)

	resp, err := pb.NewCredentialServiceClient(client).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("issue with a SPIRE-issued SVID: %v", err)
	}
	username := resp.GetCredential().GetUsername()
	session, err := login(ctx, resp.GetCredential().GetDsn())
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer session.Close(ctx)

	sp.DeleteEntry(t, sp.clientEntry)
	took := brokertest.WaitFor(t, 3*poll+5*time.Second, "the deregistered workload's user to be dropped", func() bool { return !e.userExists(username) })
	t.Logf("entry deleted → user dropped in %s (poll interval %s)", took.Round(time.Millisecond), poll)
	brokertest.WaitFor(t, 5*time.Second, "the SPIRE revocation in the metrics", func() bool {
		text := e.scrape()
		return sample(text, `credbroker_leases_revoked_total{database="main",reason="spire",role="reader"}`) == 1 &&
			sample(text, "credbroker_registry_healthy") == 1 && sample(text, "credbroker_registry_sync_age_seconds") >= 0
	})
	if session.Ping(ctx) == nil {
		t.Fatal("the workload's open session survived its deregistration")
	}
	// Its SVID is still valid; the broker refuses it anyway.
	_, err = pb.NewCredentialServiceClient(client).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	wantCode(t, err, codes.PermissionDenied)

	// Registered again: issuance works again, as soon as the SPIRE server
	// lists the new entry (an unknown caller triggers a re-listing).
	sp.CreateEntry(t, ordersID.String(), sp.clientSelectors, false, nil)
	var again *pb.IssueCredentialResponse
	took = brokertest.WaitFor(t, 3*poll+5*time.Second, "issuance after registering again", func() bool {
		again, err = pb.NewCredentialServiceClient(client).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
		if err != nil && statusCode(err) != codes.PermissionDenied {
			t.Fatalf("issue after registering again: %v", err)
		}
		return err == nil
	})
	t.Logf("entry created again → issuance allowed after %s", took.Round(time.Millisecond))

	// An outage is not a deregistration.
	health := healthpb.NewHealthClient(client)
	sp.StopServer(t)
	brokertest.WaitFor(t, 5*poll+5*time.Second, "the registry watch to report NOT_SERVING", func() bool {
		h, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: broker.RegistryHealthService})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_NOT_SERVING
	})
	time.Sleep(2 * poll)
	if !e.userExists(again.GetCredential().GetUsername()) {
		t.Fatal("a SPIRE outage revoked a lease")
	}
	if h, err := health.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("broker health during the SPIRE outage: %v %v", h, err)
	}
	sp.StartServer(t)
	brokertest.WaitFor(t, 5*poll+10*time.Second, "the registry watch to recover", func() bool {
		h, err := health.Check(ctx, &healthpb.HealthCheckRequest{Service: broker.RegistryHealthService})
		return err == nil && h.GetStatus() == healthpb.HealthCheckResponse_SERVING
	})
	if _, err := pb.NewCredentialServiceClient(client).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: again.GetLease().GetId()}); err != nil {
		t.Fatal(err)
	}
}

// spireClient dials the broker with the SVID spire-agent wrote to dir.
func spireClient(t *testing.T, addr, dir string) *grpc.ClientConn {
	t.Helper()
	svid, err := x509svid.Load(filepath.Join(dir, "svid.0.pem"), filepath.Join(dir, "svid.0.key"))
	if err != nil {
		entries, _ := os.ReadDir(dir)
		t.Fatalf("load the client's SVID: %v (dir has %v)", err, entries)
	}
	bundle, err := x509bundle.Load(td, filepath.Join(dir, "bundle.0.pem"))
	if err != nil {
		t.Fatal(err)
	}
	cfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(serverID))
	cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return cc
}
