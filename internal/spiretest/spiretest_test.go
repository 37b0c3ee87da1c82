package spiretest_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/credbroker/credbroker/internal/spiretest"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func TestSPIRE(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("FetchX509 runs the agent CLI as another user with runuser; run as root (make test does)")
	}
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: "test.example"})

	td := spiffeid.RequireTrustDomainFromString("test.example")
	if got, want := spire.ServerID(), spiffeid.RequireFromPath(td, "/spire/server"); got != want {
		t.Errorf("ServerID = %s, want %s", got, want)
	}
	if !spire.AgentID().MemberOf(td) {
		t.Errorf("AgentID %s is not in %s", spire.AgentID(), td)
	}

	// A workload running as nobody, with DNS names, through the CLI.
	const id = "spiffe://test.example/orders/api"
	spire.CreateEntry(t, id, []string{"unix:user:nobody"}, false, []string{"orders.test.example"})
	dir := filepath.Join(t.TempDir(), "svid")
	svid := spire.FetchX509(t, "nobody", dir)
	if svid.ID.String() != id {
		t.Errorf("SVID ID = %s, want %s", svid.ID, id)
	}
	if dns := svid.Certificates[0].DNSNames; !slices.Contains(dns, "orders.test.example") {
		t.Errorf("SVID DNS names = %v", dns)
	}
	bundle, err := x509bundle.Load(td, filepath.Join(dir, "bundle.0.pem"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Errorf("SVID does not verify against the written bundle: %v", err)
	}

	// A workload running as this process, through the Workload API.
	const self = "spiffe://test.example/self"
	entryID := spire.CreateEntry(t, self, []string{"unix:uid:0"}, false, nil)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	got, err := workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(spire.WorkloadAPIAddr()))
	for err != nil && ctx.Err() == nil { // until the entry reaches the agent
		time.Sleep(200 * time.Millisecond)
		got, err = workloadapi.FetchX509SVID(ctx, workloadapi.WithAddr(spire.WorkloadAPIAddr()))
	}
	if err != nil {
		t.Fatalf("Workload API: %v", err)
	}
	if got.ID.String() != self {
		t.Errorf("Workload API SVID = %s, want %s", got.ID, self)
	}
	spire.DeleteEntry(t, entryID)
}
