package main

import (
	"context"
	"fmt"
	"time"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease/pgstore"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// haGroups are the replica sets of the ha scenario: each its own schema on
// the store server and its own username prefix on the data server.
var haGroups = []struct {
	Replicas int
	Schema   string
	Prefix   string
}{
	{1, "bench_ha1", "ha"},
	{3, "bench_ha3", "hb"},
}

// haPrefixes are the ha brokers' username prefixes, for the cleanup.
func haPrefixes() []string {
	out := make([]string, len(haGroups))
	for i, g := range haGroups {
		out[i] = g.Prefix
	}
	return out
}

// haStoreConns is lease_store.postgres.max_connections of every replica
// (0: pgstore's default).
const haStoreConns = 0

// haGroup is one running replica set.
type haGroup struct {
	replicas int
	prefix   string
	brokers  []*runningBroker
	clients  [][]pb.CredentialServiceClient // per broker
}

// issue is IssueCredential from worker w: the workers are spread over the
// replicas round-robin, each on its own connection.
func (g *haGroup) issue(ctx context.Context, w int) error {
	k := len(g.brokers)
	_, err := g.clients[w%k][w/k].IssueCredential(ctx, issueReq(bareTemplate, issueTTL))
	return err
}

// ha measures issuance with the lease store in PostgreSQL (issue 10): one
// broker, and three replicas on one schema, each a broker.App in this
// process with its own replica name and listen port, the clients spread
// over them round-robin. The store is a schema of a second PostgreSQL
// server (-store-dsn), apart from the data server where the users are
// created, as a deployment would have it. The ratio is against the floor of
// the same concurrency measured here, in the same rounds (ha-floor-issue
// rows). Each row also says
// where the CPU went while it was measured; on a small machine the
// replicas, both servers and the clients share the same cores.
func (r *runner) ha(ctx context.Context) error {
	if r.store == nil {
		r.report.add(Row{Scenario: "ha", Notes: "skipped: no -store-dsn (scripts/bench.sh starts a second PostgreSQL for the lease store)"})
		return nil
	}
	meter := newCPUMeter(ctx, []string{"data pg", "store pg"}, []*pgEnv{r.pg, r.store})

	groups := make([]*haGroup, len(haGroups))
	for gi, hg := range haGroups {
		if err := r.store.dropSchema(ctx, hg.Schema); err != nil {
			return err
		}
		defer func() { _ = r.store.dropSchema(context.WithoutCancel(ctx), hg.Schema) }()
		ca, err := identity.NewDevCA(benchTD)
		if err != nil {
			return err
		}
		g := &haGroup{replicas: hg.Replicas, prefix: hg.Prefix}
		for i := range hg.Replicas {
			o := brokerOptions{Dir: r.tmpDir(), Prefix: hg.Prefix, MaxConns: 32, Store: &storeOptions{
				Server: r.store, Schema: hg.Schema, Replica: fmt.Sprintf("bench-%d", i+1), MaxConns: haStoreConns,
			}}
			if i == 0 {
				// As an operator would: `credbroker init-store` once, then
				// every replica started on the schema.
				cfg, err := r.pg.brokerConfig(o)
				if err != nil {
					return err
				}
				if _, err := broker.InitStore(ctx, cfg); err != nil {
					return err
				}
			}
			b, err := r.pg.newBrokerCA(ctx, o, ca)
			if err != nil {
				return fmt.Errorf("replica %d of %d: %w", i+1, hg.Replicas, err)
			}
			b.serve(ctx)
			defer b.stop()
			g.brokers = append(g.brokers, b)
		}
		groups[gi] = g
	}

	for _, m := range issueModes {
		if m.Conc == 1 {
			continue
		}
		if err := r.haMode(ctx, meter, groups, m.Name, m.Conc, m.Rounds); err != nil {
			return err
		}
	}
	// The throughput replicas stop (their deferred stops find them
	// stopped), so that only the fault rows' brokers run.
	for _, g := range groups {
		for _, b := range g.brokers {
			_ = b.stop()
		}
	}
	return r.haFaults(ctx)
}

// haMode measures every group at one concurrency, in ABC CBA rounds with
// the floor, then revokes what was issued so that the next mode starts
// from the same catalog.
func (r *runner) haMode(ctx context.Context, meter *cpuMeter, groups []*haGroup, mode string, conc, rounds int) error {
	const tmpl = bareTemplate
	n := r.sizes.issueN(conc)
	type side struct {
		run func(ctx context.Context, w, i int) error
		res loadResult
		cpu cpuUse
	}
	// The floor is measured here, in the same rounds as the replicas, not
	// taken from the issue scenario: minutes apart on a shared machine,
	// the load around them differs more than what is measured.
	pool, err := r.pg.floorPool(ctx, conc)
	if err != nil {
		return err
	}
	defer pool.Close()
	f := &floor{pool: pool, marker: benchMarker}
	stmts := floorStmts(tmpl)
	floorSide := &side{run: func(ctx context.Context, _, _ int) error {
		return f.create(ctx, newUsername(floorPrefix, tmpl), time.Now().Add(issueTTL), stmts)
	}}
	sides := []*side{floorSide}
	issued := make([]int, len(groups))
	for gi, g := range groups {
		per := (conc + g.replicas - 1) / g.replicas
		g.clients = make([][]pb.CredentialServiceClient, len(g.brokers))
		for bi, b := range g.brokers {
			var err error
			if g.clients[bi], err = b.clients(ctx, per); err != nil {
				return err
			}
		}
		// One unmeasured burst opens the pools' connections, as in
		// issueAndRevoke.
		cold := runLoad(ctx, conc, conc, func(ctx context.Context, w, _ int) error { return g.issue(ctx, w) })
		if cold.errors > 0 {
			return fmt.Errorf("%d replicas: warm-up: %w", g.replicas, cold.firstErr)
		}
		issued[gi] += len(cold.lat)
		sides = append(sides, &side{run: func(ctx context.Context, w, _ int) error { return g.issue(ctx, w) }})
	}

	for round := range rounds {
		per := n / rounds
		if round == rounds-1 {
			per = n - per*(rounds-1)
		}
		for k := range sides {
			// ABC CBA, as issueAndRevoke.
			s := sides[k]
			if round%2 == 1 {
				s = sides[len(sides)-1-k]
			}
			before := meter.sample()
			s.res.merge(runLoad(ctx, per, conc, s.run))
			s.cpu.add(before, meter.sample())
		}
	}

	floorRow := Row{Scenario: "ha-floor-issue " + mode, Template: tmpl, N: n, Concurrency: conc, Errors: floorSide.res.errors}
	floorSide.res.fill(&floorRow)
	floorRow.Notes = errNote(floorSide.res, fmt.Sprintf("the floor of the ha rows: the plugin's statements over pgx, %d conns; %d rounds alternating with the ha rows; %s",
		conc, rounds, floorSide.cpu.fill(meter, &floorRow)))
	r.report.add(floorRow)
	for gi, g := range groups {
		s := sides[gi+1]
		issued[gi] += len(s.res.lat)
		label := fmt.Sprintf("%d replicas", g.replicas)
		if g.replicas == 1 {
			label = "1 replica"
		}
		row := Row{Scenario: fmt.Sprintf("ha-issue %s %s", mode, label), Template: tmpl, N: n, Concurrency: conc, Errors: s.res.errors}
		s.res.fill(&row)
		row.RatioToFloor = ratio(row.OpsPerS / floorRow.OpsPerS)
		row.P99ToFloor = ratio(row.P99ms / floorRow.P99ms)
		target := "reported, no target"
		if g.replicas == 1 {
			target = "target ≥ 0.8"
		}
		row.Notes = errNote(s.res, fmt.Sprintf("%s, lease store in a schema of a second PostgreSQL; data pool 32, store pool %s per replica; warmed by one unmeasured burst; ratio = ops/s ÷ ha-floor-issue %s's (measured in the same rounds; %s); %s",
			haWhat(g.replicas), storePoolLabel(), mode, target, s.cpu.fill(meter, &row)))
		r.report.add(row)
	}

	// Revoke through one replica what every replica issued (unmeasured).
	for gi, g := range groups {
		start := time.Now()
		admin, err := g.brokers[0].admin()
		if err != nil {
			return err
		}
		resp, err := admin.RevokeLeases(ctx, &pb.RevokeLeasesRequest{Role: tmpl})
		if err != nil {
			return fmt.Errorf("%d replicas: revoke: %w", g.replicas, err)
		}
		if err := r.pg.waitUsers(ctx, g.prefix, 0, 5*time.Minute); err != nil {
			return fmt.Errorf("%d replicas: revoke: %w", g.replicas, err)
		}
		fmt.Fprintf(r.log, "bench: ha %s, %d replica(s): RevokeLeases revoked %d of %d leases in %s\n",
			mode, g.replicas, resp.GetRevoked(), issued[gi], time.Since(start).Round(time.Millisecond))
	}
	if err := r.pg.dropUsers(ctx, floorPrefix); err != nil {
		return fmt.Errorf("floor cleanup: %w", err)
	}
	return nil
}

func haWhat(replicas int) string {
	if replicas == 1 {
		return "IssueCredential through one broker"
	}
	return fmt.Sprintf("IssueCredential through %d brokers (replicas bench-1…bench-%d, each its own listen port), clients round-robin over them", replicas, replicas)
}

func storePoolLabel() string {
	if haStoreConns == 0 {
		return fmt.Sprintf("%d (pgstore's default)", pgstore.DefaultMaxConns)
	}
	return fmt.Sprint(haStoreConns)
}

// dropSchema removes a lease store's schema from the store server.
func (e *pgEnv) dropSchema(ctx context.Context, schema string) error {
	if _, err := e.pool.Exec(ctx, "DROP SCHEMA IF EXISTS "+floorIdent(schema)+" CASCADE"); err != nil {
		return fmt.Errorf("store schema %s: %w", schema, err)
	}
	return nil
}
