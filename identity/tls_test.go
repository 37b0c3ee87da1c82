package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

var (
	testTD     = spiffeid.RequireTrustDomainFromString("example.org")
	brokerID   = spiffeid.RequireFromString("spiffe://example.org/credbroker")
	ordersID   = spiffeid.RequireFromString("spiffe://example.org/orders/api")
	foreignTD  = spiffeid.RequireTrustDomainFromString("evil.org")
	foreignID  = spiffeid.RequireFromString("spiffe://evil.org/orders/api")
	handshakeT = 5 * time.Second
)

func newTestCA(t *testing.T, td spiffeid.TrustDomain, opts ...DevCAOption) *DevCA {
	t.Helper()
	ca, err := NewDevCA(td, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func newTestSource(t *testing.T, ca *DevCA, id spiffeid.ID) Source {
	t.Helper()
	src, err := ca.Source(id)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// recordingCreds records the outcome of every server-side handshake, so a test
// can tell that the server, not the client, refused a connection.
type recordingCreds struct {
	credentials.TransportCredentials
	mu   sync.Mutex
	errs []error
}

func (c *recordingCreds) ServerHandshake(conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	out, info, err := c.TransportCredentials.ServerHandshake(conn)
	c.mu.Lock()
	c.errs = append(c.errs, err)
	c.mu.Unlock()
	return out, info, err
}

func (c *recordingCreds) handshakes() []error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]error(nil), c.errs...)
}

type callerRecord struct {
	id  spiffeid.ID
	err error
}

// testServer is a real gRPC server on 127.0.0.1 with the standard health
// service and an interceptor that resolves the caller, as the broker's does.
type testServer struct {
	addr  string
	creds *recordingCreds

	mu      sync.Mutex
	callers []callerRecord
}

func startTestServer(t *testing.T, src Source) *testServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts := &testServer{
		addr:  lis.Addr().String(),
		creds: &recordingCreds{TransportCredentials: credentials.NewTLS(ServerTLSConfig(src, testTD))},
	}
	intercept := func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		id, err := CallerID(ctx)
		ts.mu.Lock()
		ts.callers = append(ts.callers, callerRecord{id, err})
		ts.mu.Unlock()
		if err != nil {
			return nil, status.Error(codes.Unauthenticated, "no caller")
		}
		ctx = WithCaller(ctx, id)
		if got, ok := CallerFromContext(ctx); !ok || got != id {
			return nil, status.Error(codes.Internal, "caller lost")
		}
		return handler(ctx, req)
	}
	srv := grpc.NewServer(grpc.Creds(ts.creds), grpc.UnaryInterceptor(intercept))
	healthpb.RegisterHealthServer(srv, health.NewServer())
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-done
	})
	return ts
}

func (ts *testServer) seenCallers() []callerRecord {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]callerRecord(nil), ts.callers...)
}

func healthCheck(t *testing.T, addr string, cfg *tls.Config) error {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), handshakeT)
	defer cancel()
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	return err
}

func TestGRPCServerTLS(t *testing.T) {
	ca := newTestCA(t, testTD)
	serverSrc := newTestSource(t, ca, brokerID)
	ordersSrc := newTestSource(t, ca, ordersID)
	// Same trust domain name, different CA: the chain does not verify.
	rogueSrc := newTestSource(t, newTestCA(t, testTD), ordersID)
	foreignCA := newTestCA(t, foreignTD)
	foreignSrc := newTestSource(t, foreignCA, foreignID)
	// A server that also trusts the foreign CA (as with federation): the
	// chain verifies, so only the trust domain authorizer can refuse.
	federatedServer := federatedSource{Source: serverSrc, extra: foreignCA.Bundle()}

	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(ca.BundlePEM()) {
		t.Fatal("bundle PEM holds no certificate")
	}
	ordersCert := tlsCertificate(t, ordersSrc)

	tests := []struct {
		name   string
		server Source // serverSrc when nil
		client func() *tls.Config
		wantID spiffeid.ID // zero: the call must fail in the handshake
	}{
		{
			name:   "svid of the trust domain",
			client: func() *tls.Config { return ClientTLSConfig(ordersSrc, brokerID) },
			wantID: ordersID,
		},
		{
			name:   "client accepting any server of the trust domain",
			client: func() *tls.Config { return ClientTLSConfigMemberOf(ordersSrc, testTD) },
			wantID: ordersID,
		},
		{
			// The broker's SVID verifies, but it is not of the trust
			// domain this client expects.
			name:   "client accepting servers of another trust domain only",
			client: func() *tls.Config { return ClientTLSConfigMemberOf(ordersSrc, foreignTD) },
		},
		{
			// What grpcurl -cacert bundle.pem -cert -key does: web PKI
			// host name verification against the bundle.
			name: "host name verifying client",
			client: func() *tls.Config {
				return &tls.Config{
					RootCAs:      roots,
					ServerName:   "127.0.0.1",
					Certificates: []tls.Certificate{ordersCert},
					MinVersion:   tls.VersionTLS13,
				}
			},
			wantID: ordersID,
		},
		{
			name:   "svid from another ca of the same trust domain",
			client: func() *tls.Config { return mtlsClient(rogueSrc, ordersSrc) },
		},
		{
			name:   "svid from another trust domain",
			client: func() *tls.Config { return mtlsClient(foreignSrc, ca.Bundle()) },
		},
		{
			name:   "svid from a trusted foreign trust domain",
			server: federatedServer,
			client: func() *tls.Config { return mtlsClient(foreignSrc, ca.Bundle()) },
		},
		{
			name: "no client certificate",
			client: func() *tls.Config {
				c := tlsconfig.TLSClientConfig(ordersSrc, tlsconfig.AuthorizeID(brokerID))
				c.MinVersion = tls.VersionTLS13
				return c
			},
		},
		{
			name: "tls 1.2 at most",
			client: func() *tls.Config {
				c := ClientTLSConfig(ordersSrc, brokerID)
				c.MinVersion = tls.VersionTLS12
				c.MaxVersion = tls.VersionTLS12
				return c
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			server := tt.server
			if server == nil {
				server = serverSrc
			}
			ts := startTestServer(t, server)
			err := healthCheck(t, ts.addr, tt.client())
			callers := ts.seenCallers()
			if !tt.wantID.IsZero() {
				if err != nil {
					t.Fatalf("health check: %v", err)
				}
				if len(callers) != 1 || callers[0].err != nil || callers[0].id != tt.wantID {
					t.Fatalf("interceptor saw %+v, want caller %s", callers, tt.wantID)
				}
				return
			}
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("health check: got %v, want a failed connection (Unavailable)", err)
			}
			t.Logf("client error: %v", err)
			if len(callers) != 0 {
				t.Errorf("a refused client reached the handler: %+v", callers)
			}
			// The client may see the failure before the server's handshake
			// call has returned.
			handshakes := ts.creds.handshakes()
			for deadline := time.Now().Add(handshakeT); len(handshakes) == 0 && time.Now().Before(deadline); {
				time.Sleep(10 * time.Millisecond)
				handshakes = ts.creds.handshakes()
			}
			if len(handshakes) == 0 {
				t.Fatal("server saw no handshake")
			}
			for _, herr := range handshakes {
				if herr == nil {
					t.Errorf("server completed a handshake it should have refused")
				}
			}
			t.Logf("server handshake error: %v", handshakes[0])
		})
	}
}

// mtlsClient presents the SVID of svid and verifies the broker's SVID with
// bundle, with no regard to whether the server will accept the client.
func mtlsClient(svid x509svid.Source, bundle x509bundle.Source) *tls.Config {
	c := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(brokerID))
	c.MinVersion = tls.VersionTLS13
	return c
}

func tlsCertificate(t *testing.T, src Source) tls.Certificate {
	t.Helper()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	return cert
}

// federatedSource adds the bundle of a second trust domain.
type federatedSource struct {
	Source
	extra *x509bundle.Bundle
}

func (s federatedSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	if td == s.extra.TrustDomain() {
		return s.extra, nil
	}
	return s.Source.GetX509BundleForTrustDomain(td)
}

// swapSource is a Source whose content a test replaces.
type swapSource struct {
	mu  sync.Mutex
	src Source
}

func (s *swapSource) set(src Source) {
	s.mu.Lock()
	s.src = src
	s.mu.Unlock()
}

func (s *swapSource) get() Source {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.src
}

func (s *swapSource) GetX509SVID() (*x509svid.SVID, error) { return s.get().GetX509SVID() }

func (s *swapSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.get().GetX509BundleForTrustDomain(td)
}

func TestServerTLSConfigRotatesWithSource(t *testing.T) {
	// The config asks the source on every handshake: a swapped source is
	// used without rebuilding the config.
	ca := newTestCA(t, testTD)
	src := &swapSource{}
	src.set(newTestSource(t, ca, brokerID))
	cfg := ServerTLSConfig(src, testTD)
	if cfg.MinVersion != tls.VersionTLS13 {
		t.Fatalf("MinVersion = %x, want TLS 1.3", cfg.MinVersion)
	}
	if cfg.ClientAuth != tls.RequireAnyClientCert || cfg.VerifyPeerCertificate == nil {
		t.Fatalf("client certificates are not required and verified: ClientAuth=%v", cfg.ClientAuth)
	}
	otherID := spiffeid.RequireFromString("spiffe://example.org/credbroker/replica")
	src.set(newTestSource(t, ca, otherID))
	cert, err := cfg.GetCertificate(&tls.ClientHelloInfo{})
	if err != nil {
		t.Fatal(err)
	}
	if cert.Leaf.URIs[0].String() != otherID.String() {
		t.Errorf("served %v, want the rotated %s", cert.Leaf.URIs, otherID)
	}
	if got := ClientTLSConfig(src, brokerID).MinVersion; got != tls.VersionTLS13 {
		t.Errorf("client MinVersion = %x, want TLS 1.3", got)
	}
}

// plainAuthInfo is what a connection without TLS carries.
type plainAuthInfo struct{ credentials.CommonAuthInfo }

func (plainAuthInfo) AuthType() string { return "insecure" }

func TestCallerIDWithoutPeer(t *testing.T) {
	ca := newTestCA(t, testTD)
	ordersSrc := newTestSource(t, ca, ordersID)
	svid, err := ordersSrc.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	noURI := &x509.Certificate{}
	tests := []struct {
		name string
		ctx  context.Context
	}{
		{"no peer", context.Background()},
		{"peer without auth info", peer.NewContext(context.Background(), &peer.Peer{})},
		{"insecure connection", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: plainAuthInfo{}})},
		{"handshake not complete", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{
			State: tls.ConnectionState{PeerCertificates: svid.Certificates},
		}})},
		{"no certificate", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{
			State: tls.ConnectionState{HandshakeComplete: true},
		}})},
		{"certificate without spiffe id", peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{
			State: tls.ConnectionState{HandshakeComplete: true, PeerCertificates: []*x509.Certificate{noURI}},
		}})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := CallerID(tt.ctx)
			if !errors.Is(err, ErrNoPeerID) {
				t.Fatalf("CallerID = %v, %v; want ErrNoPeerID", id, err)
			}
		})
	}

	t.Run("verified chain preferred", func(t *testing.T) {
		ctx := peer.NewContext(context.Background(), &peer.Peer{AuthInfo: credentials.TLSInfo{
			State: tls.ConnectionState{
				HandshakeComplete: true,
				PeerCertificates:  []*x509.Certificate{noURI},
				VerifiedChains:    [][]*x509.Certificate{svid.Certificates},
			},
		}})
		id, err := CallerID(ctx)
		if err != nil || id != ordersID {
			t.Fatalf("CallerID = %v, %v; want %s", id, err, ordersID)
		}
	})
}

func TestCallerFromContext(t *testing.T) {
	if _, ok := CallerFromContext(context.Background()); ok {
		t.Error("empty context has a caller")
	}
	if _, ok := CallerFromContext(WithCaller(context.Background(), spiffeid.ID{})); ok {
		t.Error("zero ID counted as a caller")
	}
	id, ok := CallerFromContext(WithCaller(context.Background(), ordersID))
	if !ok || id != ordersID {
		t.Errorf("CallerFromContext = %v, %v; want %s", id, ok, ordersID)
	}
}
