package main

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/broker"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Prefixes keep each side's users apart in pg_roles.
const (
	floorPrefix  = "fl"
	brokerPrefix = "cb"
	barePrefix   = "bf"
)

// bareTemplate is the template the bare floor is measured for: its single
// statement is what a Vault-style plugin sends.
const bareTemplate = "group"

// issueTTL is long enough that nothing issued by these scenarios expires
// while they run.
const issueTTL = time.Hour

// issueModes are the concurrency levels of floor-issue and broker-issue.
var issueModes = []struct {
	Name   string
	Conc   int
	Rounds int
}{{"seq", 1, 4}, {"c8", 8, 4}, {"c32", 32, 4}}

// Two workload identities split the broker's leases into two halves that
// RevokeLeases can revoke one after the other (see issueAndRevoke).
var halfIDs = [2]spiffeid.ID{
	spiffeid.RequireFromPath(benchTD, "/bench/workload-a"),
	spiffeid.RequireFromPath(benchTD, "/bench/workload-b"),
}

// issueAndRevoke measures, for one template, floor-issue and broker-issue
// at each concurrency, then floor-revoke and broker-revoke of everything
// issued. The machine is shared and noisy, so floor and broker alternate
// in rounds, in ABBA order (floor, broker, broker, floor, …: a drift that
// grows through the run, such as pg_roles filling up, costs both sides
// alike), and each side's figures are taken over all its rounds.
func (r *runner) issueAndRevoke(ctx context.Context, tmpl string) error {
	stmts := floorStmts(tmpl)

	b, err := r.pg.startBroker(ctx, brokerOptions{Dir: r.tmpDir(), Prefix: brokerPrefix, MaxConns: 32})
	if err != nil {
		return err
	}
	defer b.stop()
	var clients [2][]pb.CredentialServiceClient
	for h, id := range halfIDs {
		if clients[h], err = b.clientsAs(ctx, id, 32); err != nil {
			return err
		}
	}

	var names [2][]string // floor users, by half
	var mu sync.Mutex
	brokerIssued := 0
	for _, m := range issueModes {
		n := r.sizes.issueN(m.Conc)
		pool, err := r.pg.floorPool(ctx, m.Conc)
		if err != nil {
			return err
		}
		f := &floor{pool: pool, marker: benchMarker}
		var bare *floor
		if tmpl == bareTemplate {
			bp, err := r.pg.barePool(ctx, m.Conc)
			if err != nil {
				pool.Close()
				return err
			}
			bare = &floor{pool: bp}
		}
		var fl, br, bf loadResult
		// The floor's connections are open before its clock starts
		// (floorPool); the broker's pool opens them on demand, each on the
		// path of the call that needed it. One unmeasured burst of Conc
		// calls opens them first, so that both sides are timed warm; what
		// the cold burst cost is kept in the row (cold_burst_max_ms).
		cold := runLoad(ctx, m.Conc, m.Conc, func(ctx context.Context, w, i int) error {
			_, err := clients[i%2][w].IssueCredential(ctx, issueReq(tmpl, issueTTL))
			return err
		})
		if cold.errors > 0 {
			pool.Close()
			return fmt.Errorf("broker warm-up: %w", cold.firstErr)
		}
		brokerIssued += len(cold.lat)
		for round := range m.Rounds {
			per := n / m.Rounds
			if round == m.Rounds-1 {
				per = n - per*(m.Rounds-1)
			}
			runFloor := func() {
				fl.merge(runLoad(ctx, per, m.Conc, func(ctx context.Context, _, i int) error {
					name := newUsername(floorPrefix, tmpl)
					if err := f.create(ctx, name, time.Now().Add(issueTTL), stmts); err != nil {
						return err
					}
					mu.Lock()
					names[i%2] = append(names[i%2], name)
					mu.Unlock()
					return nil
				}))
			}
			runBroker := func() {
				br.merge(runLoad(ctx, per, m.Conc, func(ctx context.Context, w, i int) error {
					_, err := clients[i%2][w].IssueCredential(ctx, issueReq(tmpl, issueTTL))
					return err
				}))
			}
			runBare := func() {
				if bare == nil {
					return
				}
				bf.merge(runLoad(ctx, per, m.Conc, func(ctx context.Context, _, _ int) error {
					return bare.bare(ctx, newUsername(barePrefix, tmpl), time.Now().Add(issueTTL))
				}))
			}
			// ABC CBA: each side's mean position in the run is the same.
			if round%2 == 0 {
				runFloor()
				runBare()
				runBroker()
			} else {
				runBroker()
				runBare()
				runFloor()
			}
		}
		pool.Close()
		brokerIssued += len(br.lat)
		var bfrow Row
		if bare != nil {
			bare.pool.Close()
			// The bare floor's users are not revoked by anyone: drop them
			// now, unmeasured, so the revocation scenario sees the same
			// catalog as before.
			if err := r.pg.dropUsers(ctx, barePrefix); err != nil {
				return fmt.Errorf("bare floor cleanup: %w", err)
			}
			bfrow = Row{Scenario: "bare-floor-issue " + m.Name, Template: tmpl, N: n, Concurrency: m.Conc, Errors: bf.errors}
			bf.fill(&bfrow)
			bfrow.Notes = errNote(bf, fmt.Sprintf("what a Vault-style plugin sends: one CREATE ROLE … LOGIN PASSWORD '<plaintext>' VALID UNTIL … IN ROLE per user, the server derives the verifier; %d conns; rounds alternating with floor and broker", m.Conc))
			r.report.add(bfrow)
		}

		frow := Row{Scenario: "floor-issue " + m.Name, Template: tmpl, N: n, Concurrency: m.Conc, Errors: fl.errors}
		fl.fill(&frow)
		if bare != nil {
			frow.RatioToBare, frow.P99ToBare = vsBare(frow, bfrow)
		}
		frow.Notes = errNote(fl, fmt.Sprintf("plugin's exact statements over pgx, verifier per user, %d conns; %d rounds alternating with broker (and the bare floor, group)", m.Conc, m.Rounds))
		r.report.add(frow)

		brow := Row{Scenario: "broker-issue " + m.Name, Template: tmpl, N: n, Concurrency: m.Conc, Errors: br.errors}
		br.fill(&brow)
		note := "ratio = ops/s ÷ floor's (target ≥ 0.9; p99/floor ≤ 1.5)"
		if m.Conc == 1 {
			brow.RatioToFloor = ratio(brow.P50ms / frow.P50ms)
			note = "ratio = p50 ÷ floor p50 (target ≤ 1.15)"
		} else {
			brow.RatioToFloor = ratio(brow.OpsPerS / frow.OpsPerS)
		}
		brow.P99ToFloor = ratio(brow.P99ms / frow.P99ms)
		if bare != nil {
			brow.RatioToBare, brow.P99ToBare = vsBare(brow, bfrow)
			note += "; vs bare: the same against bare-floor-issue (targets: seq ≤ 1.25, ops/s ≥ 0.55, p99 ≤ 1.3 at c8 and ≤ 1.1 at c32)"
		}
		brow.Notes = errNote(br, note+"; IssueCredential over gRPC+mTLS, one connection per worker, pool 32, warmed by one unmeasured burst of conc calls")
		r.report.add(brow)
		if m.Conc > 1 {
			// The first calls after start (or after the pool's idle
			// connections were closed) open the connections they need.
			crow := Row{Scenario: "broker-issue cold " + m.Name, Template: tmpl, N: len(cold.lat), Concurrency: m.Conc}
			cold.fill(&crow)
			crow.Extra = map[string]float64{"max_ms": round2(cold.lat.percentile(100))}
			crow.Notes = "the unmeasured warm-up burst: one call per worker on a pool holding fewer connections than workers, each opening its own"
			r.report.add(crow)
		}
	}

	// Revocation, in two alternating halves as well: the floor drops its
	// users one after the other with the plugin's whole sequence; the
	// broker gets one RevokeLeases call per half (it returns once every
	// user is dropped). Both are timed until pg_roles shows the half gone.
	pool, err := r.pg.floorPool(ctx, 1)
	if err != nil {
		return err
	}
	defer pool.Close()
	f := &floor{pool: pool, marker: benchMarker}
	admin, err := b.admin()
	if err != nil {
		return err
	}
	var flLat, brLat latencies
	var flWall, brWall time.Duration
	var flErr, brErr loadResult
	brokerLeft := brokerIssued
	floorLeft := len(names[0]) + len(names[1])
	brokerRevoked := 0
	for h := range 2 {
		start := time.Now()
		res := runLoad(ctx, len(names[h]), 1, func(ctx context.Context, _, i int) error {
			return f.drop(ctx, names[h][i], nil)
		})
		floorLeft -= len(names[h])
		if err := r.pg.waitUsers(ctx, floorPrefix, floorLeft, time.Minute); err != nil {
			return fmt.Errorf("floor-revoke: %w", err)
		}
		flWall += time.Since(start)
		flLat = append(flLat, res.lat...)
		flErr.merge(loadResult{errors: res.errors, firstErr: res.firstErr})

		start = time.Now()
		resp, err := admin.RevokeLeases(ctx, &pb.RevokeLeasesRequest{Role: tmpl, SpiffeId: halfIDs[h].String()})
		took := time.Since(start)
		if err != nil {
			brErr.merge(loadResult{errors: 1, firstErr: err})
		} else {
			brokerRevoked += int(resp.GetRevoked())
			brokerLeft -= int(resp.GetRevoked())
		}
		if err := r.pg.waitUsers(ctx, brokerPrefix, brokerLeft, 5*time.Minute); err != nil {
			return fmt.Errorf("broker-revoke: %w", err)
		}
		brWall += max(took, time.Since(start))
		brLat = append(brLat, took)
	}
	frow := Row{Scenario: "floor-revoke", Template: tmpl, N: len(flLat) + flErr.errors, Concurrency: 1, Errors: flErr.errors}
	flLat.fill(&frow, flWall)
	frow.Notes = errNote(flErr, "DeleteUser's sequence one user after the other; latency per user; ops/s = users gone from pg_roles per second")
	r.report.add(frow)

	brow := Row{Scenario: "broker-revoke", Template: tmpl, N: brokerRevoked, Concurrency: broker.BulkRevokeConcurrency, Errors: brErr.errors}
	brow.WallS = round2(brWall.Seconds())
	brow.OpsPerS = round2(float64(brokerRevoked) / brWall.Seconds())
	brow.RatioToFloor = ratio(brow.OpsPerS / frow.OpsPerS)
	brow.Extra = map[string]float64{"revoke_call_ms_half1": ms2(brLat[0]), "revoke_call_ms_half2": ms2(brLat[1])}
	brow.Notes = errNote(brErr, "RevokeLeases(role, spiffe_id) per half (the server revokes broker.BulkRevokeConcurrency at a time); ratio = users gone per second ÷ floor's (target ≥ 1)")
	r.report.add(brow)
	return nil
}

// vsBare is row's headline ratio (p50 at seq, ops/s otherwise) and p99
// ratio against the bare floor's row.
func vsBare(row, bare Row) (head, p99 *float64) {
	if row.Concurrency == 1 {
		head = ratio(row.P50ms / bare.P50ms)
	} else {
		head = ratio(row.OpsPerS / bare.OpsPerS)
	}
	return head, ratio(row.P99ms / bare.P99ms)
}

func ms2(d time.Duration) float64 { return round2(float64(d) / float64(time.Millisecond)) }

func errNote(res loadResult, note string) string {
	if res.firstErr != nil {
		return fmt.Sprintf("%s; first error: %v", note, res.firstErr)
	}
	return note
}
