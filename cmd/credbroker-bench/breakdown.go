package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/boltstore"
	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/postgres"
)

// breakdown issues sequentially through each layer in turn, interleaved
// in rounds so that a noisy machine affects every layer alike: the floor,
// the plugin alone, the plugin behind the lease manager on bbolt (what
// IssueCredential does minus gRPC), and the whole broker over gRPC+mTLS.
// It tells where the broker's overhead over the floor goes.
func (r *runner) breakdown(ctx context.Context) error {
	const tmpl = "group"
	stmts := templateStmts(tmpl)
	conc := max(1, r.breakdownConc)
	n := r.sizes.issueN(conc)
	rounds := 5

	pool, err := r.pg.floorPool(ctx, conc)
	if err != nil {
		return err
	}
	defer pool.Close()
	f := &floor{pool: pool, marker: benchMarker}
	bp, err := r.pg.barePool(ctx, conc)
	if err != nil {
		return err
	}
	defer bp.Close()
	bare := &floor{pool: bp}

	c := r.pg.cfg.ConnConfig
	pdb, err := postgres.New(ctx, postgres.Config{
		Host: c.Host, Port: int(c.Port), Database: c.Database, Username: c.User, Password: c.Password,
		SSLMode: "disable", MaxConns: int32(max(4, conc)), Prefix: brokerPrefix, Marker: benchMarker,
	})
	if err != nil {
		return err
	}
	defer pdb.Close()
	db := plugins.Sanitized(pdb)

	store, err := boltstore.Open(filepath.Join(r.tmpDir(), "leases.db"))
	if err != nil {
		return err
	}
	defer store.Close()
	m, err := lease.NewManager(lease.Config{Store: store, Backend: nopBackend{}})
	if err != nil {
		return err
	}
	if err := m.Load(ctx); err != nil {
		return err
	}

	b, err := r.pg.startBroker(ctx, brokerOptions{Dir: r.tmpDir(), Prefix: brokerPrefix, MaxConns: 32})
	if err != nil {
		return err
	}
	defer b.stop()
	clients, err := b.clients(ctx, conc)
	if err != nil {
		return err
	}
	// The round trip of an RPC that does nothing, on connections like the
	// clients': what gRPC+mTLS cost on their own.
	health := make([]healthpb.HealthClient, conc)
	for i := range health {
		cc, err := b.dial(clientID)
		if err != nil {
			return err
		}
		health[i] = healthpb.NewHealthClient(cc)
	}

	pluginOnly := func(ctx context.Context) error {
		name, err := db.GenerateUsername(tmpl)
		if err != nil {
			return err
		}
		pw, err := plugins.GeneratePassword()
		if err != nil {
			return err
		}
		return db.NewUser(ctx, plugins.NewUserRequest{Username: name, Password: pw, Expiration: time.Now().Add(issueTTL), Statements: stmts})
	}
	pluginBuffered := func(ctx context.Context) error {
		name, err := db.GenerateUsername(tmpl)
		if err != nil {
			return err
		}
		pw, err := plugins.NewPassword(db)
		if err != nil {
			return err
		}
		return db.NewUser(ctx, plugins.NewUserRequest{Username: name, Password: pw, Expiration: time.Now().Add(issueTTL), Statements: stmts})
	}
	withManager := func(ctx context.Context) error {
		name, err := db.GenerateUsername(tmpl)
		if err != nil {
			return err
		}
		pw, err := plugins.NewPassword(db)
		if err != nil {
			return err
		}
		id, err := lease.NewID()
		if err != nil {
			return err
		}
		now := time.Now().UTC()
		l := lease.Lease{ID: id, Role: tmpl, Owner: clientID.String(), Database: "main", Username: name,
			IssueTime: now, ExpireTime: now.Add(issueTTL), MaxExpireTime: now.Add(24 * time.Hour)}
		_, err = m.Issue(ctx, l, func(ctx context.Context, intent func(context.Context) error) error {
			return db.NewUser(ctx, plugins.NewUserRequest{Username: name, Password: pw, Expiration: l.ExpireTime, Statements: stmts, Intent: intent})
		})
		return err
	}
	layers := []struct {
		name string
		op   func(ctx context.Context, worker int) error
	}{
		{"floor", func(ctx context.Context, _ int) error {
			return f.create(ctx, newUsername(floorPrefix, tmpl), time.Now().Add(issueTTL), stmts)
		}},
		{"bare floor", func(ctx context.Context, _ int) error {
			return bare.bare(ctx, newUsername(barePrefix, tmpl), time.Now().Add(issueTTL))
		}},
		{"floor, one statement per round trip (before §8)", func(ctx context.Context, _ int) error {
			return f.createSerial(ctx, newUsername(floorPrefix, tmpl), time.Now().Add(issueTTL), stmts)
		}},
		{"plugin, verifier computed in NewUser", func(ctx context.Context, _ int) error { return pluginOnly(ctx) }},
		{"plugin, verifier from its buffer", func(ctx context.Context, _ int) error { return pluginBuffered(ctx) }},
		{"plugin+lease(bbolt)", func(ctx context.Context, _ int) error { return withManager(ctx) }},
		{"broker gRPC+mTLS", func(ctx context.Context, w int) error {
			_, err := clients[w].IssueCredential(ctx, issueReq(tmpl, issueTTL))
			return err
		}},
		{"gRPC+mTLS round trip alone (Health/Check)", func(ctx context.Context, w int) error {
			_, err := health[w].Check(ctx, &healthpb.HealthCheckRequest{})
			return err
		}},
	}
	res := make([]loadResult, len(layers))
	for round := range rounds {
		for j := range layers {
			i := j
			if round%2 == 1 { // ABC CBA
				i = len(layers) - 1 - j
			}
			l := layers[i]
			got := runLoad(ctx, n/rounds, conc, func(ctx context.Context, w, _ int) error { return l.op(ctx, w) })
			res[i].lat = append(res[i].lat, got.lat...)
			res[i].errors += got.errors
			res[i].wall += got.wall
			res[i].cpu += got.cpu
			if res[i].firstErr == nil {
				res[i].firstErr = got.firstErr
			}
		}
	}
	floorP50 := res[0].lat.percentile(50)
	bareRow := Row{Concurrency: conc}
	res[1].fill(&bareRow)
	for i, l := range layers {
		row := Row{Scenario: "breakdown", Template: tmpl, N: len(res[i].lat) + res[i].errors, Concurrency: conc, Errors: res[i].errors}
		res[i].fill(&row)
		row.RatioToFloor = ratio(row.P50ms / floorP50)
		row.P99ToFloor = ratio(row.P99ms / res[0].lat.percentile(99))
		row.RatioToBare, row.P99ToBare = vsBare(row, bareRow)
		row.Notes = errNote(res[i], fmt.Sprintf("layer: %s; ratio = p50 ÷ floor p50; %d interleaved rounds", l.name, rounds))
		r.report.add(row)
	}
	// The manager's leases were never revoked through it; the users go with
	// the cleanup after the scenario.
	return nil
}

type nopBackend struct{}

func (nopBackend) Drop(context.Context, lease.Lease) error   { return nil }
func (nopBackend) Extend(context.Context, lease.Lease) error { return nil }
