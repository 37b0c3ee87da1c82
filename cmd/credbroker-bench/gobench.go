package main

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
)

// goBenchRows turns the output of go test -bench (scripts/bench.sh runs the
// lease package's) into rows of the one table. go test reports a mean per
// operation, not percentiles: it goes to ops/s and the notes.
func goBenchRows(path string) ([]Row, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("go bench output: %w", err)
	}
	defer f.Close()
	names := map[string]struct {
		scenario string
		n, conc  int
	}{
		"BenchmarkQueuePush":        {"heap push", 1_000_000, 1},
		"BenchmarkQueuePop":         {"heap pop", 1_000_000, 1},
		"BenchmarkQueueFix":         {"heap renew-fix", 1_000_000, 1},
		"BenchmarkBoltPut":          {"store put (durable)", 1, 1},
		"BenchmarkBoltPutParallel":  {"store put (durable)", 1, 32},
		"BenchmarkIssueRevokeStore": {"store per lease", 1, 1},
	}
	var rows []Row
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 4 || !strings.HasPrefix(fields[0], "Benchmark") || fields[3] != "ns/op" {
			continue
		}
		name, _, _ := strings.Cut(fields[0], "-")
		spec, ok := names[name]
		if !ok {
			continue
		}
		ns, err := strconv.ParseFloat(fields[2], 64)
		if err != nil || ns <= 0 {
			continue
		}
		row := Row{Scenario: spec.scenario, N: spec.n, Concurrency: spec.conc, OpsPerS: round2(1e9 / ns)}
		row.Extra = map[string]float64{"ns_per_op": ns, "iterations": atof(fields[1])}
		note := fmt.Sprintf("go test -bench %s: mean %s/op", name, fmtNs(ns))
		for i := 4; i+1 < len(fields); i += 2 {
			if v, err := strconv.ParseFloat(fields[i], 64); err == nil {
				row.Extra[strings.ReplaceAll(fields[i+1], "/", "_per_")] = v
				note += fmt.Sprintf(", %s %s", fields[i], fields[i+1])
			}
		}
		switch name {
		case "BenchmarkBoltPut":
			note += "; one frame of the write-ahead log, fdatasynced, with nothing else in flight (twice per credential)"
		case "BenchmarkBoltPutParallel":
			note += "; 32 writers sharing frames and syncs (group commit)"
		case "BenchmarkIssueRevokeStore":
			note += "; Begin+Activate+Revoke on bbolt with a no-op database: the broker's own cost per lease"
		default:
			note += fmt.Sprintf("; %d leases queued", spec.n)
		}
		row.Notes = note
		rows = append(rows, row)
	}
	return rows, sc.Err()
}

func atof(s string) float64 {
	v, _ := strconv.ParseFloat(s, 64)
	return v
}

func fmtNs(ns float64) string {
	switch {
	case ns >= 1e6:
		return fmt.Sprintf("%.2f ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%.2f µs", ns/1e3)
	}
	return fmt.Sprintf("%.0f ns", ns)
}
