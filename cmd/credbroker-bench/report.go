package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Row is one line of the table and one object of bench.json. The first
// eight keys are fixed by issue 5; ratio_to_floor is omitted where there is
// no floor to compare with.
type Row struct {
	Scenario     string   `json:"scenario"`
	N            int      `json:"n"`
	Concurrency  int      `json:"concurrency"`
	OpsPerS      float64  `json:"ops_per_s"`
	P50ms        float64  `json:"p50_ms"`
	P90ms        float64  `json:"p90_ms"`
	P99ms        float64  `json:"p99_ms"`
	RatioToFloor *float64 `json:"ratio_to_floor,omitempty"`
	// P99ToFloor is p99 ÷ the floor's p99; RatioToBare and P99ToBare are
	// the same against the bare floor (group template only): p50 at seq,
	// ops/s otherwise.
	P99ToFloor  *float64 `json:"p99_to_floor,omitempty"`
	RatioToBare *float64 `json:"ratio_to_bare,omitempty"`
	P99ToBare   *float64 `json:"p99_to_bare,omitempty"`

	Template string `json:"template,omitempty"` // group | grant | -
	Errors   int    `json:"errors"`
	// WallS is the scenario's measured wall time in seconds.
	WallS float64 `json:"wall_s"`
	// Extra holds scenario-specific figures (restore: serving_ms, ...).
	Extra map[string]float64 `json:"extra,omitempty"`
	Notes string             `json:"notes,omitempty"`
}

// Report collects rows and prints them as they come, so that a long run
// shows progress.
type Report struct {
	Rows     []Row     `json:"rows"`
	Started  time.Time `json:"started"`
	Host     string    `json:"host"`
	Postgres string    `json:"postgres"`
	Go       string    `json:"go"`
	log      io.Writer
}

func (r *Report) add(row Row) {
	r.Rows = append(r.Rows, row)
	fmt.Fprintf(r.log, "bench: %-22s %-5s n=%-7d c=%-3d %10.1f ops/s  p50 %7.2f  p99 %8.2f ms  err %d  %s\n",
		row.Scenario, row.Template, row.N, row.Concurrency, row.OpsPerS, row.P50ms, row.P99ms, row.Errors, row.Notes)
}

// ratio returns a pointer for Row.RatioToFloor.
func ratio(v float64) *float64 {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return nil
	}
	v = math.Round(v*100) / 100
	return &v
}

// Print writes the table.
func (r *Report) Print(w io.Writer) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "scenario\ttemplate\tn\tconc\tops/s\tp50 ms\tp90 ms\tp99 ms\tvs floor\tp99/floor\tvs bare\tp99/bare\terrors\t")
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t\n",
			row.Scenario, orDash(row.Template), row.N, row.Concurrency, num(row.OpsPerS),
			ms(row.P50ms), ms(row.P90ms), ms(row.P99ms),
			times(row.RatioToFloor, "x"), times(row.P99ToFloor, "x"), times(row.RatioToBare, "x"), times(row.P99ToBare, "x"), row.Errors)
	}
	tw.Flush()
	fmt.Fprintln(w)
	fmt.Fprintln(w, "notes:")
	for _, row := range r.Rows {
		if row.Notes == "" {
			continue
		}
		fmt.Fprintf(w, "  %s %s: %s\n", row.Scenario, orDash(row.Template), row.Notes)
	}
}

// Markdown writes the table as Markdown (for docs/performance.md).
func (r *Report) Markdown(w io.Writer) {
	fmt.Fprintln(w, "| scenario | template | n | conc | ops/s | p50 ms | p90 ms | p99 ms | vs floor | p99/floor | vs bare | p99/bare | errors | notes |")
	fmt.Fprintln(w, "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
	for _, row := range r.Rows {
		fmt.Fprintf(w, "| %s | %s | %d | %d | %s | %s | %s | %s | %s | %s | %s | %s | %d | %s |\n",
			row.Scenario, orDash(row.Template), row.N, row.Concurrency, num(row.OpsPerS),
			ms(row.P50ms), ms(row.P90ms), ms(row.P99ms),
			times(row.RatioToFloor, "×"), times(row.P99ToFloor, "×"), times(row.RatioToBare, "×"), times(row.P99ToBare, "×"), row.Errors,
			strings.ReplaceAll(row.Notes, "|", "/"))
	}
}

// WriteJSON writes bench.json.
func (r *Report) WriteJSON(path string) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("bench.json: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("bench.json: %w", err)
	}
	return nil
}

// times prints a ratio, or "-" where there is none.
func times(v *float64, sign string) string {
	if v == nil {
		return "-"
	}
	return fmt.Sprintf("%.2f%s", *v, sign)
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func num(v float64) string {
	switch {
	case v == 0:
		return "-"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.1f", v)
}

func ms(v float64) string {
	if v == 0 {
		return "-"
	}
	if v >= 100 {
		return fmt.Sprintf("%.0f", v)
	}
	return fmt.Sprintf("%.2f", v)
}

// latencies summarises one run's per-operation durations.
type latencies []time.Duration

// percentile returns the p-th percentile (0 < p <= 100) in milliseconds,
// nearest-rank.
func (l latencies) percentile(p float64) float64 {
	if len(l) == 0 {
		return 0
	}
	s := slices.Clone(l)
	slices.Sort(s)
	i := int(math.Ceil(p/100*float64(len(s)))) - 1
	i = max(0, min(i, len(s)-1))
	return float64(s[i]) / float64(time.Millisecond)
}

// fill sets the latency and throughput fields of row from l measured over
// wall.
func (l latencies) fill(row *Row, wall time.Duration) {
	row.P50ms = round2(l.percentile(50))
	row.P90ms = round2(l.percentile(90))
	row.P99ms = round2(l.percentile(99))
	row.WallS = round2(wall.Seconds())
	if wall > 0 {
		row.OpsPerS = round2(float64(len(l)) / wall.Seconds())
	}
}

func round2(v float64) float64 { return math.Round(v*100) / 100 }
