package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/identity"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// The operator commands (leases, workload, orphans, roles) are thin clients
// of AdminService: flags in, one connection over mTLS with the operator's
// SVID, the responses printed as a table or as protojson. Usage errors exit
// with status 2 (as every other command), failed calls with status 1.

// callError is an error met after the command line was accepted: a call the
// broker refused, a connection that failed, an SVID that did not load. main
// exits with status 1 for it, 2 for anything else (usage).
type callError struct{ err error }

func (e *callError) Error() string { return e.err.Error() }
func (e *callError) Unwrap() error { return e.err }

// failed wraps err of command cmd as a callError. A gRPC status is shown as
// its canonical code name and message ("PERMISSION_DENIED: caller is not an
// admin"), the way the wire contract names codes.
func failed(cmd string, err error) error {
	if s, ok := status.FromError(err); ok {
		return &callError{fmt.Errorf("%s: %s: %s", cmd, code.Code(s.Code()), s.Message())}
	}
	return &callError{fmt.Errorf("%s: %w", cmd, err)}
}

// defaultAddr is the broker address the operator commands dial when -addr
// is not given: the listen address of deploy/credbroker.yaml.
const defaultAddr = "127.0.0.1:8443"

// clientFlags are the flags every operator command takes.
type clientFlags struct {
	addr        string
	cert        string
	key         string
	bundle      string
	workloadAPI string
	serverID    string
	output      string
	timeout     time.Duration
}

func (c *clientFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&c.addr, "addr", defaultAddr, "broker address host:port")
	fs.StringVar(&c.cert, "cert", "", "the operator's X.509-SVID certificate (PEM); with -key and -bundle")
	fs.StringVar(&c.key, "key", "", "the SVID's private key (PEM, PKCS#8)")
	fs.StringVar(&c.bundle, "bundle", "", "the trust bundle of the SVID's trust domain (PEM)")
	fs.StringVar(&c.workloadAPI, "workload-api", "", "SPIFFE Workload API address, e.g. unix:///run/spire/agent.sock (default $SPIFFE_ENDPOINT_SOCKET; used when -cert is not given)")
	fs.StringVar(&c.serverID, "server-id", "", "the broker's SPIFFE ID (default: any ID in the operator's trust domain)")
	fs.StringVar(&c.output, "o", "table", "output: table or json")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Second, "time allowed for the whole command, SVID fetch included")
}

// check reports a usage error in the flags, before anything is dialled.
func (c *clientFlags) check() error {
	if c.output != "table" && c.output != "json" {
		return fmt.Errorf("-o must be table or json, not %q", c.output)
	}
	if c.timeout <= 0 {
		return fmt.Errorf("-timeout must be positive")
	}
	if c.addr == "" {
		return fmt.Errorf("-addr is required")
	}
	files := c.cert != "" || c.key != "" || c.bundle != ""
	switch {
	case files && (c.cert == "" || c.key == "" || c.bundle == ""):
		return fmt.Errorf("-cert, -key and -bundle go together")
	case files && c.workloadAPI != "":
		return fmt.Errorf("give either -cert/-key/-bundle or -workload-api, not both")
	case !files && c.workloadAPI == "" && os.Getenv("SPIFFE_ENDPOINT_SOCKET") == "":
		return fmt.Errorf("no SVID: give -cert, -key and -bundle, or -workload-api (or set SPIFFE_ENDPOINT_SOCKET)")
	}
	if c.serverID != "" {
		if _, err := spiffeid.FromString(c.serverID); err != nil {
			return fmt.Errorf("-server-id: %w", err)
		}
	}
	return nil
}

// dial returns an AdminService client over mTLS with the operator's SVID,
// and a function closing the connection and the SVID source.
func (c *clientFlags) dial(ctx context.Context) (pb.AdminServiceClient, func(), error) {
	src, closeSrc, err := c.source(ctx)
	if err != nil {
		return nil, nil, err
	}
	svid, err := src.GetX509SVID()
	if err != nil {
		closeSrc()
		return nil, nil, fmt.Errorf("get svid: %w", err)
	}
	tlsCfg := identity.ClientTLSConfigMemberOf(src, svid.ID.TrustDomain())
	if c.serverID != "" {
		tlsCfg = identity.ClientTLSConfig(src, spiffeid.RequireFromString(c.serverID))
	}
	cc, err := grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		closeSrc()
		return nil, nil, fmt.Errorf("dial %s: %w", c.addr, err)
	}
	return pb.NewAdminServiceClient(cc), func() { cc.Close(); closeSrc() }, nil
}

// source loads the operator's SVID from files (read once: a command is
// short-lived) or fetches it from the Workload API.
func (c *clientFlags) source(ctx context.Context) (identity.Source, func(), error) {
	if c.cert == "" {
		src, err := identity.NewWorkloadAPISource(ctx, c.workloadAPI)
		if err != nil {
			return nil, nil, err
		}
		return src, func() { src.Close() }, nil
	}
	// The file source wants the trust domain; it is the SVID's own.
	svid, err := x509svid.Load(c.cert, c.key)
	if err != nil {
		return nil, nil, fmt.Errorf("load svid from %q and %q: %w", c.cert, c.key, err)
	}
	src, err := identity.NewFileSource(identity.FileSourceConfig{
		CertFile:    c.cert,
		KeyFile:     c.key,
		BundleFile:  c.bundle,
		TrustDomain: svid.ID.TrustDomain(),
	})
	if err != nil {
		return nil, nil, err
	}
	return src, func() {}, nil
}

// adminCall runs one operator command: it dials, calls do under the
// command's timeout and turns any failure into a callError.
func (c *clientFlags) adminCall(ctx context.Context, cmd string, do func(context.Context, pb.AdminServiceClient) error) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	client, closeFn, err := c.dial(ctx)
	if err != nil {
		return failed(cmd, err)
	}
	defer closeFn()
	if err := do(ctx, client); err != nil {
		var ce *callError
		if errors.As(err, &ce) {
			return err
		}
		return failed(cmd, err)
	}
	return nil
}

// parseInterspersed parses fs over args allowing flags after positional
// arguments too ("workload deregister ID -addr host:port"), and returns the
// positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return pos, nil
		}
		pos = append(pos, rest[0])
		args = rest[1:]
	}
}

// newCLIFlagSet is a flag set for command name with the common client flags
// registered and a usage line that lists them.
func newCLIFlagSet(name, synopsis string, stderr io.Writer, c *clientFlags) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.register(fs)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: credbroker %s\n\nflags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}
