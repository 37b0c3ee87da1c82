package spireregistry

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"testing"
	"time"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/spiretest"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

// TestWatchRealSPIRE runs the watcher against a real SPIRE server, with the
// broker's identity from a real agent: registration, deregistration, and an
// outage that must not read as a deregistration.
func TestWatchRealSPIRE(t *testing.T) {
	if os.Getuid() != 0 {
		t.Fatal("this test runs a workload as user nobody with runuser and must run as root (make test does)")
	}
	spire := spiretest.Start(t, spiretest.Options{TrustDomain: "example.org"})

	const brokerID = "spiffe://example.org/credbroker"
	const ordersID = "spiffe://example.org/orders/api"
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	spire.CreateEntry(t, brokerID, []string{fmt.Sprintf("unix:uid:%d", os.Getuid())}, true, nil)
	ordersEntry := spire.CreateEntry(t, ordersID, []string{"unix:uid:" + nobody.Uid}, false, nil)

	src := brokerSource(t, spire.WorkloadAPIAddr())
	if svid, err := src.GetX509SVID(); err != nil || svid.ID.String() != brokerID {
		t.Fatalf("broker SVID = %v, %v; want %s", svid, err, brokerID)
	}

	var logs brokertest.SyncBuffer
	const interval = 200 * time.Millisecond
	w, err := New(Config{
		Address:  spire.ServerAddr(),
		ServerID: spire.ServerID(),
		Source:   src,
		Interval: interval,
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })

	// Entries are listed with their creation time, across pages.
	before := time.Now().Add(-time.Minute)
	snap := poll(t, w)
	for _, id := range []string{brokerID, ordersID} {
		created, ok := snap.IDs[id]
		if !ok {
			t.Fatalf("first listing lacks %s: %v", id, snap.IDs)
		}
		if created.Before(before) || created.After(time.Now().Add(time.Minute)) {
			t.Errorf("%s created at %v, want about now", id, created)
		}
	}
	w.pageSize = 1
	if paged := poll(t, w); len(paged.IDs) != len(snap.IDs) {
		t.Errorf("listing one entry per page gave %v, all at once %v", paged.IDs, snap.IDs)
	}
	w.pageSize = defaultPageSize

	// The helper the end-to-end test relies on: a workload running as
	// nobody gets its SVID from the agent.
	svid := spire.FetchX509(t, "nobody", filepath.Join(t.TempDir(), "orders"))
	if svid.ID.String() != ordersID {
		t.Errorf("nobody's SVID is %s, want %s", svid.ID, ordersID)
	}

	// Deregistration shows in the next listing.
	spire.DeleteEntry(t, ordersEntry)
	snap = poll(t, w)
	if _, ok := snap.IDs[ordersID]; ok {
		t.Errorf("listing after DeleteEntry still has %s", ordersID)
	}
	if _, ok := snap.IDs[brokerID]; !ok {
		t.Errorf("listing after DeleteEntry lost %s", brokerID)
	}

	// Run delivers snapshots while the server is up ...
	snaps := make(chan Snapshot, 100)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() {
		done <- w.Run(ctx, func(_ context.Context, s Snapshot) { snaps <- s })
	}()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run = %v", err)
		}
	}()
	select {
	case <-snaps:
	case <-time.After(10 * time.Second):
		t.Fatal("Run delivered no snapshot from a healthy server")
	}

	// ... and none while it is down: an outage is not a deregistration.
	spire.StopServer(t)
	stopped := time.Now()
	if _, err := w.Poll(t.Context()); err == nil {
		t.Fatal("Poll succeeded with the server stopped")
	}
	// Run is sequential: once it has recorded a failure of its own, any
	// snapshot of a listing that ran before the stop has been delivered.
	failures := w.Status().Failures
	brokertest.WaitFor(t, 30*time.Second, "Run to see the outage", func() bool { return w.Status().Failures > failures })
	for len(snaps) > 0 {
		<-snaps
	}
	time.Sleep(10 * interval)
	if n := len(snaps); n != 0 {
		t.Fatalf("Run delivered %d snapshots with the server stopped", n)
	}
	st := w.Status()
	if st.Healthy || st.LastError == "" || st.LastSuccess.After(stopped) || st.Failures < 5 {
		t.Errorf("Status during outage = %+v; want unhealthy, with an error, several failures", st)
	}
	if n := logs.Count("cannot list spire entries"); n < 1 || n >= st.Failures {
		t.Errorf("%d failure lines for %d failures; want logged but rate-limited:\n%s", n, st.Failures, logs.String())
	}
	t.Logf("during outage: %d failures, %d log lines, last error: %s", st.Failures, logs.Count("cannot list spire entries"), st.LastError)

	// The server comes back with its data; so do the snapshots.
	spire.StartServer(t)
	select {
	case s := <-snaps:
		if _, ok := s.IDs[brokerID]; !ok {
			t.Errorf("snapshot after restart lacks %s: %v", brokerID, s.IDs)
		}
		if _, ok := s.IDs[ordersID]; ok {
			t.Errorf("snapshot after restart has the deleted %s", ordersID)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("no snapshot within 30s of the server's restart; status %+v", w.Status())
	}
	if st := w.Status(); !st.Healthy || st.LastError != "" || st.Failures != 0 {
		t.Errorf("Status after restart = %+v, want healthy", st)
	}
	if logs.Count("listing succeeds again") != 1 {
		t.Errorf("recovery not logged once:\n%s", logs.String())
	}
}

// brokerSource gets the broker's SVID from the agent, waiting for the entry to
// reach it.
func brokerSource(t *testing.T, addr string) *workloadapi.X509Source {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	// The source retries until the agent has an SVID for this process.
	src, err := identity.NewWorkloadAPISource(ctx, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { src.Close() })
	return src
}

func poll(t *testing.T, w *Watcher) Snapshot {
	t.Helper()
	snap, err := w.Poll(t.Context())
	if err != nil {
		t.Fatalf("Poll: %v (status %+v)", err, w.Status())
	}
	return snap
}
