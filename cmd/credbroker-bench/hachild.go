package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/identity"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// haReplicaCmd runs one replica broker in a child process of its own: the
// failover row kills it with SIGKILL, the start row reads its memory from
// /proc, as an operator's would be.
const haReplicaCmd = "__ha-replica"

// haChildOptions are what a replica child is started with.
type haChildOptions struct {
	Schema, Replica, Prefix string
	// Certs holds server.pem, server-key.pem and bundle.pem of the parent's
	// CA (haCA).
	Certs string
	// RevokeConcurrency and RevokeRate: the broker's defaults when 0.
	RevokeConcurrency int
	RevokeRate        float64
}

// haChildReady is the line a child prints once it serves.
type haChildReady struct {
	Addr      string  `json:"addr"`
	ServingMs float64 `json:"serving_ms"` // process start to SERVING over mTLS
}

// haChild is a running replica child.
type haChild struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser // open while the child should serve
	ready haChildReady
	ca    *identity.DevCA
	stop  func() // kills it if still running and waits
}

// haCA makes a CA for replica children and writes its server SVID and
// bundle into a new directory for them.
func (r *runner) haCA() (*identity.DevCA, string, error) {
	ca, err := identity.NewDevCA(benchTD)
	if err != nil {
		return nil, "", err
	}
	dir := r.tmpDir()
	return ca, dir, ca.WriteFiles(dir, map[string]spiffeid.ID{"server": serverID}, identity.SVIDOptions{})
}

// startHAChild starts a replica child and waits until it serves.
func (r *runner) startHAChild(ctx context.Context, ca *identity.DevCA, o haChildOptions) (*haChild, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	args := []string{haReplicaCmd, "-dsn", r.pg.dsn, "-store-dsn", r.store.dsn, "-schema", o.Schema,
		"-replica", o.Replica, "-prefix", o.Prefix, "-certs", o.Certs, "-dir", r.tmpDir(),
		"-revoke-concurrency", strconv.Itoa(o.RevokeConcurrency), "-revoke-rate", strconv.FormatFloat(o.RevokeRate, 'g', -1, 64)}
	cmd := exec.Command(exe, args...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	c := &haChild{cmd: cmd, stdin: stdin, ca: ca, stop: func() {
		_ = cmd.Process.Kill()
		<-done
		_ = stdin.Close()
	}}
	line := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(stdout)
		if sc.Scan() {
			line <- sc.Text()
		}
		close(line)
		_, _ = io.Copy(io.Discard, stdout)
	}()
	select {
	case l, ok := <-line:
		if !ok {
			c.stop()
			return nil, fmt.Errorf("replica %s exited before serving: %s", o.Replica, strings.TrimSpace(stderr.String()))
		}
		if err := json.Unmarshal([]byte(l), &c.ready); err != nil {
			c.stop()
			return nil, fmt.Errorf("replica %s: %q: %w", o.Replica, l, err)
		}
	case <-time.After(2 * time.Minute):
		c.stop()
		return nil, fmt.Errorf("replica %s not serving after 2 minutes", o.Replica)
	case <-ctx.Done():
		c.stop()
		return nil, ctx.Err()
	}
	return c, nil
}

// kill sends SIGKILL, as a crash or an OOM kill would, and waits for it.
func (c *haChild) kill() { c.stop() }

// rss is the child's resident memory (VmRSS), in bytes.
func (c *haChild) rss() (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for l := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			kb, err := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return kb << 10, err
		}
	}
	return 0, fmt.Errorf("no VmRSS for pid %d", c.cmd.Process.Pid)
}

// clients opens n mTLS connections to the child as the bench's workload.
func (c *haChild) clients(n int) ([]pb.CredentialServiceClient, func(), error) {
	src, err := c.ca.Source(clientID)
	if err != nil {
		return nil, nil, err
	}
	var conns []*grpc.ClientConn
	closeAll := func() {
		for _, cc := range conns {
			cc.Close()
		}
	}
	out := make([]pb.CredentialServiceClient, n)
	for i := range out {
		cc, err := grpc.NewClient(c.ready.Addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, serverID))))
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		conns = append(conns, cc)
		out[i] = pbCreds(cc)
	}
	return out, closeAll, nil
}

// haReplicaChild is the child side: a broker on the given store schema,
// serving until it is killed or its parent goes away.
func haReplicaChild(args []string, stdout io.Writer) error {
	start := time.Now()
	fs := flag.NewFlagSet(haReplicaCmd, flag.ContinueOnError)
	dsn := fs.String("dsn", "", "")
	storeDSN := fs.String("store-dsn", "", "")
	schema := fs.String("schema", "", "")
	replica := fs.String("replica", "", "")
	prefix := fs.String("prefix", "", "")
	certs := fs.String("certs", "", "")
	dir := fs.String("dir", "", "")
	revConc := fs.Int("revoke-concurrency", 0, "")
	revRate := fs.Float64("revoke-rate", 0, "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The parent's death ends the child too (no replica left behind).
	_ = setParentDeathSignal()
	pg, err := openPGEnv(ctx, *dsn)
	if err != nil {
		return err
	}
	defer pg.Close()
	store, err := openPGEnv(ctx, *storeDSN)
	if err != nil {
		return err
	}
	defer store.Close()
	// The server's SVID; the health check below presents it too.
	src, err := identity.NewFileSource(identity.FileSourceConfig{
		CertFile: filepath.Join(*certs, "server.pem"), KeyFile: filepath.Join(*certs, "server-key.pem"),
		BundleFile: filepath.Join(*certs, "bundle.pem"), TrustDomain: benchTD,
	})
	if err != nil {
		return err
	}
	b, err := pg.newBrokerSource(ctx, brokerOptions{
		Dir: *dir, Prefix: *prefix, MaxConns: 32, RevokeConcurrency: *revConc, RevokeRate: *revRate,
		Store: &storeOptions{Server: store, Schema: *schema, Replica: *replica},
	}, src)
	if err != nil {
		return err
	}
	b.serve(ctx)
	defer b.stop()

	// Serving: the first health check over mTLS that answers SERVING, as
	// a load balancer's would.
	cc, err := grpc.NewClient(b.addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, serverID))))
	if err != nil {
		return err
	}
	defer cc.Close()
	if err := waitServing(ctx, cc, start.Add(time.Minute)); err != nil {
		return err
	}
	if err := json.NewEncoder(stdout).Encode(haChildReady{Addr: b.addr, ServingMs: ms2(time.Since(start))}); err != nil {
		return err
	}
	// Serve until killed, or until the parent closes our stdin.
	_, _ = io.Copy(io.Discard, os.Stdin)
	return nil
}
