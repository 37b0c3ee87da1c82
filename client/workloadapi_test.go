package client_test

import (
	"context"
	"encoding/pem"
	"net"
	"path/filepath"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"

	"github.com/credbroker/credbroker/client"
	"github.com/credbroker/credbroker/identity"
)

// workloadAPI is a SPIFFE Workload API endpoint serving one X.509-SVID:
// what a SPIRE agent's socket does for FetchX509SVID, the only call an
// X509Source makes. (make test's SPIRE tests run the real agent; this
// keeps the client's test free of a SPIRE build.)
type workloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	resp *workload.X509SVIDResponse
}

func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, s workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	if err := s.Send(w.resp); err != nil {
		return err
	}
	<-s.Context().Done()
	return nil
}

// serveWorkloadAPI serves ca's SVID for the orders workload on a unix
// socket and returns its address.
func serveWorkloadAPI(t *testing.T, ca *identity.DevCA) string {
	t.Helper()
	certPEM, keyPEM, err := ca.IssueSVID(ordersID, identity.SVIDOptions{})
	if err != nil {
		t.Fatal(err)
	}
	der := func(b []byte) []byte {
		blk, _ := pem.Decode(b)
		if blk == nil {
			t.Fatal("bad PEM")
		}
		return blk.Bytes
	}
	api := &workloadAPI{resp: &workload.X509SVIDResponse{Svids: []*workload.X509SVID{{
		SpiffeId:    ordersID.String(),
		X509Svid:    der(certPEM),
		X509SvidKey: der(keyPEM),
		Bundle:      der(ca.BundlePEM()),
	}}}}
	sock := filepath.Join(t.TempDir(), "agent.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(srv, api)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return "unix://" + sock
}

// TestWorkloadAPISource: the client takes its SVID from the Workload API
// and is issued a working credential.
func TestWorkloadAPISource(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c, err := client.New(ctx, e.addr, client.WithServerID(serverID.String()), client.WithWorkloadAPI(serveWorkloadAPI(t, e.ca)))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	cred, err := c.Credential(ctx, "pg-orders")
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgx.Connect(ctx, cred.DSN)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	conn.Close(ctx)
	if err := c.Revoke(ctx, cred.LeaseID); err != nil {
		t.Fatal(err)
	}
}

func TestNewRefusesBadOptions(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		opts []client.Option
	}{
		{"no server id", []client.Option{client.WithFiles("a", "b", "c")}},
		{"bad server id", []client.Option{client.WithServerID("https://x"), client.WithFiles("a", "b", "c")}},
		{"no svid", []client.Option{client.WithServerID(serverID.String())}},
		{"two svid sources", []client.Option{client.WithServerID(serverID.String()), client.WithFiles("a", "b", "c"), client.WithWorkloadAPI("unix:///nowhere")}},
		{"missing files", []client.Option{client.WithServerID(serverID.String()), client.WithFiles("/nonexistent/a", "/nonexistent/b", "/nonexistent/c")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if c, err := client.New(ctx, "127.0.0.1:1", tc.opts...); err == nil {
				c.Close()
				t.Fatal("New succeeded")
			}
		})
	}
}
