package broker_test

import (
	"context"
	"crypto/tls"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/brokertest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func wantCode(t *testing.T, err error, want codes.Code) {
	t.Helper()
	if got := status.Code(err); got != want {
		t.Fatalf("got code %s (%v), want %s", got, err, want)
	}
}

func TestIssueLoginRenewRevoke(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	client := e.creds(ordersID)

	resp, err := client.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader", Ttl: durationpb.New(30 * time.Second)})
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	l, cred := resp.GetLease(), resp.GetCredential()
	if l.GetState() != pb.Lease_ACTIVE || l.GetSpiffeId() != ordersID.String() || l.GetUsername() != cred.GetUsername() {
		t.Fatalf("unexpected lease %v", l)
	}
	if got := l.GetExpireTime().AsTime().Sub(l.GetIssueTime().AsTime()); got != 30*time.Second {
		t.Fatalf("ttl %s, want 30s", got)
	}
	if len(cred.GetPassword()) < 32 {
		t.Fatalf("password has %d characters, want at least 32", len(cred.GetPassword()))
	}
	// The server's own clock enforces the lease: VALID UNTIL is its expiry.
	if vu := e.validUntil(cred.GetUsername()); !vu.Equal(l.GetExpireTime().AsTime().Truncate(time.Microsecond)) {
		t.Fatalf("VALID UNTIL %s, want %s", vu, l.GetExpireTime().AsTime())
	}

	conn, err := login(ctx, cred.GetDsn())
	if err != nil {
		t.Fatalf("login with the issued credential: %v", err)
	}
	defer conn.Close(ctx)
	var n int
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM "+e.table).Scan(&n); err != nil || n != 2 {
		t.Fatalf("allowed query: n=%d err=%v", n, err)
	}
	if _, err := conn.Exec(ctx, "SELECT * FROM "+e.secret); err == nil {
		t.Fatal("forbidden query succeeded")
	}
	if _, err := conn.Exec(ctx, "INSERT INTO "+e.table+" VALUES (3)"); err == nil {
		t.Fatal("write through a read-only role succeeded")
	}

	// A wrong password is refused (the cluster really checks passwords).
	// The password's first character changed (to 'x', or 'y' when it is
	// already 'x': one password in 62 starts with 'x').
	bad := cred.GetDsn()
	at := len("postgres://") + len(cred.GetUsername()) + 1
	other := "x"
	if bad[at] == 'x' {
		other = "y"
	}
	bad = bad[:at] + other + bad[at+1:]
	if c, err := login(ctx, bad); err == nil {
		c.Close(ctx)
		t.Fatal("login with a wrong password succeeded")
	}

	list, err := client.ListLeases(ctx, &pb.ListLeasesRequest{})
	if err != nil || len(list.GetLeases()) != 1 || list.GetLeases()[0].GetId() != l.GetId() {
		t.Fatalf("list: %v %v", list, err)
	}

	renewed, err := client.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: l.GetId(), Increment: durationpb.New(5 * time.Minute)})
	if err != nil {
		t.Fatalf("renew: %v", err)
	}
	newExp := renewed.GetLease().GetExpireTime().AsTime()
	if !newExp.After(l.GetExpireTime().AsTime()) {
		t.Fatalf("renew did not extend: %s -> %s", l.GetExpireTime().AsTime(), newExp)
	}
	if vu := e.validUntil(cred.GetUsername()); !vu.Equal(newExp.Truncate(time.Microsecond)) {
		t.Fatalf("VALID UNTIL after renew %s, want %s", vu, newExp)
	}
	// Renewal never goes past max expiry.
	capped, err := client.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: l.GetId(), Increment: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatalf("renew past max: %v", err)
	}
	if !capped.GetLease().GetExpireTime().AsTime().Equal(l.GetMaxExpireTime().AsTime()) {
		t.Fatalf("renew past max gave %s, want max %s", capped.GetLease().GetExpireTime().AsTime(), l.GetMaxExpireTime().AsTime())
	}
	_, err = client.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: l.GetId(), Increment: durationpb.New(time.Minute)})
	wantCode(t, err, codes.FailedPrecondition)

	rev, err := client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: l.GetId()})
	if err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if rev.GetLease().GetState() != pb.Lease_REVOKED {
		t.Fatalf("state after revoke %s", rev.GetLease().GetState())
	}
	// The open session is gone when RevokeLease returns, and so is the user.
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("the user's open session survived revocation")
	}
	if e.userExists(cred.GetUsername()) {
		t.Fatal("user still exists after revoke")
	}
	if c, err := login(ctx, cred.GetDsn()); err == nil {
		c.Close(ctx)
		t.Fatal("login after revoke succeeded")
	}
	_, err = client.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: l.GetId()})
	wantCode(t, err, codes.NotFound)
	e.assertNoSecret(cred.GetPassword())
}

func TestPerUserGrantTemplate(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "grantor"})
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	// The template set no VALID UNTIL; the broker always does.
	if e.validUntil(resp.GetCredential().GetUsername()).IsZero() {
		t.Fatal("no VALID UNTIL on a template that omits it")
	}
	conn, err := login(ctx, resp.GetCredential().GetDsn())
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	if _, err := conn.Exec(ctx, "SELECT * FROM "+e.table); err != nil {
		t.Fatalf("granted query: %v", err)
	}
	conn.Close(ctx)
	if _, err := e.creds(ordersID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: resp.GetLease().GetId()}); err != nil {
		t.Fatalf("revoke: %v", err)
	}
	if e.userExists(resp.GetCredential().GetUsername()) {
		t.Fatal("user survived revoke")
	}
}

func TestExpiryLoopRevokesOnTime(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "shortlived", Ttl: durationpb.New(time.Second)})
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	conn, err := login(ctx, resp.GetCredential().GetDsn())
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer conn.Close(ctx)
	user := resp.GetCredential().GetUsername()
	expiry := resp.GetLease().GetExpireTime().AsTime()
	brokertest.WaitFor(t, 10*time.Second, "the expiry loop to drop the user", func() bool { return !e.userExists(user) })
	late := time.Since(expiry)
	t.Logf("user dropped %s after lease expiry", late.Round(time.Millisecond))
	if late > 2*time.Second {
		t.Fatalf("user dropped %s after expiry, want within about a second", late)
	}
	if err := conn.Ping(ctx); err == nil {
		t.Fatal("open session survived expiry")
	}
	// The record is deleted right after the drop commits (the user is gone
	// from pg_roles a moment before its lease is gone from the store).
	var list *pb.ListLeasesResponse
	brokertest.WaitFor(t, 2*time.Second, "the expired lease to leave the list", func() bool {
		list, err = e.creds(ordersID).ListLeases(ctx, &pb.ListLeasesRequest{})
		return err == nil && len(list.GetLeases()) == 0
	})
	if err != nil || len(list.GetLeases()) != 0 {
		t.Fatalf("leases after expiry: %v %v", list.GetLeases(), err)
	}
}

func TestAuthorization(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	owner := e.creds(ordersID)
	resp, err := owner.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	id := resp.GetLease().GetId()
	t.Cleanup(func() { _, _ = owner.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: id}) })

	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"prefix confusion is not the same path", func() error {
			_, err := e.creds(evilID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
			return err
		}, codes.PermissionDenied},
		{"caller outside the role's patterns", func() error {
			_, err := e.creds(adminID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
			return err
		}, codes.PermissionDenied},
		{"renew another workload's lease", func() error {
			_, err := e.creds(otherID).RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: id})
			return err
		}, codes.NotFound},
		{"revoke another workload's lease", func() error {
			_, err := e.creds(otherID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: id})
			return err
		}, codes.NotFound},
		{"another workload does not see the lease", func() error {
			l, err := e.creds(otherID).ListLeases(ctx, &pb.ListLeasesRequest{})
			if err == nil && len(l.GetLeases()) != 0 {
				t.Errorf("other workload sees %d leases", len(l.GetLeases()))
			}
			return err
		}, codes.OK},
		{"admin ListLeases from a non-admin", func() error {
			_, err := e.adminClient(ordersID).ListLeases(ctx, &pb.AdminListLeasesRequest{})
			return err
		}, codes.PermissionDenied},
		{"admin ListRoles from a non-admin", func() error {
			_, err := e.adminClient(ordersID).ListRoles(ctx, &pb.ListRolesRequest{})
			return err
		}, codes.PermissionDenied},
		{"admin RevokeLeases from a non-admin", func() error {
			_, err := e.adminClient(ordersID).RevokeLeases(ctx, &pb.RevokeLeasesRequest{Role: "reader"})
			return err
		}, codes.PermissionDenied},
		{"admin DeregisterWorkload from a non-admin", func() error {
			_, err := e.adminClient(ordersID).DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: ordersID.String()})
			return err
		}, codes.PermissionDenied},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.call(), tc.want) })
	}
	if !e.userExists(resp.GetCredential().GetUsername()) {
		t.Fatal("a refused call changed the lease")
	}
}

func TestBadInput(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.creds(ordersID)
	cases := []struct {
		name string
		call func() error
		want codes.Code
	}{
		{"empty role", func() error { _, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{}); return err }, codes.InvalidArgument},
		{"malformed role", func() error {
			_, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "x'; DROP ROLE postgres; --"})
			return err
		}, codes.InvalidArgument},
		{"unknown role", func() error { _, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "nope"}); return err }, codes.NotFound},
		{"negative ttl", func() error {
			_, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader", Ttl: durationpb.New(-time.Second)})
			return err
		}, codes.InvalidArgument},
		{"sub-second ttl", func() error {
			_, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader", Ttl: durationpb.New(time.Millisecond)})
			return err
		}, codes.InvalidArgument},
		{"malformed lease id", func() error { _, err := c.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: "../../x"}); return err }, codes.InvalidArgument},
		{"unknown lease id", func() error {
			_, err := c.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: "0123456789abcdef0123456789abcdef"})
			return err
		}, codes.NotFound},
		{"negative increment", func() error {
			_, err := c.RenewLease(ctx, &pb.RenewLeaseRequest{LeaseId: "0123456789abcdef0123456789abcdef", Increment: durationpb.New(-time.Second)})
			return err
		}, codes.InvalidArgument},
		{"bulk revoke without selector", func() error {
			_, err := e.adminClient(adminID).RevokeLeases(ctx, &pb.RevokeLeasesRequest{})
			return err
		}, codes.InvalidArgument},
		{"deregister a non-SPIFFE ID", func() error {
			_, err := e.adminClient(adminID).DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: "https://x"})
			return err
		}, codes.InvalidArgument},
		{"database unreachable", func() error { _, err := c.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "down"}); return err }, codes.Unavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) { wantCode(t, tc.call(), tc.want) })
	}
	// None of it changed anything: no lease, no user.
	l, err := e.adminClient(adminID).ListLeases(ctx, &pb.AdminListLeasesRequest{})
	if err != nil || len(l.GetLeases()) != 0 {
		t.Fatalf("leases after bad input: %v %v", l.GetLeases(), err)
	}
	if n := e.countUsers(); n != 0 {
		t.Fatalf("%d users after bad input", n)
	}
}

func TestTTLCappedAtMax(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "shortlived", Ttl: durationpb.New(time.Hour)})
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	l := resp.GetLease()
	if got := l.GetExpireTime().AsTime().Sub(l.GetIssueTime().AsTime()); got != 3*time.Second {
		t.Fatalf("ttl %s, want capped at max_ttl 3s", got)
	}
	brokertest.WaitFor(t, 10*time.Second, "expiry", func() bool { return !e.userExists(l.GetUsername()) })
}

func TestAdminService(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.adminClient(adminID)
	var users []string
	for _, id := range []spiffeid.ID{ordersID, ordersID, otherID} {
		resp, err := e.creds(id).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
		if err != nil {
			t.Fatalf("issue: %v", err)
		}
		users = append(users, resp.GetCredential().GetUsername())
	}

	roles, err := admin.ListRoles(ctx, &pb.ListRolesRequest{})
	if err != nil || len(roles.GetRoles()) != 4 || roles.GetRoles()[0].GetName() != "down" {
		t.Fatalf("list roles: %v %v", roles, err)
	}

	page1, err := admin.ListLeases(ctx, &pb.AdminListLeasesRequest{PageSize: 2})
	if err != nil || len(page1.GetLeases()) != 2 || page1.GetNextPageToken() == "" {
		t.Fatalf("page 1: %v %v", page1, err)
	}
	page2, err := admin.ListLeases(ctx, &pb.AdminListLeasesRequest{PageSize: 2, PageToken: page1.GetNextPageToken()})
	if err != nil || len(page2.GetLeases()) != 1 || page2.GetNextPageToken() != "" {
		t.Fatalf("page 2: %v %v", page2, err)
	}
	_, err = admin.ListLeases(ctx, &pb.AdminListLeasesRequest{PageToken: "garbage!"})
	wantCode(t, err, codes.InvalidArgument)

	dereg, err := admin.DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: ordersID.String()})
	if err != nil || dereg.GetRevoked() != 2 {
		t.Fatalf("deregister: %v %v", dereg, err)
	}
	if e.userExists(users[0]) || e.userExists(users[1]) || !e.userExists(users[2]) {
		t.Fatal("deregistration dropped the wrong users")
	}
	bulk, err := admin.RevokeLeases(ctx, &pb.RevokeLeasesRequest{Role: "reader"})
	if err != nil || bulk.GetRevoked() != 1 {
		t.Fatalf("bulk revoke: %v %v", bulk, err)
	}
	if e.userExists(users[2]) {
		t.Fatal("bulk revoke left the user")
	}
	if logs := e.log.String(); !strings.Contains(logs, "audit: workload deregistered") || !strings.Contains(logs, adminID.String()) {
		t.Fatal("deregistration was not audit-logged with the admin's ID")
	}
}

// mixedSource presents one CA's SVID while trusting another's bundle.
type mixedSource struct {
	svid, bundle identity.Source
}

func (m mixedSource) GetX509SVID() (*x509svid.SVID, error) { return m.svid.GetX509SVID() }

func (m mixedSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return m.bundle.GetX509BundleForTrustDomain(td)
}

func TestHandshakeRefusals(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	foreignTD := spiffeid.RequireTrustDomainFromString("evil.example")
	foreignCA, err := identity.NewDevCA(foreignTD)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := foreignCA.Source(spiffeid.RequireFromPath(foreignTD, "/orders/api"))
	if err != nil {
		t.Fatal(err)
	}
	// Trust the broker's CA for the server side so only the client cert is wrong.
	good, err := e.ca.Source(ordersID)
	if err != nil {
		t.Fatal(err)
	}
	foreignCfg := identity.ClientTLSConfig(mixedSource{svid: foreign, bundle: good}, serverID)

	noCert := identity.ClientTLSConfig(good, serverID)
	noCert.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &tls.Certificate{}, nil }

	tls12 := identity.ClientTLSConfig(good, serverID)
	tls12.MinVersion, tls12.MaxVersion = tls.VersionTLS12, tls.VersionTLS12

	for name, cfg := range map[string]*tls.Config{
		"client SVID from another trust domain": foreignCfg,
		"no client certificate":                 noCert,
		"TLS 1.2":                               tls12,
	} {
		t.Run(name, func(t *testing.T) {
			cc, err := grpc.NewClient(e.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
			if err != nil {
				t.Fatal(err)
			}
			defer cc.Close()
			_, err = pb.NewCredentialServiceClient(cc).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
			wantCode(t, err, codes.Unavailable)
		})
	}
	if n := e.countUsers(); n != 0 {
		t.Fatalf("%d users after refused handshakes", n)
	}
}

func TestHealthAndReflection(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	cc := e.conn(ordersID)
	h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil || h.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health: %v %v", h, err)
	}
	stream, err := reflectionpb.NewServerReflectionClient(cc).ServerReflectionInfo(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	found := map[string]bool{}
	for _, s := range resp.GetListServicesResponse().GetService() {
		found[s.GetName()] = true
	}
	for _, want := range []string{"credbroker.v1.CredentialService", "credbroker.v1.AdminService", "grpc.health.v1.Health"} {
		if !found[want] {
			t.Errorf("reflection does not list %s (got %v)", want, found)
		}
	}
}

// TestAdminRevokeLease: an admin revokes another workload's lease with
// CredentialService/RevokeLease (the wire contract: "only the owner (or an
// admin)"); the user is gone when the call returns.
func TestAdminRevokeLease(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	resp, err := e.creds(ordersID).IssueCredential(ctx, &pb.IssueCredentialRequest{Role: "reader"})
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	name := resp.GetCredential().GetUsername()
	rev, err := e.creds(adminID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: resp.GetLease().GetId()})
	if err != nil {
		t.Fatalf("admin RevokeLease: %v", err)
	}
	if st := rev.GetLease().GetState(); st != pb.Lease_REVOKED {
		t.Errorf("state after admin revoke: %v, want REVOKED", st)
	}
	if e.userExists(name) {
		t.Errorf("user %s still exists after the admin revoked its lease", name)
	}
	if _, err := e.creds(adminID).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: resp.GetLease().GetId()}); status.Code(err) != codes.NotFound {
		t.Errorf("second revoke: %v, want NotFound", err)
	}
}
