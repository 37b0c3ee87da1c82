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

// observedPrefix and observedFastPrefix name the users of the brokers with
// metrics and the audit log on, apart from the plain broker's
// (brokerPrefix).
const (
	observedPrefix     = "co"
	observedFastPrefix = "cf"
)

// fastAuditSync is audit.sync_interval of the observe-on-fast broker.
const fastAuditSync = 100 * time.Millisecond

// scrapeEvery is how often the observed broker's /metrics is read while it
// is measured: more often than a Prometheus would (15 s is common), so that
// the scrape's cost shows.
const scrapeEvery = time.Second

// observe measures what the metrics and the audit log cost issuance
// (issue 12's target: ops/s within 5 %, p99 within 10 % of the same broker
// with both off). Three brokers on the same database, identical but for
// Observed: one with metrics off and no audit log; one serving /metrics
// (read every scrapeEvery while it works) and writing a fail-closed audit
// file, each record durable (fdatasync, shared by the records of a group)
// before the credential it records is returned; and the same with the
// audit file synced every fastAuditSync instead. Twice as many rounds as
// issueAndRevoke, in the same ABC CBA order; the group template.
func (r *runner) observe(ctx context.Context) error {
	const tmpl = bareTemplate
	sides := []struct {
		name, note string
		opts       brokerOptions
	}{
		{"observe-off", "broker-issue with metrics off and no audit log; rounds alternating with the observe-on rows",
			brokerOptions{Prefix: brokerPrefix}},
		{"observe-on", fmt.Sprintf("the same with /metrics read every %s and a fail-closed audit file, each record fdatasynced (group commit, overlapping the lease store's) before the credential is returned", scrapeEvery),
			brokerOptions{Prefix: observedPrefix, Observed: true}},
		{"observe-on-fast", fmt.Sprintf("observe-on with audit.sync_interval %s: each record written to the file before the credential is returned (a broker crash loses none), the file fdatasynced within %s (a machine crash can lose that much)", fastAuditSync, fastAuditSync),
			brokerOptions{Prefix: observedFastPrefix, Observed: true, AuditSyncInterval: fastAuditSync}},
	}
	brokers := make([]*runningBroker, len(sides))
	dirs := make([]string, len(sides))
	for i, side := range sides {
		dirs[i] = r.tmpDir()
		o := side.opts
		o.Dir, o.MaxConns = dirs[i], 32
		b, err := r.pg.startBroker(ctx, o)
		if err != nil {
			return err
		}
		defer b.stop()
		brokers[i] = b
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
			for _, b := range brokers {
				addr := b.app.MetricsAddr()
				if addr == nil {
					continue
				}
				if err := scrape(scrapeCtx, "http://"+addr.String()+"/metrics"); err != nil {
					if scrapeCtx.Err() == nil {
						scrapeErrs.Add(1)
					}
					continue
				}
				scrapes.Add(1)
			}
		}
	}()
	defer func() { stopScraping(); <-scraped }()

	issued := make([]int, len(sides))
	for _, m := range issueModes {
		n := r.sizes.issueN(m.Conc)
		if m.Conc == 1 {
			n = r.sizes.observeSeq
		}
		res := make([]loadResult, len(sides))
		clients := make([][]pb.CredentialServiceClient, len(sides))
		for i, b := range brokers {
			var err error
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
			issued[i] += len(cold.lat)
		}
		// Twice issueAndRevoke's rounds, each half as long: the ratios
		// compare brokers that differ by a few percent, and a short
		// round exposes all three alike to the VM's slow stretches.
		rounds := 2 * m.Rounds
		for round := range rounds {
			per := n / rounds
			if round == rounds-1 {
				per = n - per*(rounds-1)
			}
			// ABC CBA, as issueAndRevoke.
			order := []int{0, 1, 2}
			if round%2 == 1 {
				order = []int{2, 1, 0}
			}
			for _, i := range order {
				res[i].merge(runLoad(ctx, per, m.Conc, func(ctx context.Context, w, _ int) error {
					_, err := clients[i][w].IssueCredential(ctx, issueReq(tmpl, issueTTL))
					return err
				}))
			}
		}
		rows := make([]Row, len(sides))
		for i, side := range sides {
			rows[i] = Row{Scenario: side.name + " " + m.Name, Template: tmpl, N: n, Concurrency: m.Conc, Errors: res[i].errors}
			res[i].fill(&rows[i])
			issued[i] += len(res[i].lat)
			note := side.note
			if i > 0 {
				if rows[i].Extra == nil {
					rows[i].Extra = map[string]float64{}
				}
				if m.Conc == 1 {
					rows[i].Extra["p50_to_off"] = round2(rows[i].P50ms / rows[0].P50ms)
				}
				rows[i].Extra["ops_to_off"] = round2(rows[i].OpsPerS / rows[0].OpsPerS)
				rows[i].Extra["p99_to_off"] = round2(rows[i].P99ms / rows[0].P99ms)
				note += fmt.Sprintf("; ops/s %.2fx and p99 %.2fx of observe-off (targets: ≥ 0.95, ≤ 1.10)", rows[i].Extra["ops_to_off"], rows[i].Extra["p99_to_off"])
			}
			rows[i].Notes = errNote(res[i], note)
			r.report.add(rows[i])
		}
	}
	stopScraping()
	<-scraped

	// Every issuance of the observed brokers is in their audit logs, and
	// the chains verify.
	for i := 1; i < len(sides); i++ {
		rep, err := audit.Verify(filepath.Join(dirs[i], "audit.log"))
		if err != nil {
			return fmt.Errorf("audit log of %s: %w", sides[i].name, err)
		}
		if rep.Records < issued[i] {
			return fmt.Errorf("audit log of %s: %d records for %d issuances", sides[i].name, rep.Records, issued[i])
		}
		r.report.add(Row{Scenario: sides[i].name + "-audit", N: rep.Records, Notes: fmt.Sprintf(
			"records in the audit log (chain verified) for %d issuances", issued[i])})
	}
	r.report.add(Row{Scenario: "observe-scrapes", N: int(scrapes.Load()), Errors: int(scrapeErrs.Load()), Notes: "scrapes of /metrics during the observe rows"})

	// Leave the users to nobody: revoke every broker's leases.
	for _, b := range brokers {
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
