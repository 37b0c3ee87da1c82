package main

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/broker"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// live finds how many live leases one role holds per template style, and
// the issue and revoke rates at that size: per-user GRANT until PostgreSQL
// refuses (the table's ACL no longer fits in its catalog row), group-role
// membership up to sizes.liveGroup or until the time budget runs out,
// whichever comes first.
func (r *runner) live(ctx context.Context) error {
	b, err := r.pg.startBroker(ctx, brokerOptions{Dir: r.tmpDir(), Prefix: brokerPrefix, MaxConns: 32, ScramIterations: r.sizes.liveIters})
	if err != nil {
		return err
	}
	defer b.stop()
	clients, err := b.clients(ctx, 32)
	if err != nil {
		return err
	}
	admin, err := b.admin()
	if err != nil {
		return err
	}
	for _, t := range []struct {
		tmpl   string
		max    int
		budget time.Duration
		conc   int
	}{
		{"grant", r.sizes.liveGrantMax, r.sizes.liveBudget, 8},
		{"group", r.sizes.liveGroup, r.sizes.liveBudget, 32},
	} {
		if err := r.liveOne(ctx, clients, admin, t.tmpl, t.max, t.budget, t.conc); err != nil {
			return fmt.Errorf("%s: %w", t.tmpl, err)
		}
	}
	return nil
}

func (r *runner) liveOne(ctx context.Context, clients []pb.CredentialServiceClient, admin pb.AdminServiceClient,
	tmpl string, max int, budget time.Duration, conc int) error {
	// Issue until max, the budget, or the first refusal. Calls in flight
	// when the budget ends complete; no new ones start.
	deadline := time.Now().Add(budget)
	var (
		firstErr error
		errOnce  sync.Once
		refused  atomic.Bool
		issued   atomic.Int64
	)
	res := runLoad(ctx, max, conc, func(ctx context.Context, w, _ int) error {
		if refused.Load() || time.Now().After(deadline) {
			return errStop
		}
		_, err := clients[w].IssueCredential(ctx, issueReq(tmpl, 2*time.Hour))
		if err != nil {
			errOnce.Do(func() { firstErr = err })
			refused.Store(true)
			return err
		}
		issued.Add(1)
		return nil
	})
	// Live leases are the issued ones (a call cut off by the budget may
	// still be cleaning up its user).
	live := int(issued.Load())
	var members, acl int
	_ = r.pg.pool.QueryRow(ctx, `SELECT count(*) FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
		WHERE g.rolname = $1`, benchGroup).Scan(&members)
	_ = r.pg.pool.QueryRow(ctx, `SELECT coalesce(cardinality(relacl), 0) FROM pg_class WHERE relname = $1`, benchGrantTable).Scan(&acl)

	row := Row{Scenario: "live-per-role issue", Template: tmpl, N: live, Concurrency: conc}
	res.fill(&row)
	row.Errors = 0 // the refusal that ends the grant run is the finding, not a failure
	switch {
	case tmpl == "grant" && firstErr != nil:
		row.Notes = fmt.Sprintf("per-user GRANT: lease %d refused (%d live, table ACL %d entries): caller got %q; PostgreSQL says %q",
			live+1, live, acl, status.Convert(firstErr).Message(), r.pg.grantProbe(ctx))
		row.Extra = map[string]float64{"wall_at": float64(live), "acl_entries": float64(acl)}
	case tmpl == "grant":
		row.Notes = fmt.Sprintf("per-user GRANT: no wall up to %d live leases (table ACL %d entries)", live, acl)
	case firstErr != nil:
		row.Errors = res.errors
		row.Notes = fmt.Sprintf("group role: stopped by an error at %d live: %s", live, oneLine(firstErr.Error()))
	case live < max:
		row.Notes = fmt.Sprintf("group role: %d live leases (%d members of %s) when the %s budget ran out (target %d: not reached in this run's time budget)",
			live, members, benchGroup, budget, max)
	default:
		row.Notes = fmt.Sprintf("group role: %d live leases (%d members of %s), no wall", live, members, benchGroup)
	}
	if row.Extra == nil {
		row.Extra = map[string]float64{}
	}
	row.Extra["group_members"] = float64(members)
	row.Extra["scram_iterations"] = float64(r.sizes.liveIters)
	row.Notes += fmt.Sprintf("; scram_iterations %d", r.sizes.liveIters)
	r.report.add(row)

	// Revoke them all with one RevokeLeases call; time until pg_roles
	// shows none.
	start := time.Now()
	resp, rerr := admin.RevokeLeases(ctx, &pb.RevokeLeasesRequest{Role: tmpl})
	werr := r.pg.waitUsers(ctx, brokerPrefix+"_"+tmpl, 0, 10*time.Minute)
	took := time.Since(start)
	rrow := Row{Scenario: "live-per-role revoke", Template: tmpl, N: live, Concurrency: broker.BulkRevokeConcurrency}
	rrow.WallS = round2(took.Seconds())
	rrow.OpsPerS = round2(float64(live) / took.Seconds())
	rrow.Notes = fmt.Sprintf("one RevokeLeases(role) for all %d; until pg_roles shows none", live)
	switch {
	case rerr != nil:
		rrow.Errors = 1
		rrow.Notes += "; RevokeLeases: " + oneLine(rerr.Error())
	case werr != nil:
		rrow.Errors = 1
		rrow.Notes += "; " + werr.Error()
	case int(resp.GetRevoked()) != live:
		rrow.Notes += fmt.Sprintf("; revoked %d", resp.GetRevoked())
	}
	r.report.add(rrow)
	return nil
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return s
}

// grantProbe tries one more per-user grant on the full table, in a
// transaction it rolls back, and returns PostgreSQL's error (which the
// broker does not pass on to callers).
func (e *pgEnv) grantProbe(ctx context.Context) string {
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return err.Error()
	}
	defer tx.Rollback(ctx)
	for _, q := range []string{"CREATE ROLE bench_probe", "GRANT SELECT ON " + benchGrantTable + " TO bench_probe"} {
		if _, err := tx.Exec(ctx, q); err != nil {
			return oneLine(err.Error())
		}
	}
	return "(no error)"
}
