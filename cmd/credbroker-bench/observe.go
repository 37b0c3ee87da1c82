package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/credbroker/credbroker/audit"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// observedPrefix names the users of the broker with metrics and the audit
// log on, apart from the plain broker's (brokerPrefix).
const observedPrefix = "co"

// scrapeEvery is how often the observed broker's /metrics is read while it
// is measured: more often than a Prometheus would (15 s is common), so that
// the scrape's cost shows.
const scrapeEvery = time.Second

// observe measures what the metrics and the audit log cost issuance
// (issue 12's target: ops/s within 5 %, p99 within 10 % of the same broker
// with both off). Two brokers on the same database, identical but for
// Observed: one with metrics off and no audit log, one serving /metrics
// (read every scrapeEvery while it works) and writing a fail-closed audit
// file, each record durable (fdatasync, shared by the records of a group)
// before the credential it records is returned. Same rounds and ABBA order
// as issueAndRevoke; the group template.
func (r *runner) observe(ctx context.Context) error {
	const tmpl = bareTemplate
	offDir, onDir := r.tmpDir(), r.tmpDir()
	off, err := r.pg.startBroker(ctx, brokerOptions{Dir: offDir, Prefix: brokerPrefix, MaxConns: 32})
	if err != nil {
		return err
	}
	defer off.stop()
	on, err := r.pg.startBroker(ctx, brokerOptions{Dir: onDir, Prefix: observedPrefix, MaxConns: 32, Observed: true})
	if err != nil {
		return err
	}
	defer on.stop()
	addr := on.app.MetricsAddr()
	if addr == nil {
		return fmt.Errorf("the observed broker serves no metrics")
	}

	var scrapes, scrapeErrs atomic.Int64
	scrapeCtx, stopScraping := context.WithCancel(ctx)
	scraped := make(chan struct{})
	go func() {
		defer close(scraped)
		t := time.NewTicker(scrapeEvery)
		defer t.Stop()
		for {
			select {
			case <-scrapeCtx.Done():
				return
			case <-t.C:
			}
			if err := scrape(scrapeCtx, "http://"+addr.String()+"/metrics"); err != nil {
				if scrapeCtx.Err() == nil {
					scrapeErrs.Add(1)
				}
				continue
			}
			scrapes.Add(1)
		}
	}()
	defer func() { stopScraping(); <-scraped }()

	issued := map[*runningBroker]int{}
	for _, m := range issueModes {
		n := r.sizes.issueN(m.Conc)
		var (
			res     [2]loadResult
			brokers = [2]*runningBroker{off, on}
			clients [2][]pb.CredentialServiceClient
		)
		for i, b := range brokers {
			if clients[i], err = b.clients(ctx, m.Conc); err != nil {
				return err
			}
			// Warm each pool with one unmeasured burst, as issueAndRevoke.
			cold := runLoad(ctx, m.Conc, m.Conc, func(ctx context.Context, w, _ int) error {
				_, err := clients[i][w].IssueCredential(ctx, issueReq(tmpl, issueTTL))
				return err
			})
			if cold.errors > 0 {
				return fmt.Errorf("warm-up: %w", cold.firstErr)
			}
			issued[b] += len(cold.lat)
		}
		for round := range m.Rounds {
			per := n / m.Rounds
			if round == m.Rounds-1 {
				per = n - per*(m.Rounds-1)
			}
			order := []int{0, 1}
			if round%2 == 1 {
				order = []int{1, 0}
			}
			for _, i := range order {
				res[i].merge(runLoad(ctx, per, m.Conc, func(ctx context.Context, w, _ int) error {
					_, err := clients[i][w].IssueCredential(ctx, issueReq(tmpl, issueTTL))
					return err
				}))
			}
		}
		var rows [2]Row
		for i, name := range []string{"off", "on"} {
			rows[i] = Row{Scenario: "observe-" + name + " " + m.Name, Template: tmpl, N: n, Concurrency: m.Conc, Errors: res[i].errors}
			res[i].fill(&rows[i])
			issued[brokers[i]] += len(res[i].lat)
		}
		rows[0].Notes = errNote(res[0], "broker-issue with metrics off and no audit log; rounds alternating with observe-on")
		onRow := &rows[1]
		if onRow.Extra == nil {
			onRow.Extra = map[string]float64{}
		}
		if m.Conc == 1 {
			onRow.Extra["p50_to_off"] = round2(onRow.P50ms / rows[0].P50ms)
		}
		onRow.Extra["ops_to_off"] = round2(onRow.OpsPerS / rows[0].OpsPerS)
		onRow.Extra["p99_to_off"] = round2(onRow.P99ms / rows[0].P99ms)
		onRow.Notes = errNote(res[1], fmt.Sprintf("the same with /metrics read every %s and a fail-closed audit file (each record fdatasynced, group-committed, before the credential is returned); targets: ops_to_off ≥ 0.95, p99_to_off ≤ 1.10", scrapeEvery))
		r.report.add(rows[0])
		r.report.add(*onRow)
	}
	stopScraping()
	<-scraped

	// Every issuance of the observed broker is in its audit log, and the
	// chain verifies.
	rep, err := audit.Verify(filepath.Join(onDir, "audit.log"))
	if err != nil {
		return fmt.Errorf("audit log of the observed broker: %w", err)
	}
	if rep.Records < issued[on] {
		return fmt.Errorf("audit log of the observed broker: %d records for %d issuances", rep.Records, issued[on])
	}
	r.report.add(Row{Scenario: "observe-audit", N: rep.Records, Notes: fmt.Sprintf(
		"records in the observed broker's audit log (chain verified) for %d issuances; %d scrapes of /metrics, %d failed", issued[on], scrapes.Load(), scrapeErrs.Load())})

	// Leave the users to nobody: revoke both brokers' leases.
	for _, b := range []*runningBroker{off, on} {
		admin, err := b.admin()
		if err != nil {
			return err
		}
		if _, err := admin.RevokeLeases(ctx, &pb.RevokeLeasesRequest{Role: tmpl}); err != nil {
			return fmt.Errorf("revoke: %w", err)
		}
	}
	return nil
}

// scrape reads url once, as Prometheus would.
func scrape(ctx context.Context, url string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(io.Discard, resp.Body); err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	return nil
}
