// Package spiretest runs a real SPIRE server and agent (v1.13.3) for
// integration tests: no mocks, the same binaries and APIs as production.
//
// [Start] brings up, in a fresh temporary directory, a server with a SQLite
// datastore and join-token node attestation listening on a free 127.0.0.1
// port, and one agent attested with a join token that serves the Workload API
// on a unix socket with the unix workload attestor. Entries are managed over
// the server's admin socket. Entry changes reach the Workload API within about
// a second (see the intervals in config.go).
//
// The binaries are found through CREDBROKER_TEST_SPIRE_BIN, which `make test`
// sets from scripts/spire-tools.sh. Tests never skip without them: a missing
// SPIRE is a broken test setup, and a skip would hide it.
package spiretest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	agentv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/agent/v1"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health/grpc_health_v1"
)

// BinDirVar names the environment variable holding the directory of the
// spire-server and spire-agent binaries.
const BinDirVar = "CREDBROKER_TEST_SPIRE_BIN"

// keepVar, when set, keeps each instance's directory (configs, data, logs)
// after the test, for debugging.
const keepVar = "CREDBROKER_TEST_KEEP_SPIRE"

const binHint = "run `make test`, or by hand: " + BinDirVar + "=$(scripts/spire-tools.sh) go test ./..." +
	" (the first build of SPIRE takes about 10 minutes, then it is cached)"

// How long Start and FetchX509 wait for SPIRE before failing the test.
const (
	startTimeout     = 60 * time.Second
	propagateTimeout = 30 * time.Second
)

// Options configures Start.
type Options struct {
	// TrustDomain of the server and agent; "example.org" when empty.
	TrustDomain string
	// BinDir holds spire-server and spire-agent; the CREDBROKER_TEST_SPIRE_BIN
	// environment variable when empty.
	BinDir string
}

// SPIRE is a running server and agent. Its methods that take a testing.TB fail
// that test on error; they are safe for concurrent use.
type SPIRE struct {
	td      spiffeid.TrustDomain
	binDir  string
	dir     string // 0755, so other users reach the Workload API socket
	port    int
	agentID spiffeid.ID

	serverSocket string // admin API, no authentication: in a 0700 directory
	agentSocket  string
	admin        *grpc.ClientConn

	mu       sync.Mutex
	server   *process
	agent    *process
	agentBin string // a copy of spire-agent that any user may run; see FetchX509
}

// BinDir returns the directory named by CREDBROKER_TEST_SPIRE_BIN, failing t
// with a hint when it is unset or lacks a binary.
func BinDir(t testing.TB) string {
	t.Helper()
	dir := os.Getenv(BinDirVar)
	if dir == "" {
		t.Fatalf("spiretest: %s is not set; %s", BinDirVar, binHint)
	}
	checkBinDir(t, dir)
	return dir
}

func checkBinDir(t testing.TB, dir string) {
	t.Helper()
	for _, bin := range []string{"spire-server", "spire-agent"} {
		if _, err := exec.LookPath(filepath.Join(dir, bin)); err != nil {
			t.Fatalf("spiretest: %s: %v; %s", bin, err, binHint)
		}
	}
}

// Start runs a SPIRE server and an attested agent until the test ends.
func Start(t testing.TB, opts Options) *SPIRE {
	t.Helper()
	if opts.BinDir == "" {
		opts.BinDir = BinDir(t)
	} else {
		checkBinDir(t, opts.BinDir)
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "example.org"
	}
	td, err := spiffeid.TrustDomainFromString(opts.TrustDomain)
	if err != nil {
		t.Fatalf("spiretest: trust domain: %v", err)
	}

	// Not t.TempDir: unix socket paths are limited to 108 bytes and test names
	// can be long.
	dir, err := os.MkdirTemp("", "spire-")
	if err != nil {
		t.Fatalf("spiretest: %v", err)
	}
	s := &SPIRE{
		td:           td,
		binDir:       opts.BinDir,
		dir:          dir,
		serverSocket: filepath.Join(dir, "server", "private", "api.sock"),
		agentSocket:  filepath.Join(dir, "agent", "public", "api.sock"),
	}
	t.Cleanup(func() { s.stop(t) })
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{dir, 0o755},
		{filepath.Join(dir, "server"), 0o700},
		{filepath.Join(dir, "server", "private"), 0o700},
		{filepath.Join(dir, "agent"), 0o755},
	} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			t.Fatalf("spiretest: %v", err)
		}
		if err := os.Chmod(d.path, d.mode); err != nil { // MkdirTemp made dir 0700
			t.Fatalf("spiretest: %v", err)
		}
	}

	s.admin, err = dialUnix(s.serverSocket)
	if err != nil {
		t.Fatalf("spiretest: admin client: %v", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	if err := s.startServer(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s.startAgent(ctx); err != nil {
		t.Fatal(err)
	}
	return s
}

// TrustDomain returns the trust domain of the server and agent.
func (s *SPIRE) TrustDomain() spiffeid.TrustDomain { return s.td }

// WorkloadAPIAddr returns the agent's Workload API address, "unix:///...".
func (s *SPIRE) WorkloadAPIAddr() string { return "unix://" + s.agentSocket }

// ServerAddr returns the server API address (host:port), served over mTLS
// with the server's SVID.
func (s *SPIRE) ServerAddr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port))
}

// ServerID returns the SPIFFE ID of the server's SVID.
func (s *SPIRE) ServerID() spiffeid.ID {
	return spiffeid.RequireFromPath(s.td, "/spire/server")
}

// AgentID returns the SPIFFE ID of the agent, the parent of entries made
// by CreateEntry.
func (s *SPIRE) AgentID() spiffeid.ID { return s.agentID }

// Dir returns the temporary directory holding configurations, data and the
// logs server.log and agent.log.
func (s *SPIRE) Dir() string { return s.dir }

// CreateEntry registers spiffeID for workloads on the agent matching all
// selectors ("type:value", for example "unix:uid:0") and returns the entry
// ID. An admin entry's SVID may call the server API.
func (s *SPIRE) CreateEntry(t testing.TB, spiffeID string, selectors []string, admin bool, dnsNames []string) string {
	t.Helper()
	id, err := spiffeid.FromString(spiffeID)
	if err != nil {
		t.Fatalf("spiretest: create entry: %v", err)
	}
	entry := &types.Entry{
		SpiffeId: &types.SPIFFEID{TrustDomain: id.TrustDomain().Name(), Path: id.Path()},
		ParentId: &types.SPIFFEID{TrustDomain: s.td.Name(), Path: s.agentID.Path()},
		Admin:    admin,
		DnsNames: dnsNames,
	}
	for _, sel := range selectors {
		typ, value, ok := strings.Cut(sel, ":")
		if !ok || typ == "" || value == "" {
			t.Fatalf("spiretest: create entry: selector %q is not type:value", sel)
		}
		entry.Selectors = append(entry.Selectors, &types.Selector{Type: typ, Value: value})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := entryv1.NewEntryClient(s.admin).BatchCreateEntry(ctx, &entryv1.BatchCreateEntryRequest{
		Entries: []*types.Entry{entry},
	})
	if err != nil {
		t.Fatalf("spiretest: create entry %s: %v", spiffeID, err)
	}
	if len(resp.Results) != 1 {
		t.Fatalf("spiretest: create entry %s: %d results", spiffeID, len(resp.Results))
	}
	r := resp.Results[0]
	if c := codes.Code(r.GetStatus().GetCode()); c != codes.OK {
		t.Fatalf("spiretest: create entry %s: %s: %s", spiffeID, c, r.GetStatus().GetMessage())
	}
	return r.GetEntry().GetId()
}

// DeleteEntry deletes the entry with ID id.
func (s *SPIRE) DeleteEntry(t testing.TB, id string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := entryv1.NewEntryClient(s.admin).BatchDeleteEntry(ctx, &entryv1.BatchDeleteEntryRequest{Ids: []string{id}})
	if err != nil {
		t.Fatalf("spiretest: delete entry %s: %v", id, err)
	}
	if len(resp.Results) != 1 {
		t.Fatalf("spiretest: delete entry %s: %d results", id, len(resp.Results))
	}
	if c := codes.Code(resp.Results[0].GetStatus().GetCode()); c != codes.OK {
		t.Fatalf("spiretest: delete entry %s: %s: %s", id, c, resp.Results[0].GetStatus().GetMessage())
	}
}

// StopServer stops the SPIRE server, leaving the agent running: the server
// API becomes unreachable, as in an outage.
func (s *SPIRE) StopServer(t testing.TB) {
	t.Helper()
	s.mu.Lock()
	p := s.server
	s.mu.Unlock()
	if p != nil {
		p.stop()
	}
}

// StartServer starts the server again after StopServer, on the same port and
// with the same data: entries, CA and bundle survive.
func (s *SPIRE) StartServer(t testing.TB) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), startTimeout)
	defer cancel()
	s.mu.Lock()
	port := s.port
	s.mu.Unlock()
	if err := s.runServer(ctx, port); err != nil {
		t.Fatal(err)
	}
}

func (s *SPIRE) startServer(ctx context.Context) error {
	// A free port can be taken between Listen's close and SPIRE's bind; try
	// another one then.
	for attempt := 0; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return err
		}
		err = s.runServer(ctx, port)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errAddrInUse) || attempt == 2 {
			return err
		}
	}
}

func (s *SPIRE) runServer(ctx context.Context, port int) error {
	conf := filepath.Join(s.dir, "server", "server.conf")
	dataDir := filepath.Join(s.dir, "server", "data")
	if err := writeFile(conf, serverConfig(s.td.Name(), port, s.serverSocket, dataDir)); err != nil {
		return fmt.Errorf("spiretest: server config: %w", err)
	}
	p, err := startProcess("spire-server", filepath.Join(s.dir, "server.log"),
		filepath.Join(s.binDir, "spire-server"), "run", "-config", conf)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.server, s.port = p, port
	s.mu.Unlock()
	if err := waitHealthy(ctx, s.admin, p); err != nil {
		p.stop()
		if p.logContains("address already in use") {
			return errAddrInUse
		}
		return fmt.Errorf("spiretest: spire-server did not become healthy: %w\n--- server.log (tail)\n%s", err, p.logTail(40))
	}
	return nil
}

func (s *SPIRE) startAgent(ctx context.Context) error {
	resp, err := agentv1.NewAgentClient(s.admin).CreateJoinToken(ctx, &agentv1.CreateJoinTokenRequest{Ttl: 600})
	if err != nil {
		return fmt.Errorf("spiretest: join token: %w", err)
	}
	token := resp.GetValue()
	s.agentID = spiffeid.RequireFromSegments(s.td, "spire", "agent", "join_token", token)

	conf := filepath.Join(s.dir, "agent", "agent.conf")
	dataDir := filepath.Join(s.dir, "agent", "data")
	if err := writeFile(conf, agentConfig(s.td.Name(), s.port, token, s.agentSocket, dataDir)); err != nil {
		return fmt.Errorf("spiretest: agent config: %w", err)
	}
	p, err := startProcess("spire-agent", filepath.Join(s.dir, "agent.log"),
		filepath.Join(s.binDir, "spire-agent"), "run", "-config", conf)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.agent = p
	s.mu.Unlock()

	// The agent serves health on its Workload API socket once it has
	// attested and synced with the server.
	cc, err := dialUnix(s.agentSocket)
	if err != nil {
		return fmt.Errorf("spiretest: agent health client: %w", err)
	}
	defer cc.Close()
	if err := waitHealthy(ctx, cc, p); err != nil {
		p.stop()
		return fmt.Errorf("spiretest: spire-agent did not become healthy: %w\n--- agent.log (tail)\n%s", err, p.logTail(40))
	}
	return nil
}

// waitHealthy polls the gRPC health service behind cc until it reports
// SERVING, p exits, or ctx ends.
func waitHealthy(ctx context.Context, cc *grpc.ClientConn, p *process) error {
	health := grpc_health_v1.NewHealthClient(cc)
	var last error
	for {
		if err := p.exitErr(); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		resp, err := health.Check(cctx, &grpc_health_v1.HealthCheckRequest{})
		cancel()
		switch {
		case err != nil:
			last = err
		case resp.GetStatus() == grpc_health_v1.HealthCheckResponse_SERVING:
			return nil
		default:
			last = fmt.Errorf("health %s", resp.GetStatus())
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last check: %v)", ctx.Err(), last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// dialUnix returns a client for a local SPIRE socket. It reconnects quickly:
// gRPC's default backoff grows to two minutes, longer than a test waits for a
// server that is starting or restarting.
func dialUnix(path string) (*grpc.ClientConn, error) {
	return grpc.NewClient("unix://"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  50 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   500 * time.Millisecond,
			},
			MinConnectTimeout: 2 * time.Second,
		}))
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("spiretest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// stop ends the agent, then the server, and removes the directory; when the
// test failed it first logs the tail of both logs.
func (s *SPIRE) stop(t testing.TB) {
	s.mu.Lock()
	server, agent := s.server, s.agent
	s.mu.Unlock()
	if t.Failed() {
		for _, p := range []*process{server, agent} {
			if p != nil {
				t.Logf("spiretest: --- %s (tail)\n%s", filepath.Base(p.logPath), p.logTail(60))
			}
		}
		t.Logf("spiretest: set %s=1 to keep the full logs and data in %s", keepVar, s.dir)
	}
	if agent != nil {
		agent.stop()
	}
	if server != nil {
		server.stop()
	}
	if s.admin != nil {
		s.admin.Close()
	}
	if os.Getenv(keepVar) != "" {
		t.Logf("spiretest: kept %s (%s is set)", s.dir, keepVar)
		return
	}
	if err := os.RemoveAll(s.dir); err != nil {
		t.Errorf("spiretest: remove %s: %v", s.dir, err)
	}
}
