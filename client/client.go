package client

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/identity"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Source supplies the workload's X.509-SVID and the trust bundle its
// broker's SVID is verified against. A *workloadapi.X509Source is one.
type Source = identity.Source

// Option configures New.
type Option func(*options)

type options struct {
	serverID   string
	source     Source
	socket     *string // WithWorkloadAPI
	files      *identity.FileSourceConfig
	dialOpts   []grpc.DialOption
	log        *slog.Logger
	closeTimer time.Duration
}

// WithServerID sets the broker's SPIFFE ID (required): the client talks
// only to a server presenting an SVID with that ID.
func WithServerID(id string) Option { return func(o *options) { o.serverID = id } }

// WithSource takes the SVID and bundle from src, for example a
// *workloadapi.X509Source the caller already has. The caller closes it,
// after the Client.
func WithSource(src Source) Option { return func(o *options) { o.source = src } }

// WithWorkloadAPI takes the SVID from the SPIFFE Workload API at
// socketAddr ("unix:///run/spire/agent.sock"; "" reads
// SPIFFE_ENDPOINT_SOCKET). New waits for the first SVID; the source follows
// rotations and is closed by Client.Close.
func WithWorkloadAPI(socketAddr string) Option {
	return func(o *options) { o.socket = &socketAddr }
}

// WithFiles takes the SVID from PEM files: the certificate (then its
// intermediates), its PKCS#8 key, and the trust bundle of the server's
// trust domain. The files are read again when they change (every 5s), so
// a rotating sidecar such as spiffe-helper works.
func WithFiles(certFile, keyFile, bundleFile string) Option {
	return func(o *options) {
		o.files = &identity.FileSourceConfig{CertFile: certFile, KeyFile: keyFile, BundleFile: bundleFile}
	}
}

// WithDialOptions adds gRPC dial options (interceptors, keepalive).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dialOpts = append(o.dialOpts, opts...) }
}

// WithLogger receives the watchers' reconnections; nothing is logged
// without it. No password is ever logged.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// Client talks to one credbroker over mTLS with the workload's SVID.
type Client struct {
	cc      *grpc.ClientConn
	creds   pb.CredentialServiceClient
	log     *slog.Logger
	closers []func()
}

// New connects to the broker at addr (host:port). It needs WithServerID
// and one of WithSource, WithWorkloadAPI or WithFiles. gRPC connects
// lazily: a broker that is down shows in the first call, not here.
func New(ctx context.Context, addr string, opts ...Option) (_ *Client, err error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	serverID, err := spiffeid.FromString(o.serverID)
	if err != nil {
		return nil, fmt.Errorf("credbroker client: server id %q: %w", o.serverID, err)
	}
	c := &Client{log: o.log}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	defer func() {
		if err != nil {
			c.closeSources()
		}
	}()
	src := o.source
	n := 0
	for _, set := range []bool{o.source != nil, o.socket != nil, o.files != nil} {
		if set {
			n++
		}
	}
	if n != 1 {
		return nil, errors.New("credbroker client: want exactly one of WithSource, WithWorkloadAPI and WithFiles")
	}
	switch {
	case o.socket != nil:
		s, err := identity.NewWorkloadAPISource(ctx, *o.socket)
		if err != nil {
			return nil, fmt.Errorf("credbroker client: %w", err)
		}
		c.closers = append(c.closers, func() { _ = s.Close() })
		src = s
	case o.files != nil:
		cfg := *o.files
		cfg.TrustDomain = serverID.TrustDomain()
		cfg.Logger = c.log
		s, err := identity.NewFileSource(cfg)
		if err != nil {
			return nil, fmt.Errorf("credbroker client: %w", err)
		}
		rctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); _ = s.Run(rctx) }()
		c.closers = append(c.closers, func() { cancel(); <-done })
		src = s
	}
	dial := append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, serverID))),
	}, o.dialOpts...)
	c.cc, err = grpc.NewClient(addr, dial...)
	if err != nil {
		return nil, fmt.Errorf("credbroker client: %w", err)
	}
	c.creds = pb.NewCredentialServiceClient(c.cc)
	return c, nil
}

// Conn is the client's gRPC connection, for the other services of the
// broker (AdminService, health) over the same mTLS.
func (c *Client) Conn() *grpc.ClientConn { return c.cc }

// Close closes the connection and the SVID source New made. Close the
// watchers first: they revoke their leases through this connection.
func (c *Client) Close() error {
	err := c.cc.Close()
	c.closeSources()
	return err
}

func (c *Client) closeSources() {
	for i := len(c.closers) - 1; i >= 0; i-- {
		c.closers[i]()
	}
	c.closers = nil
}

// RequestOption tunes one credential request.
type RequestOption func(*request)

type request struct{ ttl time.Duration }

// WithTTL asks for a lease of d (the role's default_ttl otherwise; capped
// at its max_ttl by the broker).
func WithTTL(d time.Duration) RequestOption { return func(r *request) { r.ttl = d } }

func requestOf(opts []RequestOption) request {
	var r request
	for _, o := range opts {
		o(&r)
	}
	return r
}

func (r request) ttlPB() *durationpb.Duration {
	if r.ttl == 0 {
		return nil
	}
	return durationpb.New(r.ttl)
}

// Credential issues one credential for role (IssueCredential). Nothing
// renews it: it ends at its lease's expiry, or when Revoke is called with
// its LeaseID. For a credential kept fresh, use Watch.
func (c *Client) Credential(ctx context.Context, role string, opts ...RequestOption) (*Credential, error) {
	r := requestOf(opts)
	resp, err := c.creds.IssueCredential(ctx, &pb.IssueCredentialRequest{Role: role, Ttl: r.ttlPB()})
	if err != nil {
		return nil, fmt.Errorf("credbroker client: issue %q: %w", role, err)
	}
	return credentialOf(resp.GetLease(), resp.GetCredential()), nil
}

// Revoke revokes the lease with id: its user is dropped and its sessions
// ended before Revoke returns. A lease already gone is not an error.
func (c *Client) Revoke(ctx context.Context, leaseID string) error {
	_, err := c.creds.RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: leaseID})
	if err != nil && !isNotFound(err) {
		return fmt.Errorf("credbroker client: revoke %s: %w", leaseID, err)
	}
	return nil
}
