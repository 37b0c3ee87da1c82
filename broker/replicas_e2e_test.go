package broker_test

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/internal/brokertest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// replica starts another App on e's config and PostgreSQL store (opened
// shared, as e's), with a log and an address of
// its own. It stops when t ends, before e, unless the test stopped it
// (stop set to nil).
func (e *env) replica() *env {
	e.t.Helper()
	r := *e
	r.log = &brokertest.SyncBuffer{}
	r.addr = "127.0.0.1:0"
	r.opts.Logger = slog.New(slog.NewJSONHandler(r.log, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r.opts.CreateStore = false
	r.start()
	e.t.Cleanup(func() {
		if r.stop != nil {
			r.stop()
		}
	})
	return &r
}

// admitted probes admission of id on e without creating anything: the
// role "down" is on an unreachable database, so an admitted caller gets
// UNAVAILABLE and a refused one PERMISSION_DENIED.
func (e *env) admitted(client pb.CredentialServiceClient) bool {
	e.t.Helper()
	_, err := client.IssueCredential(context.Background(), &pb.IssueCredentialRequest{Role: "down"})
	switch statusCode(err) {
	case codes.PermissionDenied:
		return false
	case codes.Unavailable:
		return true
	}
	e.t.Fatalf("admission probe: %v, want PERMISSION_DENIED or UNAVAILABLE", err)
	return false
}

// Two replicas on one PostgreSQL store: a workload deregistered through
// one is refused by the other within a second (LISTEN/NOTIFY, then the
// whole list read again), and registered again through the first, admitted
// by the other again.
func TestReplicasSeeDeregistrations(t *testing.T) {
	storeYAML, _, _ := pgLeaseStore(t)
	a := newEnvWith(t, envExtra{leaseStore: storeYAML})
	b := a.replica()
	ctx := context.Background()
	onB := b.creds(ordersID)
	if !b.admitted(onB) {
		t.Fatal("a registered workload refused by replica B")
	}

	if _, err := a.adminClient(adminID).DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: ordersID.String()}); err != nil {
		t.Fatalf("deregister through A: %v", err)
	}
	took := brokertest.WaitFor(t, 5*time.Second, "replica B to refuse the deregistered workload", func() bool { return !b.admitted(onB) })
	t.Logf("deregistered through A → refused by B after %s", took.Round(time.Millisecond))
	_, err := onB.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	wantCode(t, err, codes.PermissionDenied)
	if !strings.Contains(b.log.String(), "deregistrations changed in the store") || !strings.Contains(b.log.String(), ordersID.String()) {
		t.Errorf("replica B's log does not say which deregistration it learned")
	}
	// Others stay admitted.
	if !b.admitted(b.creds(otherID)) {
		t.Error("replica B refuses a workload nobody deregistered")
	}

	if _, err := a.adminClient(adminID).RegisterWorkload(ctx, &pb.RegisterWorkloadRequest{SpiffeId: ordersID.String()}); err != nil {
		t.Fatalf("register through A: %v", err)
	}
	took = brokertest.WaitFor(t, 5*time.Second, "replica B to admit the workload registered again", func() bool { return b.admitted(onB) })
	t.Logf("registered through A → admitted by B after %s", took.Round(time.Millisecond))
	resp, err := onB.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("issue on B after registering again: %v", err)
	}
	if _, err := onB.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: resp.GetLease().GetId()}); err != nil {
		t.Fatalf("revoke on B: %v", err)
	}

	// Deregistered through B, lifted through A, whose copy may lag: the
	// store is written through anyway.
	if _, err := b.adminClient(adminID).DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: ordersID.String()}); err != nil {
		t.Fatalf("deregister through B: %v", err)
	}
	if _, err := a.adminClient(adminID).RegisterWorkload(ctx, &pb.RegisterWorkloadRequest{SpiffeId: ordersID.String()}); err != nil {
		t.Fatalf("register through A: %v", err)
	}
	brokertest.WaitFor(t, 5*time.Second, "both replicas to admit the workload", func() bool { return a.admitted(a.creds(ordersID)) && b.admitted(onB) })
}

// leads reports whether e's log says it took the leadership of singleton
// name, and how many times.
func (e *env) leads(name string) int {
	return strings.Count(e.log.String(), `"msg":"replicas: leading singleton","singleton":"`+name+`"`)
}

// orphan creates a user the reconciler must drop: marked as this
// instance's, backed by no lease.
func (e *env) orphan(suffix string) string {
	e.t.Helper()
	name := e.prefix + "_reader_" + suffix + strings.Repeat("a", 26-len(suffix))
	for _, q := range []string{
		"CREATE ROLE " + pgx.Identifier{name}.Sanitize(),
		"COMMENT ON ROLE " + pgx.Identifier{name}.Sanitize() + " IS 'credbroker:default'",
	} {
		if _, err := e.admin.Exec(context.Background(), q); err != nil {
			e.t.Fatal(err)
		}
	}
	return name
}

// droppedBy reports whether e's log says its reconciler dropped user.
func (e *env) droppedBy(user string) bool {
	return strings.Contains(e.log.String(), `"msg":"audit: orphan user dropped","database":"main","username":"`+user+`"`)
}

// Two replicas with the periodic reconciler: exactly one runs it, and it
// moves to the other when the leader stops. Seen from its effect: the
// orphans are all dropped by the leader's reconciler, none by the other's.
func TestReplicasReconcilerSingleton(t *testing.T) {
	storeYAML, _, _ := pgLeaseStore(t)
	a := newEnvWith(t, envExtra{leaseStore: storeYAML, top: "reconciler: {enabled: true, interval: 1s}"})
	b := a.replica()
	brokertest.WaitFor(t, 10*time.Second, "a replica to lead the reconciler", func() bool { return a.leads("reconciler")+b.leads("reconciler") > 0 })
	leader, other := a, b
	if b.leads("reconciler") > 0 {
		leader, other = b, a
	}
	for i, s := range []string{"one", "two", "three"} {
		user := leader.orphan(s)
		brokertest.WaitFor(t, 10*time.Second, "orphan "+s+" to be dropped", func() bool { return !leader.userExists(user) })
		if !leader.droppedBy(user) || other.droppedBy(user) {
			t.Fatalf("orphan %d: dropped by the leader %t, by the other %t; want the leader only", i, leader.droppedBy(user), other.droppedBy(user))
		}
	}
	if n := leader.leads("reconciler") + other.leads("reconciler"); n != 1 {
		t.Fatalf("%d leaderships taken while the leader ran, want 1", n)
	}
	// The operator's Reconcile stays served by the replica that does not lead.
	if _, err := other.adminClient(adminID).ListOrphans(context.Background(), &pb.ListOrphansRequest{}); err != nil {
		t.Errorf("ListOrphans on the replica that does not lead: %v", err)
	}

	leader.stop()
	leader.stop = nil
	took := brokertest.WaitFor(t, 10*time.Second, "the other replica to take the reconciler over", func() bool { return other.leads("reconciler") == 1 })
	t.Logf("leader stopped → reconciler led by the other after %s (retry %s)", took.Round(time.Millisecond), 2*time.Second)
	user := other.orphan("four")
	brokertest.WaitFor(t, 10*time.Second, "orphan four to be dropped by the new leader", func() bool { return !other.userExists(user) })
	if !other.droppedBy(user) {
		t.Fatal("orphan four was not dropped by the new leader's reconciler")
	}
}

// Two replicas with a SPIRE registry watch (real server and agent): both
// poll SPIRE, so both refuse a workload whose entry is deleted, but only
// the one leading "spire-sweep" revokes; the sweep moves to the other when
// the leader stops.
func TestSPIREReplicasSweepSingleton(t *testing.T) {
	const poll = time.Second
	ctx := context.Background()
	storeYAML, _, _ := pgLeaseStore(t)
	sp := startSPIRE(t)

	a := newEnvWith(t, envExtra{leaseStore: storeYAML, top: fmt.Sprintf(`
registry:
  spire_server_address: %s
  spire_server_id: %s
  poll_interval: %s
`, sp.ServerAddr(), sp.ServerID(), poll)}, func(o *broker.AppOptions) { o.Source = sp.brokerSrc })
	b := a.replica()
	brokertest.WaitFor(t, 10*time.Second, "a replica to lead the SPIRE sweep", func() bool { return a.leads("spire-sweep")+b.leads("spire-sweep") > 0 })
	leader, other := a, b
	if b.leads("spire-sweep") > 0 {
		leader, other = b, a
	}
	dir := t.TempDir()
	sp.FetchX509(t, "nobody", dir)
	onLeader := pb.NewCredentialServiceClient(spireClient(t, leader.addr, dir))
	onOther := pb.NewCredentialServiceClient(spireClient(t, other.addr, dir))
	if !other.admitted(onOther) {
		t.Fatal("the replica that does not lead refuses a registered workload")
	}
	resp, err := onLeader.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("issue on the leader: %v", err)
	}

	sp.DeleteEntry(t, sp.clientEntry)
	brokertest.WaitFor(t, 3*poll+5*time.Second, "the leader to revoke the deleted workload's lease", func() bool {
		return !leader.userExists(resp.GetCredential().GetUsername())
	})
	brokertest.WaitFor(t, 3*poll+5*time.Second, "the other replica to refuse the deleted workload", func() bool { return !other.admitted(onOther) })
	if strings.Contains(other.log.String(), "SPIRE entry gone") {
		t.Error("the replica that does not lead revoked leases")
	}
	if other.leads("spire-sweep") != 0 {
		t.Fatal("both replicas led the SPIRE sweep")
	}

	leader.stop()
	leader.stop = nil
	took := brokertest.WaitFor(t, 10*time.Second, "the other replica to take the SPIRE sweep over", func() bool { return other.leads("spire-sweep") == 1 })
	t.Logf("leader stopped → SPIRE sweep led by the other after %s", took.Round(time.Millisecond))
}

// A WatchCredential stream served by one replica ends when its lease is
// ended through another: ABORTED when revoked there, and ended as well
// when its workload is deregistered there, within a few seconds (the
// replica asks the store every second), long before the stream's next
// renewal (the role's ttl is a minute) would have found out.
func TestReplicasEndEachOthersStreams(t *testing.T) {
	storeYAML, _, _ := pgLeaseStore(t)
	a := newEnvWith(t, envExtra{leaseStore: storeYAML})
	b := a.replica()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	open := func() (pb.CredentialService_WatchCredentialClient, *pb.WatchCredentialResponse) {
		t.Helper()
		s, err := b.creds(ordersID).WatchCredential(ctx, &pb.WatchCredentialRequest{Role: "reader"})
		if err != nil {
			t.Fatal(err)
		}
		m, err := recv(t, s, 20*time.Second)
		if err != nil || m.GetEvent() != pb.WatchCredentialResponse_ISSUED {
			t.Fatalf("first message on replica B: %v, %v; want ISSUED", m.GetEvent(), err)
		}
		return s, m
	}
	ended := func(s pb.CredentialService_WatchCredentialClient, since time.Time) (codes.Code, time.Duration) {
		t.Helper()
		return statusCode(streamEnd(t, s, 10*time.Second)), time.Since(since)
	}

	s, m := open()
	start := time.Now()
	if _, err := a.creds(ordersID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: m.GetLease().GetId()}); err != nil {
		t.Fatalf("revoke through A: %v", err)
	}
	code, took := ended(s, start)
	if code != codes.Aborted {
		t.Fatalf("stream on B ended with %s after its lease was revoked through A, want ABORTED", code)
	}
	t.Logf("revoked through A → stream on B ended (ABORTED) after %s", took.Round(time.Millisecond))
	if a.userExists(m.GetCredential().GetUsername()) {
		t.Error("the revoked user still exists")
	}

	s, m = open()
	start = time.Now()
	if _, err := a.adminClient(adminID).DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: ordersID.String()}); err != nil {
		t.Fatalf("deregister through A: %v", err)
	}
	code, took = ended(s, start)
	// PERMISSION_DENIED once B has read the deregistration (milliseconds
	// after A's commit); ABORTED if B saw the lease go first.
	if code != codes.PermissionDenied && code != codes.Aborted {
		t.Fatalf("stream on B ended with %s after its workload was deregistered through A, want PERMISSION_DENIED (or ABORTED)", code)
	}
	t.Logf("deregistered through A → stream on B ended (%s) after %s", code, took.Round(time.Millisecond))
	if a.userExists(m.GetCredential().GetUsername()) {
		t.Error("the deregistered workload's user still exists")
	}
}
