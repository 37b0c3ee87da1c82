package main

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// benchClock is the broker's clock (AppOptions.Now): frozen while the
// storm's leases are issued, so that they all expire within one second,
// then running from a chosen instant.
type benchClock struct {
	frozen atomic.Int64 // Unix nanoseconds; 0: running
	offset atomic.Int64 // running: real time plus this
}

func (c *benchClock) Now() time.Time {
	if f := c.frozen.Load(); f != 0 {
		return time.Unix(0, f)
	}
	return time.Now().Add(time.Duration(c.offset.Load()))
}

func (c *benchClock) freeze(t time.Time) { c.frozen.Store(t.UnixNano()) }

// runFrom makes the clock run on from t.
func (c *benchClock) runFrom(t time.Time) {
	c.offset.Store(int64(t.Sub(time.Now())))
	c.frozen.Store(0)
}

// Storm settings: the expiry loop's knobs as an operator sets them
// (revocation.concurrency, revocation.rate_per_second). With the defaults
// (4, 50/s) the loop revokes at most 50 leases a second by design, and a
// 10,000-lease storm takes over 200 s. Concurrency is also the largest drop
// batch (plugins/postgres coalesces concurrent drops): measured on 2 cores,
// 64 cleared 10,000 in 10 s but doubled issuance p99 meanwhile, 8 took 29 s
// at 1.7× p99, 16 took 15 s at 1.9×.
const (
	stormConcurrency = 16
	stormRate        = 1000
	stormRole        = "storm" // the group template under its own name
)

// storm issues N leases that all expire within one second, then lets the
// clock reach that second: the expiry loop must remove every user (timed
// until pg_roles shows none), while one client keeps issuing credentials
// (its latency during the storm is compared with the same client's, idle,
// before and after).
func (r *runner) storm(ctx context.Context) error {
	n := r.sizes.storm
	clock := &benchClock{}
	t0 := time.Now().UTC().Truncate(time.Second)
	clock.freeze(t0)
	b, err := r.pg.startBroker(ctx, brokerOptions{
		Dir: r.tmpDir(), Prefix: brokerPrefix, MaxConns: 32, Now: clock.Now,
		RevokeConcurrency: r.sizes.stormConc, RevokeRate: r.sizes.stormRate,
	})
	if err != nil {
		return err
	}
	defer b.stop()
	clients, err := b.clients(ctx, 32)
	if err != nil {
		return err
	}

	// Expiries at t0+60s plus 0..999 ms: one second.
	const ttl = time.Minute
	setup := runLoad(ctx, n, 32, func(ctx context.Context, w, i int) error {
		_, err := clients[w].IssueCredential(ctx, issueReq(stormRole, ttl+time.Duration(i%1000)*time.Millisecond))
		return err
	})
	if setup.errors > 0 {
		return fmt.Errorf("issuing the storm's leases: %d errors, first: %v", setup.errors, setup.firstErr)
	}
	fmt.Fprintf(r.log, "bench: issued %d storm leases in %s (%.0f/s)\n", n, setup.wall.Round(time.Millisecond), float64(n)/setup.wall.Seconds())

	// Idle: the same client, alone, half before the storm and half after
	// it, so that the machine's drift over the minute does not count as
	// the storm's doing.
	issueOne := func(ctx context.Context, _, _ int) error {
		_, err := clients[0].IssueCredential(ctx, issueReq("group", time.Hour))
		return err
	}
	idle := runLoad(ctx, r.sizes.stormProbe/2, 1, issueOne)

	// The storm: the clock reaches the expiries.
	clock.runFrom(t0.Add(ttl - 100*time.Millisecond))
	start := time.Now()
	var during loadResult
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case <-stop:
				return
			default:
			}
			during.merge(runLoad(ctx, 1, 1, issueOne))
		}
	})
	left, err := r.pg.usersLeft(ctx, brokerPrefix+"_"+stormRole, 20*time.Millisecond, 3*time.Minute)
	took := time.Since(start)
	close(stop)
	wg.Wait()
	if err != nil {
		return err
	}
	idle.merge(runLoad(ctx, r.sizes.stormProbe-r.sizes.stormProbe/2, 1, issueOne))

	row := Row{Scenario: "expiry-storm", Template: "group", N: n, Concurrency: r.sizes.stormConc}
	row.WallS = round2(took.Seconds())
	row.OpsPerS = round2(float64(n-left) / took.Seconds())
	row.Extra = map[string]float64{"all_gone_s": round2(took.Seconds()), "left": float64(left), "setup_issue_per_s": round2(float64(n) / setup.wall.Seconds())}
	row.Notes = fmt.Sprintf("%d leases expiring within one second; all users gone from pg_roles after %.1f s (target ≤ 30 s); revocation.concurrency %d, rate_per_second %g",
		n, took.Seconds(), r.sizes.stormConc, r.sizes.stormRate)
	if left > 0 {
		row.Errors = left
		row.Notes += fmt.Sprintf("; %d still present after 3 minutes", left)
	}
	r.report.add(row)

	irow := Row{Scenario: "issue idle (around storm)", Template: "group", N: len(idle.lat) + idle.errors, Concurrency: 1, Errors: idle.errors}
	idle.fill(&irow)
	irow.Notes = errNote(idle, "one client issuing back to back, broker idle: half before the storm, half after it")
	r.report.add(irow)

	srow := Row{Scenario: "issue during storm", Template: "group", N: len(during.lat) + during.errors, Concurrency: 1, Errors: during.errors}
	during.lat.fill(&srow, took)
	srow.RatioToFloor = ratio(srow.P99ms / irow.P99ms)
	srow.Notes = errNote(during, "the same client while the storm runs; ratio = p99 ÷ idle p99 (target ≤ 2)")
	r.report.add(srow)

	// Whatever the probe issued goes too (not measured).
	admin, err := b.admin()
	if err != nil {
		return err
	}
	_, err = admin.RevokeLeases(ctx, &pb.RevokeLeasesRequest{Role: "group"})
	return err
}
