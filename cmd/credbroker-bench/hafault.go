package main

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/pgstore"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// The rows of issue 10 besides throughput, each on a schema of its own on
// the store server and with the broker's default claim settings:
//
//   - ha-failover: three replicas, each its own process; SIGKILL of the one
//     that issued the leases while they fall due and while it issues more.
//     Targets: its due leases revoked by the others with p99 ≤ 5 s past
//     their expiry; its CREATING records cleaned within 10 s.
//   - ha-start-1M: a replica process started on a store of 1,000,000
//     leases: time to serving (≤ 1 s) and RSS beside one started on an
//     empty store (independent of the lease count).
//   - ha-storm: 10,000 leases expiring within one second across three
//     replicas: every user gone within 30 s.
const (
	haFailoverSchema = "bench_hafo"
	haFailoverPrefix = "hf"
	haFailoverN      = 300
	haStartSchema    = "bench_hastart"
	haStartEmpty     = "bench_hastart0"
	haStartN         = 1_000_000
	haStormSchema    = "bench_hastorm"
	haStormPrefix    = "hs"
	haStormN         = 10_000
)

// haFaults runs the three rows.
func (r *runner) haFaults(ctx context.Context) error {
	if err := r.haFailover(ctx); err != nil {
		return fmt.Errorf("ha-failover: %w", err)
	}
	if err := r.haStart(ctx); err != nil {
		return fmt.Errorf("ha-start: %w", err)
	}
	if err := r.haStorm(ctx); err != nil {
		return fmt.Errorf("ha-storm: %w", err)
	}
	return nil
}

// initSchema creates a store schema as `credbroker init-store` would. Its
// cleanup drops the users of brokers with prefix on the data server (a
// bench cut short leaves some), then the schema.
func (r *runner) initSchema(ctx context.Context, schema, prefix string) (func(), error) {
	if err := r.store.dropSchema(ctx, schema); err != nil {
		return nil, err
	}
	cfg, err := r.pg.brokerConfig(brokerOptions{Dir: r.tmpDir(), Prefix: prefix, Store: &storeOptions{Server: r.store, Schema: schema}})
	if err != nil {
		return nil, err
	}
	if _, err := broker.InitStore(ctx, cfg); err != nil {
		return nil, err
	}
	return func() {
		ctx := context.WithoutCancel(ctx)
		_ = r.pg.dropUsers(ctx, prefix)
		_ = r.store.dropSchema(ctx, schema)
	}, nil
}

// openStore opens a schema of the store server as a broker would.
func (r *runner) openStore(ctx context.Context, schema string) (*pgstore.Store, error) {
	c := r.store.cfg.ConnConfig
	return pgstore.Open(ctx, pgstore.Config{
		Host: c.Host, Port: int(c.Port), Database: c.Database, Username: c.User, Password: c.Password,
		SSLMode: "disable", Schema: schema, Replica: "bench-loader",
	})
}

// goneWatch polls pg_roles for a set of users every 20 ms and notes when
// each was first seen gone.
type goneWatch struct {
	mu   sync.Mutex
	gone map[string]time.Time
}

func (r *runner) watchGone(ctx context.Context, names []string, timeout time.Duration) *goneWatch {
	w := &goneWatch{gone: map[string]time.Time{}}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		rows, err := r.pg.pool.Query(ctx, "SELECT rolname FROM pg_roles WHERE rolname = ANY($1)", names)
		if err == nil {
			present, _ := pgx.CollectRows(rows, pgx.RowTo[string])
			now := time.Now()
			w.mu.Lock()
			for _, n := range names {
				if _, seen := w.gone[n]; !seen && !slices.Contains(present, n) {
					w.gone[n] = now
				}
			}
			done := len(w.gone) == len(names)
			w.mu.Unlock()
			if done {
				break
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return w
}

// haFailover: replicas a, b and c in processes of their own. a issues
// haFailoverN leases expiring over three seconds from six seconds on, and
// keeps issuing with eight workers; halfway through the expiries a is
// killed with SIGKILL. Then: how long after its expiry each lease's user was
// gone (the leases a had claimed are among them), how long until a's
// CREATING records were cleaned and their users absent, and whether every
// issuance a acknowledged is still in the store.
func (r *runner) haFailover(ctx context.Context) error {
	cleanup, err := r.initSchema(ctx, haFailoverSchema, haFailoverPrefix)
	if err != nil {
		return err
	}
	defer cleanup()
	ca, certs, err := r.haCA()
	if err != nil {
		return err
	}
	children := map[string]*haChild{}
	for _, name := range []string{"a", "b", "c"} {
		c, err := r.startHAChild(ctx, ca, haChildOptions{Schema: haFailoverSchema, Replica: name, Prefix: haFailoverPrefix, Certs: certs})
		if err != nil {
			return err
		}
		defer c.stop()
		children[name] = c
	}
	a := children["a"]
	clients, closeClients, err := a.clients(8)
	if err != nil {
		return err
	}
	defer closeClients()

	type issued struct {
		id, user string
		exp      time.Time
	}
	expStart := time.Now().Add(6 * time.Second)
	var mu sync.Mutex
	var leases []issued
	res := runLoad(ctx, haFailoverN, 8, func(ctx context.Context, w, i int) error {
		exp := expStart.Add(time.Duration(i) * 3 * time.Second / haFailoverN)
		resp, err := clients[w].IssueCredential(ctx, &pb.IssueCredentialRequest{Role: bareTemplate, Ttl: durationpb.New(time.Until(exp))})
		if err != nil {
			return err
		}
		mu.Lock()
		leases = append(leases, issued{resp.GetLease().GetId(), resp.GetCredential().GetUsername(), resp.GetLease().GetExpireTime().AsTime()})
		mu.Unlock()
		return nil
	})
	if res.errors > 0 {
		return fmt.Errorf("issuing through a: %d errors, first: %v", res.errors, res.firstErr)
	}

	// a keeps issuing until it dies: some of it is in flight at the kill.
	var acked sync.Map // lease id → username
	var inFlightErrs atomic.Int64
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var load sync.WaitGroup
	for w := range clients {
		load.Go(func() {
			for loadCtx.Err() == nil {
				resp, err := clients[w].IssueCredential(loadCtx, issueReq(bareTemplate, time.Hour))
				if err != nil {
					inFlightErrs.Add(1)
					time.Sleep(10 * time.Millisecond)
					continue
				}
				acked.Store(resp.GetLease().GetId(), resp.GetCredential().GetUsername())
			}
		})
	}

	time.Sleep(time.Until(expStart.Add(1500 * time.Millisecond)))
	a.kill()
	killed := time.Now()
	stopLoad()
	load.Wait()
	schema := floorIdent(haFailoverSchema)
	var claimedByA []string
	rows, err := r.store.pool.Query(ctx, "SELECT id FROM "+schema+".leases WHERE claimed_by = 'a' AND claim_deadline > now() AND state <> 'CREATING'")
	if err == nil {
		claimedByA, err = pgx.CollectRows(rows, pgx.RowTo[string])
	}
	if err != nil {
		return err
	}
	type creating struct{ ID, Username string }
	rows, err = r.store.pool.Query(ctx, "SELECT id, username FROM "+schema+".leases WHERE state = 'CREATING'")
	if err != nil {
		return err
	}
	left, err := pgx.CollectRows(rows, pgx.RowToStructByPos[creating])
	if err != nil {
		return err
	}

	// The CREATING records, watched while the due leases are.
	var cleanedAfter time.Duration
	var cleanErr error
	var watchers sync.WaitGroup
	watchers.Go(func() {
		for {
			var n int
			if cleanErr = r.store.pool.QueryRow(ctx, "SELECT count(*) FROM "+schema+".leases WHERE state = 'CREATING'").Scan(&n); cleanErr != nil || n == 0 {
				cleanedAfter = time.Since(killed)
				return
			}
			if time.Since(killed) > time.Minute {
				cleanErr = fmt.Errorf("%d CREATING records still there a minute after the kill", n)
				return
			}
			time.Sleep(20 * time.Millisecond)
		}
	})
	var due []issued
	for _, l := range leases {
		if l.exp.After(killed) {
			due = append(due, l)
		}
	}
	names := make([]string, len(due))
	for i, l := range due {
		names[i] = l.user
	}
	gw := r.watchGone(ctx, names, time.Minute)
	watchers.Wait()
	if cleanErr != nil {
		return cleanErr
	}

	var lags, claimedLags latencies
	missing := 0
	for _, l := range due {
		t, ok := gw.gone[l.user]
		if !ok {
			missing++
			continue
		}
		lag := max(0, t.Sub(l.exp))
		lags = append(lags, lag)
		if slices.Contains(claimedByA, l.id) {
			claimedLags = append(claimedLags, lag)
		}
	}
	// Every issuance a acknowledged before it died is in the store, and
	// no CREATING record's user is left.
	var ackedIDs []string
	acked.Range(func(k, _ any) bool { ackedIDs = append(ackedIDs, k.(string)); return true })
	var stored int
	if err := r.store.pool.QueryRow(ctx, "SELECT count(*) FROM "+schema+".leases WHERE id = ANY($1) AND state = 'ACTIVE'", ackedIDs).Scan(&stored); err != nil {
		return err
	}
	var orphans int
	leftUsers := make([]string, len(left))
	for i, c := range left {
		leftUsers[i] = c.Username
	}
	if err := r.pg.pool.QueryRow(ctx, "SELECT count(*) FROM pg_roles WHERE rolname = ANY($1)", leftUsers).Scan(&orphans); err != nil {
		return err
	}

	row := Row{Scenario: "ha-failover expiry", Template: bareTemplate, N: len(due), Concurrency: 3, Errors: missing}
	lags.fill(&row, 0)
	row.Extra = map[string]float64{"claimed_by_killed": float64(len(claimedByA)), "max_lag_ms": round2(lags.percentile(100))}
	if len(claimedLags) > 0 {
		row.Extra["claimed_p99_ms"] = round2(claimedLags.percentile(99))
	}
	row.Notes = fmt.Sprintf("replicas a, b, c (processes, claim defaults); a issued %d leases expiring over 3 s, was killed (SIGKILL) 1.5 s into them while issuing with 8 workers; "+
		"p50/p90/p99 = how long after its expiry each of the %d leases due after the kill had its user gone (target p99 ≤ 5000 ms); %d of them claimed by a when killed (their p99 %.0f ms); max %.0f ms",
		haFailoverN, len(due), len(claimedByA), row.Extra["claimed_p99_ms"], row.Extra["max_lag_ms"])
	if missing > 0 {
		row.Notes += fmt.Sprintf("; %d users still present a minute later", missing)
	}
	r.report.add(row)

	crow := Row{Scenario: "ha-failover creating", N: len(left), Concurrency: 3, Errors: orphans + len(ackedIDs) - stored}
	crow.WallS = round2(cleanedAfter.Seconds())
	crow.Extra = map[string]float64{"cleaned_s": crow.WallS, "acked": float64(len(ackedIDs)), "acked_stored": float64(stored), "orphans": float64(orphans)}
	crow.Notes = fmt.Sprintf("CREATING records a left when killed: %d, all cleaned by b and c %.1f s after the kill (target ≤ 10 s; issue_timeout 3s: held 6 s, then claimed); "+
		"their users left: %d; issuances a acknowledged before the kill: %d, all still ACTIVE in the store: %v (errors = users left + acknowledged leases lost)",
		len(left), cleanedAfter.Seconds(), orphans, len(ackedIDs), stored == len(ackedIDs))
	r.report.add(crow)
	return nil
}

// haStart: one replica process on a store of haStartN leases (written
// straight into the schema, expiring in hours), one on an empty store:
// time to serving and RSS once serving and after one issuance and one
// listing of a workload's leases.
func (r *runner) haStart(ctx context.Context) error {
	n := max(1, int(float64(haStartN)*r.sizes.scale))
	ca, certs, err := r.haCA()
	if err != nil {
		return err
	}
	type result struct {
		servingMs float64
		rss       int64
	}
	measure := func(schema string, fill int) (result, error) {
		cleanup, err := r.initSchema(ctx, schema, haFailoverPrefix)
		if err != nil {
			return result{}, err
		}
		defer cleanup()
		if fill > 0 {
			start := time.Now()
			if err := r.fillStore(ctx, schema, fill); err != nil {
				return result{}, err
			}
			fmt.Fprintf(r.log, "bench: wrote %d leases into schema %s in %s\n", fill, schema, time.Since(start).Round(time.Millisecond))
		}
		c, err := r.startHAChild(ctx, ca, haChildOptions{Schema: schema, Replica: "start", Prefix: haFailoverPrefix, Certs: certs})
		if err != nil {
			return result{}, err
		}
		defer c.stop()
		clients, closeClients, err := c.clients(1)
		if err != nil {
			return result{}, err
		}
		defer closeClients()
		if _, err := clients[0].IssueCredential(ctx, issueReq(bareTemplate, time.Hour)); err != nil {
			return result{}, err
		}
		if _, err := clients[0].ListLeases(ctx, &pb.ListLeasesRequest{}); err != nil {
			return result{}, err
		}
		time.Sleep(2 * time.Second) // a claim poll and a stats refresh or so
		rss, err := c.rss()
		return result{c.ready.ServingMs, rss}, err
	}
	empty, err := measure(haStartEmpty, 0)
	if err != nil {
		return err
	}
	full, err := measure(haStartSchema, n)
	if err != nil {
		return err
	}
	row := Row{Scenario: "ha-start-1M", N: n, Concurrency: 1}
	row.WallS = round2(full.servingMs / 1000)
	row.Extra = map[string]float64{
		"serving_ms": full.servingMs, "serving_ms_empty": empty.servingMs,
		"rss_mb": mb(full.rss), "rss_mb_empty": mb(empty.rss),
	}
	row.Notes = fmt.Sprintf("a replica process (lease_store: postgres) started on a store of %d leases: serving (SERVING over mTLS) %.0f ms after exec (target ≤ 1000 ms), %.0f ms on an empty store; "+
		"RSS after one issuance, one ListLeases and 2 s: %.1f MB, %.1f MB on the empty store (target: independent of the lease count)",
		n, full.servingMs, empty.servingMs, mb(full.rss), mb(empty.rss))
	r.report.add(row)
	return nil
}

// fillStore writes n ACTIVE leases of 100 workloads into schema, expiring
// over the day after the next two hours (none during the bench).
func (r *runner) fillStore(ctx context.Context, schema string, n int) error {
	s, err := r.openStore(ctx, schema)
	if err != nil {
		return err
	}
	defer s.Close()
	now := time.Now().UTC()
	const chunk = 50_000
	batch := make([]lease.Lease, 0, chunk)
	for i := range n {
		batch = append(batch, lease.Lease{
			ID: fmt.Sprintf("%032x", i), Role: bareTemplate, Database: "main",
			Owner:     fmt.Sprintf("spiffe://example.org/bench/workload-%02d", i%100),
			Username:  newUsername(haFailoverPrefix, bareTemplate),
			IssueTime: now, ExpireTime: now.Add(2*time.Hour + time.Duration(i%86400)*time.Second), MaxExpireTime: now.Add(48 * time.Hour),
			State: lease.StateActive,
		})
		if len(batch) == chunk || i == n-1 {
			if err := s.PutAll(ctx, batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	return nil
}

// haStorm: three replicas (in this process) with the storm's revocation
// settings; haStormN users made straight on the data server (with the
// broker's marker) and their ACTIVE leases written straight into the
// store, all expiring within one second: how long until every user is
// gone.
func (r *runner) haStorm(ctx context.Context) error {
	n := max(1, int(float64(haStormN)*r.sizes.scale))
	cleanup, err := r.initSchema(ctx, haStormSchema, haStormPrefix)
	if err != nil {
		return err
	}
	defer cleanup()
	ca, err := identity.NewDevCA(benchTD)
	if err != nil {
		return err
	}
	for i := range 3 {
		b, err := r.pg.newBrokerCA(ctx, brokerOptions{
			Dir: r.tmpDir(), Prefix: haStormPrefix, MaxConns: 32,
			RevokeConcurrency: r.sizes.stormConc, RevokeRate: r.sizes.stormRate,
			Store: &storeOptions{Server: r.store, Schema: haStormSchema, Replica: fmt.Sprintf("storm-%d", i+1)},
		}, ca)
		if err != nil {
			return err
		}
		b.serve(ctx)
		defer b.stop()
	}

	// The users, as the plugin would leave them (group member, marker).
	names := make([]string, n)
	for i := range names {
		names[i] = newUsername(haStormPrefix, stormRole)
	}
	start := time.Now()
	for rest := names; len(rest) > 0; {
		batch := rest[:min(len(rest), 500)]
		rest = rest[len(batch):]
		var do strings.Builder
		do.WriteString("DO $$ BEGIN\n")
		for _, u := range batch {
			fmt.Fprintf(&do, "CREATE ROLE %s LOGIN IN ROLE %s; COMMENT ON ROLE %s IS %s;\n", floorIdent(u), benchGroup, floorIdent(u), floorLiteral(benchMarker))
		}
		do.WriteString("END $$")
		if _, err := r.pg.pool.Exec(ctx, do.String()); err != nil {
			return err
		}
	}
	fmt.Fprintf(r.log, "bench: made %d storm users in %s\n", n, time.Since(start).Round(time.Millisecond))

	// Their leases, expiring within one second, 3 s from now.
	s, err := r.openStore(ctx, haStormSchema)
	if err != nil {
		return err
	}
	defer s.Close()
	now := time.Now().UTC()
	first := now.Add(3 * time.Second)
	ls := make([]lease.Lease, n)
	for i, u := range names {
		ls[i] = lease.Lease{
			ID: fmt.Sprintf("%032x", i+1), Role: stormRole, Database: "main", Owner: clientID.String(), Username: u,
			IssueTime: now, ExpireTime: first.Add(time.Duration(i%1000) * time.Millisecond), MaxExpireTime: now.Add(time.Hour),
			State: lease.StateActive,
		}
	}
	if err := s.PutAll(ctx, ls); err != nil {
		return err
	}
	last := first.Add(999 * time.Millisecond)
	time.Sleep(time.Until(first))
	left, err := r.pg.usersLeft(ctx, haStormPrefix+"_"+stormRole, 20*time.Millisecond, 3*time.Minute)
	if err != nil {
		return err
	}
	took := time.Since(first)
	row := Row{Scenario: "ha-storm", Template: bareTemplate, N: n, Concurrency: 3, Errors: left}
	row.WallS = round2(took.Seconds())
	row.OpsPerS = round2(float64(n-left) / took.Seconds())
	row.Extra = map[string]float64{"all_gone_s": row.WallS, "after_last_expiry_s": round2(time.Since(last).Seconds()), "left": float64(left)}
	row.Notes = fmt.Sprintf("%d leases expiring within one second across 3 replicas (one schema, no leader), revocation.concurrency %d and rate_per_second %g each: all users gone %.1f s after the first expiry (target ≤ 30 s)",
		n, r.sizes.stormConc, r.sizes.stormRate, took.Seconds())
	if left > 0 {
		row.Notes += fmt.Sprintf("; %d still present after 3 minutes", left)
	}
	r.report.add(row)
	return nil
}
