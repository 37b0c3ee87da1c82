package broker

import (
	"bytes"
	"encoding/json"
	"os"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"gopkg.in/yaml.v3"

	"github.com/credbroker/credbroker/identity/spireregistry"
	"github.com/credbroker/credbroker/lease"
)

// The files of deploy/monitoring. promtool (scripts/test.sh) checks the
// rules' PromQL and runs their unit tests; this test checks what promtool
// cannot know: that every metric and label they name is one the broker
// exports, and that the alerts the docs promise are there.
const (
	alertRulesFile = "../deploy/monitoring/credbroker-alerts.yaml"
	dashboardFile  = "../deploy/monitoring/credbroker-dashboard.json"
)

// exportedMetrics is every metric family the broker can export (with a
// registry section and the lease gauges), name → its variable labels.
func exportedMetrics(t *testing.T) map[string][]string {
	t.Helper()
	m := newMetrics()
	m.watchLeases(func() lease.Stats { return lease.Stats{} }, time.Now)
	m.watchRegistry(func() spireregistry.Status { return spireregistry.Status{} }, time.Now)
	descs := make(chan *prometheus.Desc)
	go func() {
		for _, c := range m.collectors {
			c.Describe(descs)
		}
		close(descs)
	}()
	fqName := regexp.MustCompile(`fqName: "([^"]+)"`)
	varLabels := regexp.MustCompile(`variableLabels: \{([^}]*)\}`)
	names := map[string][]string{}
	for d := range descs {
		s := d.String()
		n := fqName.FindStringSubmatch(s)
		if n == nil {
			t.Fatalf("cannot read the name of %s", s)
		}
		var labels []string
		if v := varLabels.FindStringSubmatch(s); v != nil && v[1] != "" {
			labels = strings.Split(v[1], ",")
		}
		names[n[1]] = labels
	}
	if len(names) < 20 {
		t.Fatalf("only %d metric families described; the collectors were not all found", len(names))
	}
	return names
}

var (
	// metricRef is a metric name in PromQL, with its label matchers if any.
	metricRef = regexp.MustCompile(`\b((?:credbroker|process|go)_[a-z_]+)\b(\{[^}]*\})?`)
	// labelRef is a label named in by (…), without (…) or a matcher.
	groupingRef = regexp.MustCompile(`\b(?:by|without)\s*\(([^)]*)\)`)
	matcherRef  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)`)
)

// checkExpr fails t when expr names a metric the broker does not export,
// matches on a label the metric does not have, or groups by a label no
// metric of expr has (job, instance and le always exist).
func checkExpr(t *testing.T, where, expr string, exported map[string][]string) {
	t.Helper()
	if strings.Count(expr, "(") != strings.Count(expr, ")") || strings.Count(expr, "{") != strings.Count(expr, "}") {
		t.Errorf("%s: unbalanced brackets in %q", where, expr)
	}
	always := []string{"job", "instance"}
	known := slices.Clone(always)
	found := 0
	for _, m := range metricRef.FindAllStringSubmatch(expr, -1) {
		name := m[1]
		labels, ok := exported[name]
		if !ok {
			for _, suffix := range []string{"_bucket", "_sum", "_count"} {
				if base, cut := strings.CutSuffix(name, suffix); cut {
					if labels, ok = exported[base]; ok {
						if suffix == "_bucket" {
							labels = append(slices.Clone(labels), "le")
						}
						break
					}
				}
			}
		}
		if !ok {
			t.Errorf("%s: %s is not a metric the broker exports", where, name)
			continue
		}
		found++
		known = append(known, labels...)
		for _, mm := range matcherRef.FindAllStringSubmatch(m[2], -1) {
			if l := mm[1]; !slices.Contains(labels, l) && !slices.Contains(always, l) && l != "le" {
				t.Errorf("%s: %s has no label %q (it has %v)", where, name, l, labels)
			}
		}
	}
	if found == 0 {
		t.Errorf("%s: %q names no broker metric", where, expr)
	}
	for _, g := range groupingRef.FindAllStringSubmatch(expr, -1) {
		for _, l := range strings.Split(g[1], ",") {
			if l = strings.TrimSpace(l); l != "" && !slices.Contains(known, l) {
				t.Errorf("%s: grouping by %q, a label none of its metrics has", where, l)
			}
		}
	}
}

type alertRules struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// TestAlertRules: the alert rules decode strictly, carry the alerts the
// issue and docs/metrics.md name, each with a severity, a summary and a
// description, and name only metrics and labels the broker exports.
func TestAlertRules(t *testing.T) {
	exported := exportedMetrics(t)
	b, err := os.ReadFile(alertRulesFile)
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	var rules alertRules
	if err := dec.Decode(&rules); err != nil {
		t.Fatalf("%s: %v", alertRulesFile, err)
	}
	var alerts []string
	for _, g := range rules.Groups {
		for _, r := range g.Rules {
			where := alertRulesFile + ": " + r.Alert
			if r.Alert == "" {
				t.Errorf("%s: a rule of group %s is no alert", alertRulesFile, g.Name)
			}
			if slices.Contains(alerts, r.Alert) {
				t.Errorf("%s: twice", where)
			}
			alerts = append(alerts, r.Alert)
			if _, err := time.ParseDuration(r.For); err != nil {
				t.Errorf("%s: for %q: %v", where, r.For, err)
			}
			if s := r.Labels["severity"]; s != "critical" && s != "warning" {
				t.Errorf("%s: severity %q, want critical or warning", where, s)
			}
			for _, a := range []string{"summary", "description"} {
				if strings.TrimSpace(r.Annotations[a]) == "" {
					t.Errorf("%s: no %s annotation", where, a)
				}
			}
			checkExpr(t, where, r.Expr, exported)
		}
	}
	docs, err := os.ReadFile("../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"CredbrokerRevocationFailing",      // a revocation failing for 10 minutes
		"CredbrokerRevokingBacklogGrowing", // a growing REVOKING backlog
		"CredbrokerExpiryLagHigh",          // expiry-lag p99 over a threshold
		"CredbrokerRegistryOutOfSync",      // the registry out of sync
		"CredbrokerIssuanceErrors",         // the issuance error ratio
	} {
		if !slices.Contains(alerts, want) {
			t.Errorf("%s: no alert %s", alertRulesFile, want)
		}
	}
	for _, a := range alerts {
		if !bytes.Contains(docs, []byte("`"+a+"`")) {
			t.Errorf("docs/metrics.md does not describe the alert %s", a)
		}
	}
}

type dashboardPanel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource struct {
		UID string `json:"uid"`
	} `json:"datasource"`
	GridPos struct {
		H, W, X, Y int
	} `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
}

// TestDashboard: the Grafana dashboard decodes, its panels have unique ids
// and fit the 24-column grid, every graph queries through the dashboard's
// data source variable, and every query names only exported metrics and
// labels.
func TestDashboard(t *testing.T) {
	exported := exportedMetrics(t)
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		UID        string           `json:"uid"`
		Title      string           `json:"title"`
		Schema     int              `json:"schemaVersion"`
		Panels     []dashboardPanel `json:"panels"`
		Templating struct {
			List []struct {
				Name string `json:"name"`
			} `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	if d.UID == "" || d.Title == "" || d.Schema == 0 {
		t.Errorf("%s: uid %q, title %q, schemaVersion %d: all must be set", dashboardFile, d.UID, d.Title, d.Schema)
	}
	var vars []string
	for _, v := range d.Templating.List {
		vars = append(vars, v.Name)
	}
	for _, want := range []string{"datasource", "job", "instance"} {
		if !slices.Contains(vars, want) {
			t.Errorf("%s: no template variable %q", dashboardFile, want)
		}
	}
	ids := map[int]bool{}
	queried := map[string]bool{}
	for _, p := range d.Panels {
		where := dashboardFile + ": panel " + p.Title
		if ids[p.ID] {
			t.Errorf("%s: id %d used twice", where, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.H <= 0 || p.GridPos.X < 0 || p.GridPos.X+p.GridPos.W > 24 {
			t.Errorf("%s: gridPos %+v does not fit the 24-column grid", where, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource.UID != "${datasource}" {
			t.Errorf("%s: data source %q, want the ${datasource} variable", where, p.Datasource.UID)
		}
		if len(p.Targets) == 0 {
			t.Errorf("%s: no query", where)
		}
		for _, q := range p.Targets {
			checkExpr(t, where, q.Expr, exported)
			for _, m := range metricRef.FindAllStringSubmatch(q.Expr, -1) {
				queried[m[1]] = true
			}
		}
	}
	// The panels the issue asks for: issuance, revocation health, expiry
	// lag, plugin calls, the store, the registry.
	for _, want := range []string{
		"credbroker_leases_issued_total", "credbroker_revoking_leases", "credbroker_oldest_revoking_age_seconds",
		"credbroker_expiry_lag_seconds_bucket", "credbroker_plugin_call_duration_seconds_bucket",
		"credbroker_store_commit_duration_seconds_bucket", "credbroker_registry_healthy",
	} {
		if !queried[want] {
			t.Errorf("%s: no panel queries %s", dashboardFile, want)
		}
	}
}
