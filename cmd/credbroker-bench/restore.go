package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/postgres"
)

// restoreChildCmd runs one broker start in a child process, so that its
// memory is measured alone.
const restoreChildCmd = "__restore-child"

// restore writes N ACTIVE leases into a bbolt store directly, then starts a
// broker on it in a fresh process, twice: as broker.NewApp wires it today
// (Manager.Load before serving), and with the deferred restore
// (Manager.DeferLoad: serve first, restore in Run) assembled here the same
// way, which NewApp does not use yet.
func (r *runner) restore(ctx context.Context) error {
	n := r.sizes.restore
	path := filepath.Join(r.tmpDir(), "leases.db")
	start := time.Now()
	if err := writeLeases(ctx, path, n); err != nil {
		return err
	}
	info, err := os.Stat(path)
	if err != nil {
		return err
	}
	fmt.Fprintf(r.log, "bench: wrote %d leases (%d MB) in %s\n", n, info.Size()>>20, time.Since(start).Round(time.Millisecond))

	for _, mode := range []string{"load", "deferred"} {
		res, err := r.runRestoreChild(ctx, path, mode)
		if err != nil {
			return fmt.Errorf("restore %s: %w", mode, err)
		}
		row := Row{Scenario: "restore-1M " + mode, N: n, Concurrency: 1}
		row.WallS = round2(res.HeapMs / 1000)
		row.Extra = map[string]float64{
			"serving_ms":            res.ServingMs,
			"full_heap_ms":          res.HeapMs,
			"first_issue_ms":        res.FirstIssueMs,
			"open_ms":               res.OpenMs,
			"rss_delta_mb":          mb(res.RSSHeap - res.RSSBefore),
			"rss_bytes_per_lease":   round2(float64(res.RSSHeap-res.RSSBefore) / float64(n)),
			"anon_bytes_per_lease":  round2(float64(res.AnonHeap-res.AnonBefore) / float64(n)),
			"file_bytes_per_lease":  round2(float64(res.FileHeap-res.FileBefore) / float64(n)),
			"settled_rss_per_lease": round2(float64(res.RSSSettled-res.RSSBefore) / float64(n)),
			"peak_rss_mb":           mb(res.HWM),
			"store_mb":              mb(info.Size()),
		}
		how := "broker.NewApp as wired: Manager.Load before serving"
		if mode == "deferred" {
			how = "Manager.DeferLoad (checks every record, serves, restores in Run); assembled like NewApp, which does not call it yet"
		}
		row.Notes = fmt.Sprintf("%s; serving %.0f ms, full heap %.0f ms, first IssueCredential %.0f ms; RSS +%.0f MB = %.0f B/lease (anon %.0f, store mmap %.0f; after GC+scavenge %.0f); targets: serving ≤ 1000 ms, heap ≤ 5000 ms, ≤ 512 B/lease",
			how, res.ServingMs, res.HeapMs, res.FirstIssueMs, mb(res.RSSHeap-res.RSSBefore),
			row.Extra["rss_bytes_per_lease"], row.Extra["anon_bytes_per_lease"], row.Extra["file_bytes_per_lease"], row.Extra["settled_rss_per_lease"])
		if res.Err != "" {
			row.Errors = 1
			row.Notes += "; error: " + res.Err
		}
		r.report.add(row)
	}
	return nil
}

func mb(b int64) float64 { return round2(float64(b) / (1 << 20)) }

// writeLeases fills a new store with n ACTIVE leases of the group role,
// owned by 100 workloads, expiring over the next day (none during the
// bench). IDs are sorted so that bulk transactions append.
func writeLeases(ctx context.Context, path string, n int) error {
	s, err := lease.OpenBolt(path)
	if err != nil {
		return err
	}
	defer s.Close()
	ids := make([]string, n)
	buf := make([]byte, 16)
	for i := range ids {
		_, _ = rand.Read(buf)
		ids[i] = hex.EncodeToString(buf)
	}
	slices.Sort(ids)
	now := time.Now().UTC()
	var owners [100]string
	for i := range owners {
		owners[i] = fmt.Sprintf("spiffe://example.org/bench/workload-%02d", i)
	}
	const chunk = 50_000
	batch := make([]lease.Lease, 0, chunk)
	for i, id := range ids {
		exp := now.Add(2*time.Hour + time.Duration(i%86400)*time.Second)
		batch = append(batch, lease.Lease{
			ID: id, Role: "group", Owner: owners[i%len(owners)], Database: "main",
			Username:  newUsername(brokerPrefix, "group"),
			IssueTime: now, ExpireTime: exp, MaxExpireTime: now.Add(48 * time.Hour),
			State: lease.StateActive,
		})
		if len(batch) == chunk || i == len(ids)-1 {
			if err := s.PutAll(ctx, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	return s.Close()
}

// restoreResult is what the child reports, as one JSON line.
type restoreResult struct {
	OpenMs       float64 `json:"open_ms"`
	ServingMs    float64 `json:"serving_ms"`
	HeapMs       float64 `json:"heap_ms"`
	FirstIssueMs float64 `json:"first_issue_ms"`
	RSSBefore    int64   `json:"rss_before"`
	RSSHeap      int64   `json:"rss_heap"`
	RSSSettled   int64   `json:"rss_settled"`
	AnonBefore   int64   `json:"anon_before"`
	AnonHeap     int64   `json:"anon_heap"`
	FileBefore   int64   `json:"file_before"`
	FileHeap     int64   `json:"file_heap"`
	HWM          int64   `json:"hwm"`
	Err          string  `json:"error,omitempty"`
}

func (r *runner) runRestoreChild(ctx context.Context, path, mode string) (restoreResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return restoreResult{}, err
	}
	cmd := exec.CommandContext(ctx, exe, restoreChildCmd, "-store", path, "-mode", mode, "-dsn", r.pg.dsn)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return restoreResult{}, fmt.Errorf("%w: %s", err, strings.TrimSpace(errb.String()))
	}
	var res restoreResult
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		return restoreResult{}, fmt.Errorf("child output %q: %w", out.String(), err)
	}
	return res, nil
}

// procStatus reads VmRSS, RssAnon, RssFile and VmHWM from /proc/self/status.
func procStatus() (rss, anon, file, hwm int64) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(v)
		if len(fields) == 0 {
			continue
		}
		kb, _ := strconv.ParseInt(fields[0], 10, 64)
		switch k {
		case "VmRSS":
			rss = kb << 10
		case "RssAnon":
			anon = kb << 10
		case "RssFile":
			file = kb << 10
		case "VmHWM":
			hwm = kb << 10
		}
	}
	return
}

// restoreChild is the child side: start a broker on the store, time it
// until it serves and until every lease is restored, and report memory.
func restoreChild(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet(restoreChildCmd, flag.ContinueOnError)
	store := fs.String("store", "", "")
	mode := fs.String("mode", "load", "")
	dsn := fs.String("dsn", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if p := os.Getenv("CREDBROKER_BENCH_CHILD_CPUPROFILE"); p != "" {
		f, err := os.Create(p + "." + *mode)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	pg, err := openPGEnv(ctx, *dsn)
	if err != nil {
		return err
	}
	defer pg.Close()
	ca, err := identity.NewDevCA(benchTD)
	if err != nil {
		return err
	}
	var res restoreResult
	runtime.GC()
	res.RSSBefore, res.AnonBefore, res.FileBefore, _ = procStatus()

	start := time.Now()
	var (
		srv      *childBroker
		restored <-chan struct{}
	)
	switch *mode {
	case "load":
		b, err := pg.newBrokerCA(ctx, brokerOptions{StorePath: *store, Prefix: brokerPrefix}, ca)
		if err != nil {
			return err
		}
		// NewApp returned: Load has restored and queued every lease.
		res.OpenMs = ms2(time.Since(start))
		res.HeapMs = res.OpenMs
		b.serve(ctx)
		defer b.stop()
		srv = &childBroker{addr: b.addr, ca: ca}
	case "deferred":
		d, err := startDeferred(ctx, pg, *store, ca)
		if err != nil {
			return err
		}
		res.OpenMs = ms2(time.Since(start))
		defer d.stop()
		srv = &childBroker{addr: d.addr, ca: ca}
		restored = d.manager.Restored()
	default:
		return fmt.Errorf("unknown mode %q", *mode)
	}

	// Serving: the first health check over mTLS that answers SERVING.
	cc, err := srv.dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	hc := healthpb.NewHealthClient(cc)
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		resp, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		ccancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			break
		}
		if time.Since(start) > 2*time.Minute {
			return fmt.Errorf("not serving after 2 minutes: %v", err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	res.ServingMs = ms2(time.Since(start))
	// A new credential can be issued at once, whatever the restore is doing.
	if _, err := pbCreds(cc).IssueCredential(ctx, issueReq("group", issueTTL)); err != nil {
		res.Err = "first IssueCredential: " + err.Error()
	}
	res.FirstIssueMs = ms2(time.Since(start))
	if restored != nil {
		<-restored
		res.HeapMs = ms2(time.Since(start))
	}
	res.RSSHeap, res.AnonHeap, res.FileHeap, res.HWM = procStatus()
	runtime.GC()
	debug.FreeOSMemory()
	res.RSSSettled, _, _, _ = procStatus()
	// The one issued lease must not outlive the child: revoke it through
	// the plugin (cleanup, not measured).
	_ = pg.dropUsers(ctx, brokerPrefix)
	return json.NewEncoder(stdout).Encode(res)
}

type childBroker struct {
	addr string
	ca   *identity.DevCA
}

func (c *childBroker) dial() (*grpc.ClientConn, error) {
	src, err := c.ca.Source(clientID)
	if err != nil {
		return nil, err
	}
	return grpc.NewClient(c.addr, grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(src, serverID))))
}

// deferredBroker is the broker's own components assembled as broker.NewApp
// does, except that the lease manager restores with DeferLoad.
type deferredBroker struct {
	addr    string
	manager *lease.Manager
	grpc    *grpc.Server
	db      plugins.Database
	store   *lease.BoltStore
	cancel  context.CancelFunc
	done    chan struct{}
}

func startDeferred(ctx context.Context, pg *pgEnv, path string, ca *identity.DevCA) (*deferredBroker, error) {
	log := slog.New(slog.NewJSONHandler(io.Discard, &slog.HandlerOptions{Level: slog.LevelInfo}))
	src, err := ca.Source(serverID)
	if err != nil {
		return nil, err
	}
	store, err := lease.OpenBolt(path, lease.WithMustExist())
	if err != nil {
		return nil, err
	}
	c := pg.cfg.ConnConfig
	pdb, err := postgres.New(ctx, postgres.Config{
		Host: c.Host, Port: int(c.Port), Database: c.Database, Username: c.User, Password: c.Password,
		SSLMode: "disable", MaxConns: 8, Prefix: brokerPrefix, Marker: benchMarker, Lazy: true,
	})
	if err != nil {
		store.Close()
		return nil, err
	}
	db := plugins.Sanitized(pdb)
	main := &broker.Database{Name: "main", Plugin: "postgres", Host: c.Host, Port: int(c.Port), DBName: c.Database, SSLMode: "disable", DB: db}
	m, err := lease.NewManager(lease.Config{Store: store, Backend: pluginBackend{db}, Logger: log})
	if err != nil {
		return nil, err
	}
	if err := m.DeferLoad(ctx); err != nil {
		return nil, err
	}
	roles := map[string]*broker.Role{}
	for _, t := range templates {
		roles[t.Name] = &broker.Role{
			Name: t.Name, Database: main, DefaultTTL: time.Hour, MaxTTL: 24 * time.Hour,
			Allowed:            []identity.Pattern{identity.MustParsePattern("spiffe://example.org/bench/*")},
			CreationStatements: t.Stmts,
		}
	}
	srv := broker.NewServer(broker.ServerConfig{
		Roles: roles, Databases: map[string]*broker.Database{"main": main}, Leases: m,
		Admins: identity.NewAdminSet(nil), Logger: log,
	})
	g := grpc.NewServer(
		grpc.Creds(credentials.NewTLS(identity.ServerTLSConfig(src, benchTD))),
		grpc.ChainUnaryInterceptor(srv.UnaryAuth),
		grpc.ChainStreamInterceptor(srv.StreamAuth),
	)
	srv.Register(g)
	hs := health.NewServer()
	healthpb.RegisterHealthServer(g, hs)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	rctx, cancel := context.WithCancel(ctx)
	d := &deferredBroker{addr: lis.Addr().String(), manager: m, grpc: g, db: db, store: store, cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(d.done)
		_ = m.Run(rctx)
	}()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	go func() { _ = g.Serve(lis) }()
	return d, nil
}

func (d *deferredBroker) stop() {
	d.grpc.Stop()
	d.cancel()
	<-d.done
	d.db.Close()
	d.store.Close()
}

// pluginBackend is broker's backend for one database.
type pluginBackend struct{ db plugins.Database }

func (b pluginBackend) Drop(ctx context.Context, l lease.Lease) error {
	return b.db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: l.Username, Statements: l.RevocationStatements})
}

func (b pluginBackend) Extend(ctx context.Context, l lease.Lease) error {
	return b.db.UpdateUser(ctx, plugins.UpdateUserRequest{Username: l.Username, Expiration: l.ExpireTime})
}
