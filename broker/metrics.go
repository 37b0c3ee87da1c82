package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"runtime"
	"runtime/debug"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/grpc/codes"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/identity/spireregistry"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
)

// metrics are the broker's Prometheus metrics (docs/metrics.md), on a
// registry of their own. Every label is bounded: a method, a code, a
// configured role or database, an operation, a reason; never a lease id,
// username or SPIFFE ID. A nil *metrics records nothing (metrics off).
type metrics struct {
	reg        *prometheus.Registry
	collectors []prometheus.Collector // every one registered in reg

	grpcRequests   *prometheus.CounterVec
	grpcDuration   *prometheus.HistogramVec
	issued         *prometheus.CounterVec
	renewed        *prometheus.CounterVec
	revoked        *prometheus.CounterVec
	revokeFailures prometheus.Counter
	expiryLag      prometheus.Histogram
	pluginDuration *prometheus.HistogramVec
	pluginErrors   *prometheus.CounterVec

	commitDuration prometheus.Histogram
	commitWrites   prometheus.Histogram
	commitErrors   prometheus.Counter
}

// Version is the broker's version in credbroker_build_info; cmd may set it
// at link time (-ldflags -X). Default: the main module's version.
var Version = ""

func newMetrics() *metrics {
	reg := prometheus.NewRegistry()
	m := &metrics{
		reg: reg,
		grpcRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_grpc_requests_total",
			Help: "gRPC calls answered, by full method and status code (refused ones included).",
		}, []string{"method", "code"}),
		grpcDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "credbroker_grpc_request_duration_seconds",
			Help:    "Time to answer a gRPC call, by full method.",
			Buckets: prometheus.DefBuckets,
		}, []string{"method"}),
		issued: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_leases_issued_total",
			Help: "IssueCredential calls by role, database and outcome (ok or the gRPC code name).",
		}, []string{"role", "database", "outcome"}),
		renewed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_leases_renewed_total",
			Help: "RenewLease calls by role and outcome (ok or the gRPC code name).",
		}, []string{"role", "outcome"}),
		revoked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_leases_revoked_total",
			Help: "Leases ended (user dropped, record deleted) by role and reason: owner, admin, expiry, deregistration, spire.",
		}, []string{"role", "reason"}),
		revokeFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "credbroker_revocation_failures_total",
			Help: "Failed attempts to drop a lease's database user (each is retried with backoff).",
		}),
		expiryLag: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "credbroker_expiry_lag_seconds",
			Help:    "For each expired lease, the time from its expire_time to its user being dropped.",
			Buckets: []float64{0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600},
		}),
		pluginDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "credbroker_plugin_call_duration_seconds",
			Help:    "Time of each database plugin call that talks to the server, by database and operation.",
			Buckets: prometheus.DefBuckets,
		}, []string{"database", "operation"}),
		pluginErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "credbroker_plugin_call_errors_total",
			Help: "Database plugin calls that failed, by database and operation.",
		}, []string{"database", "operation"}),
	}
	m.commitDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "credbroker_store_commit_duration_seconds",
		Help:    "Time of each commit of the lease store (bbolt: a group commit and its fsync; PostgreSQL: a write transaction).",
		Buckets: []float64{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5},
	})
	m.commitWrites = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "credbroker_store_commit_batch_size",
		Help:    "Lease writes carried by each commit of the lease store.",
		Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
	})
	m.commitErrors = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "credbroker_store_commit_errors_total",
		Help: "Commits of the lease store that failed.",
	})
	buildInfo := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "credbroker_build_info",
		Help: "Always 1; the labels say which broker build runs.",
	}, []string{"version", "goversion"})
	buildInfo.WithLabelValues(version(), runtime.Version()).Set(1)
	m.register(
		m.grpcRequests, m.grpcDuration, m.issued, m.renewed, m.revoked, m.revokeFailures,
		m.expiryLag, m.pluginDuration, m.pluginErrors, buildInfo,
		m.commitDuration, m.commitWrites, m.commitErrors,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return m
}

// register adds cs to the registry and keeps them, so that every metric
// the broker can export is known before it has a sample (the check of the
// monitoring rules against the metric names).
func (m *metrics) register(cs ...prometheus.Collector) {
	m.reg.MustRegister(cs...)
	m.collectors = append(m.collectors, cs...)
}

func version() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" {
		return bi.Main.Version
	}
	return "unknown"
}

// watchLeases registers the gauges read from the lease manager at scrape
// time.
func (m *metrics) watchLeases(stats func() lease.Stats, now func() time.Time) {
	if m == nil {
		return
	}
	m.register(leaseCollector{stats: stats, now: now})
}

// watchRegistry registers the SPIRE registry watch's gauges, read from
// status at scrape time.
func (m *metrics) watchRegistry(status func() spireregistry.Status, now func() time.Time) {
	if m == nil {
		return
	}
	m.register(registryCollector{status: status, now: now})
}

// grpcCall records one answered call.
func (m *metrics) grpcCall(method string, code codes.Code, took time.Duration) {
	if m == nil {
		return
	}
	m.grpcRequests.WithLabelValues(method, code.String()).Inc()
	m.grpcDuration.WithLabelValues(method).Observe(took.Seconds())
}

// issue records one IssueCredential outcome for the role asked for; role
// and database are "" for a role that is not in roles, so that a caller
// cannot make up label values.
func (m *metrics) issue(roles map[string]*Role, role string, err error) {
	if m == nil {
		return
	}
	database := ""
	if r, ok := roles[role]; ok && r.Database != nil {
		database = r.Database.Name
	} else {
		role = ""
	}
	m.issued.WithLabelValues(role, database, resultOf(err)).Inc()
}

// renew records one RenewLease outcome; role is "" when no lease was found.
func (m *metrics) renew(role string, err error) {
	if m == nil {
		return
	}
	m.renewed.WithLabelValues(role, resultOf(err)).Inc()
}

// ended records leases ended for reason.
func (m *metrics) ended(by audit.By, ls []lease.Lease) {
	if m == nil {
		return
	}
	for _, l := range ls {
		m.revoked.WithLabelValues(l.Role, string(by)).Inc()
	}
}

// onEnd is the lease.Config.OnEnd part of the metrics: expired leases
// (the other endings are counted where their reason is known).
func (m *metrics) onEnd(now func() time.Time) func(lease.Lease, bool) {
	return func(l lease.Lease, expired bool) {
		if m == nil || !expired {
			return
		}
		m.revoked.WithLabelValues(l.Role, string(audit.ByExpiry)).Inc()
		m.expiryLag.Observe(max(0, now().Sub(l.ExpireTime).Seconds()))
	}
}

// storeCommit is the lease store's lease.CommitObserver.
func (m *metrics) storeCommit(writes int, took time.Duration, err error) {
	m.commitDuration.Observe(took.Seconds())
	m.commitWrites.Observe(float64(writes))
	if err != nil {
		m.commitErrors.Inc()
	}
}

// dropFailed records a failed drop attempt.
func (m *metrics) dropFailed() {
	if m == nil {
		return
	}
	m.revokeFailures.Inc()
}

// observePlugin wraps db, the plugin of database, to time its calls; with
// metrics off it returns db.
func (m *metrics) observePlugin(database string, db plugins.Database) plugins.Database {
	if m == nil {
		return db
	}
	return plugins.Observed(db, func(op plugins.Operation, took time.Duration, err error) {
		m.pluginDuration.WithLabelValues(database, string(op)).Observe(took.Seconds())
		if err != nil {
			m.pluginErrors.WithLabelValues(database, string(op)).Inc()
		}
	})
}

// chainOnEnd calls each non-nil hook in turn; nil if there is none.
func chainOnEnd(hooks ...func(lease.Lease, bool)) func(lease.Lease, bool) {
	var hs []func(lease.Lease, bool)
	for _, h := range hooks {
		if h != nil {
			hs = append(hs, h)
		}
	}
	if len(hs) == 0 {
		return nil
	}
	return func(l lease.Lease, expired bool) {
		for _, h := range hs {
			h(l, expired)
		}
	}
}

var (
	leasesDesc = prometheus.NewDesc("credbroker_leases",
		"Leases held, by state (CREATING, ACTIVE, REVOKING).", []string{"state"}, nil)
	leasesByRoleDesc = prometheus.NewDesc("credbroker_leases_by_role",
		"Leases held, by role.", []string{"role"}, nil)
	revokingDesc = prometheus.NewDesc("credbroker_revoking_leases",
		"Leases whose revocation has started and not finished (the backlog of failing drops).", nil, nil)
	oldestRevokingDesc = prometheus.NewDesc("credbroker_oldest_revoking_age_seconds",
		"Age of the oldest REVOKING lease (since this broker saw it become REVOKING); 0 when none.", nil, nil)
)

// leaseCollector reads the lease manager's counts at scrape time, in
// O(states + origin groups).
type leaseCollector struct {
	stats func() lease.Stats
	now   func() time.Time
}

func (c leaseCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{leasesDesc, leasesByRoleDesc, revokingDesc, oldestRevokingDesc} {
		ch <- d
	}
}

func (c leaseCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	for _, st := range []lease.State{lease.StateCreating, lease.StateActive, lease.StateRevoking} {
		ch <- prometheus.MustNewConstMetric(leasesDesc, prometheus.GaugeValue, float64(s.ByState[st]), st.String())
	}
	for role, n := range s.ByRole {
		ch <- prometheus.MustNewConstMetric(leasesByRoleDesc, prometheus.GaugeValue, float64(n), role)
	}
	ch <- prometheus.MustNewConstMetric(revokingDesc, prometheus.GaugeValue, float64(s.ByState[lease.StateRevoking]))
	age := 0.0
	if !s.OldestRevoking.IsZero() {
		age = max(0, c.now().Sub(s.OldestRevoking).Seconds())
	}
	ch <- prometheus.MustNewConstMetric(oldestRevokingDesc, prometheus.GaugeValue, age)
}

var (
	registryHealthyDesc = prometheus.NewDesc("credbroker_registry_healthy",
		"1 when the last listing of the SPIRE server's entries succeeded, else 0.", nil, nil)
	registrySyncAgeDesc = prometheus.NewDesc("credbroker_registry_sync_age_seconds",
		"Time since the last successful listing of the SPIRE server's entries began; absent before the first.", nil, nil)
	registryFailuresDesc = prometheus.NewDesc("credbroker_registry_consecutive_failures",
		"Listings of the SPIRE server's entries that failed in a row (0 once one succeeds).", nil, nil)
)

// registryCollector reads the SPIRE registry watch's status at scrape
// time.
type registryCollector struct {
	status func() spireregistry.Status
	now    func() time.Time
}

func (c registryCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{registryHealthyDesc, registrySyncAgeDesc, registryFailuresDesc} {
		ch <- d
	}
}

func (c registryCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.status()
	healthy := 0.0
	if s.Healthy {
		healthy = 1
	}
	ch <- prometheus.MustNewConstMetric(registryHealthyDesc, prometheus.GaugeValue, healthy)
	if !s.LastSuccess.IsZero() {
		ch <- prometheus.MustNewConstMetric(registrySyncAgeDesc, prometheus.GaugeValue, max(0, c.now().Sub(s.LastSuccess).Seconds()))
	}
	ch <- prometheus.MustNewConstMetric(registryFailuresDesc, prometheus.GaugeValue, float64(s.Failures))
}

// metricsServer serves /metrics, and nothing else, on its own listener.
type metricsServer struct {
	lis net.Listener
	srv *http.Server
	log *slog.Logger
}

func newMetricsServer(lis net.Listener, reg *prometheus.Registry, log *slog.Logger) *metricsServer {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	return &metricsServer{lis: lis, log: log, srv: &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}}
}

// Run serves until ctx ends, then shuts down gracefully (5s).
func (s *metricsServer) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.lis) }()
	s.log.Info("serving metrics", "addr", s.lis.Addr().String())
	select {
	case err := <-errc:
		return fmt.Errorf("metrics: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		_ = s.srv.Close()
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("metrics: %w", err)
	}
	return nil
}
