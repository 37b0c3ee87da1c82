// Command credbroker-bench measures the broker against the physical floor:
// the same SQL sent straight to PostgreSQL. It prints one table and writes
// the same figures to a JSON file. scripts/bench.sh (make bench) starts a
// throwaway PostgreSQL, runs the go test benchmarks of the in-memory parts,
// then this command.
//
//	credbroker-bench [-dsn DSN] [-store-dsn DSN] [-out bench.json] [-only a,b] [-scale 1]
//
// The DSN defaults to $CREDBROKER_TEST_PG_DSN (scripts/pg-throwaway.sh), the
// store DSN to $CREDBROKER_BENCH_STORE_DSN.
// Scenarios: issue (floor-issue, floor-revoke, broker-issue, broker-revoke),
// observe (observe-off, observe-on: issuance with metrics and the audit log
// off and on), ha (issuance with the lease store in a second PostgreSQL,
// -store-dsn, through 1 and 3 replicas), restore, storm, live. Every row states N and concurrency; see
// docs/performance.md for what each measures.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == restoreChildCmd {
		if err := restoreChild(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "credbroker-bench restore child:", err)
			os.Exit(1)
		}
		return
	}
	if len(os.Args) > 1 && os.Args[1] == haReplicaCmd {
		if err := haReplicaChild(os.Args[2:], os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "credbroker-bench replica child:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "credbroker-bench:", err)
		}
		os.Exit(1)
	}
}

// sizes are the N of every scenario, scaled together by -scale.
type sizes struct {
	scale float64
	// per issue mode
	issueSeq, issueConc int
	// observeSeq is the observe scenario's sequential N: its p99 ratio is
	// the target there, and of 300 calls the p99 is the third-slowest.
	observeSeq   int
	restore      int
	storm        int
	stormProbe   int // issues of the idle baseline (half before the storm, half after)
	liveGroup    int
	liveGrantMax int
	liveBudget   time.Duration // per template, issuing
	liveIters    int           // scram_iterations of the live-per-role broker
	stormConc    int           // revocation.concurrency of the storm
	stormRate    float64       // revocation.rate_per_second of the storm
}

func defaultSizes(scale float64) sizes {
	s := func(n int) int { return max(1, int(float64(n)*scale)) }
	return sizes{
		scale:        scale,
		issueSeq:     s(300),
		issueConc:    s(1000), // per side ≤ 2,300 users: under the per-user GRANT wall (live-per-role)
		observeSeq:   s(1000),
		restore:      s(1_000_000),
		storm:        s(10_000),
		stormProbe:   s(800),
		liveGroup:    s(100_000),
		liveGrantMax: 10_000, // stops at PostgreSQL's wall, whatever the scale
		liveBudget:   time.Duration(float64(liveBudget) * scale),
		liveIters:    liveScramIterations,
		stormConc:    stormConcurrency,
		stormRate:    stormRate,
	}
}

// liveBudget bounds each live-per-role issuing run, so that make bench stays
// under 15 minutes on a 2-core machine (where PostgreSQL's own SCRAM check
// of CREATE ROLE … PASSWORD caps issuance near 150 a second).
const liveBudget = 200 * time.Second

// liveScramIterations is the live-per-role broker's scram_iterations. The
// scenario measures how many leases one role holds; at the default 4096,
// PostgreSQL's re-derivation of each verifier would make issuing 100,000
// alone take 12-15 minutes here (docs/performance.md), so this run lowers it,
// as docs/config.md allows, and its rows say so.
const liveScramIterations = 16

func (s sizes) issueN(conc int) int {
	if conc == 1 {
		return s.issueSeq
	}
	return s.issueConc
}

type runner struct {
	pg *pgEnv
	// store is the server of the ha scenario's lease stores (nil: no
	// -store-dsn, the scenario is skipped).
	store  *pgEnv
	report *Report
	sizes  sizes
	dir    string
	n      int
	log    io.Writer
	// breakdownConc is the concurrency of the breakdown diagnostic.
	breakdownConc int
}

func (r *runner) tmpDir() string {
	r.n++
	d := filepath.Join(r.dir, fmt.Sprintf("run%d", r.n))
	_ = os.MkdirAll(d, 0o700)
	return d
}

var allScenarios = []string{"issue", "observe", "ha", "ha-faults", "restore", "storm", "live", "breakdown"}

// defaultScenarios are what a plain run (make bench) does; breakdown is a
// diagnostic, and ha-faults the fault rows of ha alone.
var defaultScenarios = []string{"issue", "observe", "ha", "restore", "storm", "live"}

func run(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("credbroker-bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	dsn := fs.String("dsn", os.Getenv("CREDBROKER_TEST_PG_DSN"), "admin DSN of a throwaway PostgreSQL (default $CREDBROKER_TEST_PG_DSN)")
	storeDSN := fs.String("store-dsn", os.Getenv("CREDBROKER_BENCH_STORE_DSN"), "admin DSN of a second throwaway PostgreSQL for the ha scenario's lease stores (default $CREDBROKER_BENCH_STORE_DSN; empty: ha is skipped)")
	out := fs.String("out", "bench.json", "where to write the JSON figures")
	md := fs.String("markdown", "", "also write the table as Markdown to this file")
	only := fs.String("only", strings.Join(defaultScenarios, ","), "scenarios to run: "+strings.Join(allScenarios, ","))
	scale := fs.Float64("scale", 1, "multiply every N by this (0.1 for a quick look)")
	gobench := fs.String("gobench", "", "output of go test -bench to include in the table (scripts/bench.sh)")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	blockprofile := fs.String("blockprofile", "", "write a blocking profile of the whole run to this file (every blocking event)")
	mutexprofile := fs.String("mutexprofile", "", "write a mutex contention profile of the whole run to this file (every event)")
	traceOut := fs.String("trace", "", "write a runtime/trace execution trace of the whole run to this file (large: use with -scale)")
	liveN := fs.Int("live-n", 0, "live-per-role group target (default 100,000 × scale)")
	liveIters := fs.Int("live-scram-iterations", liveScramIterations, "scram_iterations of the live-per-role broker (4096 is the broker's default)")
	stormConc := fs.Int("storm-concurrency", stormConcurrency, "revocation.concurrency of the expiry-storm broker")
	stormRt := fs.Float64("storm-rate", stormRate, "revocation.rate_per_second of the expiry-storm broker")
	liveFor := fs.Duration("live-budget", 0, "time allowed to issue each live-per-role run (default 200s × scale); raise it to reach -live-n on a slow machine")
	breakdownConc := fs.Int("breakdown-concurrency", 1, "concurrency of the breakdown diagnostic")
	dir := fs.String("dir", "", "scratch directory (default: a new temporary one, removed at the end)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dsn == "" {
		return errors.New("no -dsn and $CREDBROKER_TEST_PG_DSN is not set (make bench starts a throwaway PostgreSQL)")
	}
	want := strings.Split(*only, ",")
	for _, w := range want {
		if !slices.Contains(allScenarios, w) {
			return fmt.Errorf("unknown scenario %q (known: %s)", w, strings.Join(allScenarios, ","))
		}
	}
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if *blockprofile != "" {
		runtime.SetBlockProfileRate(1)
		defer writeProfile("block", *blockprofile, stderr)
	}
	if *mutexprofile != "" {
		runtime.SetMutexProfileFraction(1)
		defer writeProfile("mutex", *mutexprofile, stderr)
	}
	if *traceOut != "" {
		f, err := os.Create(*traceOut)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return err
		}
		defer trace.Stop()
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	scratch := *dir
	if scratch == "" {
		d, err := os.MkdirTemp("", "credbroker-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		scratch = d
	}
	pg, err := newPGEnv(ctx, *dsn)
	if err != nil {
		return err
	}
	defer pg.Close()
	var store *pgEnv
	if *storeDSN != "" {
		if store, err = openPGEnv(ctx, *storeDSN); err != nil {
			return fmt.Errorf("store: %w", err)
		}
		defer store.Close()
	}
	sz := defaultSizes(*scale)
	if *liveN > 0 {
		sz.liveGroup = *liveN
	}
	sz.liveIters = *liveIters
	sz.stormConc, sz.stormRate = *stormConc, *stormRt
	if *liveFor > 0 {
		sz.liveBudget = *liveFor
	}
	host, _ := os.Hostname()
	r := &runner{
		pg:            pg,
		store:         store,
		sizes:         sz,
		dir:           scratch,
		log:           stderr,
		breakdownConc: *breakdownConc,
		report: &Report{
			Started:  time.Now().UTC(),
			Host:     fmt.Sprintf("%s, %d CPUs, %s/%s", host, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH),
			Postgres: pg.version(ctx),
			Go:       runtime.Version(),
			log:      stderr,
		},
	}
	if *gobench != "" {
		rows, err := goBenchRows(*gobench)
		if err != nil {
			return err
		}
		for _, row := range rows {
			r.report.add(row)
		}
	}
	prefixes := append([]string{floorPrefix, brokerPrefix, barePrefix, observedPrefix, observedFastPrefix}, haPrefixes()...)
	defer func() {
		// Whatever happened, leave no user behind.
		for _, p := range prefixes {
			_ = pg.dropUsers(context.WithoutCancel(ctx), p)
		}
	}()

	steps := map[string]func(context.Context) error{
		"issue": func(ctx context.Context) error {
			for _, t := range templates {
				if err := r.issueAndRevoke(ctx, t.Name); err != nil {
					return fmt.Errorf("issue %s: %w", t.Name, err)
				}
			}
			return nil
		},
		"observe": r.observe,
		"ha":      r.ha,
		"ha-faults": func(ctx context.Context) error {
			if r.store == nil {
				return errors.New("ha-faults needs -store-dsn")
			}
			return r.haFaults(ctx)
		},
		"restore":   r.restore,
		"storm":     r.storm,
		"live":      r.live,
		"breakdown": r.breakdown,
	}
	var failed []string
	for _, name := range allScenarios {
		if !slices.Contains(want, name) {
			continue
		}
		fmt.Fprintf(stderr, "bench: == %s\n", name)
		start := time.Now()
		if err := steps[name](ctx); err != nil {
			if ctx.Err() != nil {
				return err
			}
			// One broken scenario must not hide the others' figures.
			fmt.Fprintf(stderr, "bench: %s failed: %v\n", name, err)
			failed = append(failed, name)
			r.report.add(Row{Scenario: name, Errors: 1, Notes: "scenario failed: " + err.Error()})
		}
		fmt.Fprintf(stderr, "bench: == %s done in %s\n", name, time.Since(start).Round(time.Second))
		for _, p := range prefixes {
			if err := pg.dropUsers(ctx, p); err != nil {
				return fmt.Errorf("cleanup after %s: %w", name, err)
			}
		}
	}

	fmt.Fprintln(stdout)
	fmt.Fprintf(stdout, "credbroker-bench: %s; PostgreSQL %s; %s\n\n", r.report.Host, r.report.Postgres, r.report.Go)
	r.report.Print(stdout)
	if err := r.report.WriteJSON(*out); err != nil {
		return err
	}
	if *md != "" {
		f, err := os.Create(*md)
		if err != nil {
			return err
		}
		r.report.Markdown(f)
		if err := f.Close(); err != nil {
			return err
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("scenarios failed: %s", strings.Join(failed, ", "))
	}
	return nil
}

// writeProfile writes the named runtime profile (block, mutex) to path.
func writeProfile(name, path string, stderr io.Writer) {
	f, err := os.Create(path)
	if err == nil {
		err = pprof.Lookup(name).WriteTo(f, 0)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "credbroker-bench: %s profile: %v\n", name, err)
	}
}
