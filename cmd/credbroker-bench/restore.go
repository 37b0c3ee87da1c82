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
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/boltstore"
)

// restoreChildCmd runs one broker start in a child process, so that its
// memory is measured alone.
const restoreChildCmd = "__restore-child"

// restore writes N ACTIVE leases into a bbolt store directly, then starts a
// broker on it (broker.NewApp, as cmd/credbroker does) in a fresh process:
// time to serving, time until every lease is restored and queued, memory.
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

	{
		res, err := r.runRestoreChild(ctx, path)
		if err != nil {
			return fmt.Errorf("restore: %w", err)
		}
		row := Row{Scenario: "restore-1M", N: n, Concurrency: 1}
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
		row.Notes = fmt.Sprintf("broker.NewApp (every record checked, then served, leases restored in Run); serving %.0f ms, full heap %.0f ms, first IssueCredential %.0f ms; RSS +%.0f MB = %.0f B/lease (anon %.0f, store mmap %.0f; after GC+scavenge %.0f); targets: serving ≤ 1000 ms, heap ≤ 5000 ms, ≤ 512 B/lease",
			res.ServingMs, res.HeapMs, res.FirstIssueMs, mb(res.RSSHeap-res.RSSBefore),
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
	s, err := boltstore.Open(path)
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

func (r *runner) runRestoreChild(ctx context.Context, path string) (restoreResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return restoreResult{}, err
	}
	cmd := exec.CommandContext(ctx, exe, restoreChildCmd, "-store", path, "-dsn", r.pg.dsn)
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
	dsn := fs.String("dsn", "", "")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if p := os.Getenv("CREDBROKER_BENCH_CHILD_CPUPROFILE"); p != "" {
		f, err := os.Create(p)
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
	b, err := pg.newBrokerCA(ctx, brokerOptions{StorePath: *store, Prefix: brokerPrefix}, ca)
	if err != nil {
		return err
	}
	// NewApp returned: every record is checked; the restore runs in Run.
	res.OpenMs = ms2(time.Since(start))
	b.serve(ctx)
	defer b.stop()
	srv := &childBroker{addr: b.addr, ca: ca}
	m, ok := b.app.Manager().(*lease.Manager)
	if !ok {
		return fmt.Errorf("restore: the broker's lease manager is %T, want *lease.Manager (a bbolt store)", b.app.Manager())
	}
	restored := m.Restored()

	// Serving: the first health check over mTLS that answers SERVING.
	cc, err := srv.dial()
	if err != nil {
		return err
	}
	defer cc.Close()
	if err := waitServing(ctx, cc, start.Add(2*time.Minute)); err != nil {
		return err
	}
	res.ServingMs = ms2(time.Since(start))
	// A new credential can be issued at once, whatever the restore is doing.
	if _, err := pbCreds(cc).IssueCredential(ctx, issueReq("group", issueTTL)); err != nil {
		res.Err = "first IssueCredential: " + err.Error()
	}
	res.FirstIssueMs = ms2(time.Since(start))
	<-restored
	res.HeapMs = ms2(time.Since(start))
	res.RSSHeap, res.AnonHeap, res.FileHeap, res.HWM = procStatus()
	runtime.GC()
	debug.FreeOSMemory()
	res.RSSSettled, _, _, _ = procStatus()
	// The one issued lease must not outlive the child: revoke it through
	// the plugin (cleanup, not measured).
	_ = pg.dropUsers(ctx, brokerPrefix)
	return json.NewEncoder(stdout).Encode(res)
}

// waitServing polls the health service over cc every 2 ms until it
// answers SERVING, or fails at deadline.
func waitServing(ctx context.Context, cc *grpc.ClientConn, deadline time.Time) error {
	hc := healthpb.NewHealthClient(cc)
	for {
		cctx, ccancel := context.WithTimeout(ctx, time.Second)
		resp, err := hc.Check(cctx, &healthpb.HealthCheckRequest{})
		ccancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("not serving by %s: %v", deadline.Format(time.TimeOnly), err)
		}
		time.Sleep(2 * time.Millisecond)
	}
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
