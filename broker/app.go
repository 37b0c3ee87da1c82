package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// App is a whole broker assembled from a Config: SVID source, lease store,
// database plugins, lease manager, registry and its SPIRE watch, admission,
// issuer, reconciler and gRPC server (doc.go lists them). cmd/credbroker and
// the end-to-end tests build it the same way.
type App struct {
	log      *slog.Logger
	source   identity.Source
	closers  []func()
	runners  []func(context.Context) error
	store    lease.Store
	dbs      map[string]*Database
	manager  LeaseManager
	grpc     *grpc.Server
	health   *health.Server
	listener net.Listener
	// reconciler finds orphans for ListOrphans and Reconcile, and drops
	// them periodically if the config enables it.
	reconciler *Reconciler
	// audit writes the audit log; nil when the config has none.
	audit *auditor
	// loaded is the reason of the config_load record Run writes.
	loaded string
	// metrics are the Prometheus metrics; nil when the config has none.
	metrics *metrics
	// metricsServer serves them; nil when metrics are off.
	metricsServer *metricsServer
	// dbHealth reports each database in the health service.
	dbHealth *dbHealth
	// base is the store as opened, before AppOptions.WrapStore: the one
	// whose optional abilities (deniedWatcher, leader) are looked for.
	base lease.Store
}

// LeaseManager is what an App's lease manager does: lease.Manager with a
// bbolt store (every lease in memory), lease.Shared with a PostgreSQL
// store that several replicas share.
type LeaseManager interface {
	Leases
	Issue(ctx context.Context, l lease.Lease, create lease.CreateFunc) (lease.Lease, error)
	FindRequest(ctx context.Context, owner, requestID string) (lease.Lease, error)
	Owners(ctx context.Context, s lease.State) ([]string, error)
	Stats() lease.Stats
	Run(ctx context.Context) error
}

var (
	_ LeaseManager = (*lease.Manager)(nil)
	_ LeaseManager = (*lease.Shared)(nil)
)

// AppOptions are the parts a test (or cmd) may inject.
type AppOptions struct {
	Logger *slog.Logger
	Now    func() time.Time
	// Listener, if set, is served instead of listening on Config.Listen.
	Listener net.Listener
	// Source, if set, replaces the SVID source named in the config.
	Source identity.Source
	// CreateStore allows a missing lease store to be created. Without it a
	// missing store is an error: `credbroker init-store` creates one
	// explicitly, so a lost store never passes for an empty one.
	CreateStore bool
	// WrapStore, if set, wraps the lease store (fault injection in tests).
	WrapStore func(lease.Store) lease.Store
}

// legacyDenylistSuffix names, after the lease store's path, the file where
// brokers before the store kept the deregistrations.
const legacyDenylistSuffix = ".deregistered.json"

// NewApp builds every component; it starts no goroutine. Run starts them.
func NewApp(ctx context.Context, cfg *Config, opts AppOptions) (_ *App, err error) {
	a := &App{log: opts.Logger, dbs: map[string]*Database{}}
	if a.log == nil {
		a.log = slog.Default()
	}
	defer func() {
		if err != nil {
			a.close()
		}
	}()
	td := spiffeid.RequireTrustDomainFromString(cfg.TrustDomain)
	for _, w := range cfg.Warnings() {
		a.log.Warn("config: " + w)
	}

	a.source = opts.Source
	if a.source == nil {
		if a.source, err = a.openSource(ctx, cfg); err != nil {
			return nil, err
		}
	}

	if err := a.openMetrics(ctx, cfg); err != nil {
		return nil, err
	}
	// The audit log is opened first so that it is closed last, after every
	// component that writes to it has stopped.
	if err := a.openAudit(ctx, cfg, opts); err != nil {
		return nil, err
	}
	if err := a.openStore(ctx, cfg, opts); err != nil {
		return nil, err
	}
	a.health = health.NewServer()
	if err := a.openDatabases(ctx, cfg); err != nil {
		return nil, err
	}
	roles := resolveRoles(cfg.Roles, a.dbs)

	var auditEnd func(lease.Lease, bool)
	if a.audit != nil {
		auditEnd = a.audit.ended // expiry records
	}
	var metricsEnd func(lease.Lease, bool)
	if a.metrics != nil {
		metricsEnd = a.metrics.onEnd(clock(opts.Now)) // expiry counts and lag
	}
	// Streams of WatchCredential learn from the same end path that their
	// lease ended.
	ends := newLeaseEnds()
	lcfg := lease.Config{
		OnEnd:             chainOnEnd(auditEnd, metricsEnd, ends.ended),
		Store:             a.store,
		Backend:           backend{dbs: a.dbs, metrics: a.metrics},
		Now:               opts.Now,
		Logger:            a.log,
		RevokeConcurrency: cfg.Revocation.Concurrency,
		RevokeRate:        cfg.Revocation.RatePerSec,
		BackoffBase:       cfg.Revocation.BackoffBase.Duration,
		BackoffMax:        cfg.Revocation.BackoffMax.Duration,
		BackendTimeout:    cfg.Revocation.Timeout.Duration,
	}
	if p := cfg.LeaseStore.Postgres; p != nil {
		// Replicas share the store: no lease is held in memory, due ones
		// are claimed from the store (lease.Shared).
		lcfg.IssueTimeout = p.IssueTimeout.Duration
		lcfg.PollInterval = p.ClaimInterval.Duration
		lcfg.Lookahead = p.ClaimLookahead.Duration
		// The roles' live-lease quotas are checked by the store, with
		// the CREATING record, where every replica's issuances count
		// (quota.go then enforces only the issuance rate).
		lcfg.Limits = roleLimits(roles)
		if a.manager, err = lease.NewShared(lcfg); err != nil {
			return nil, err
		}
	} else {
		m, err := lease.NewManager(lcfg)
		if err != nil {
			return nil, err
		}
		// The store's records are all checked here (a store that would
		// not load refuses the start), but restored in Run, so that a
		// broker holding a million leases serves within a second of
		// starting: new credentials are issued at once, and whatever needs
		// the old leases (Get, List, Renew, Revoke, the registry sweep,
		// the reconciler) waits for the restore. A restore that fails all
		// the same ends Run with its error.
		if err := m.DeferLoad(ctx); err != nil {
			return nil, fmt.Errorf("restore leases: %w", err)
		}
		a.manager = m
	}
	a.runners = append(a.runners, a.manager.Run)
	a.metrics.watchLeases(a.manager.Stats, clock(opts.Now))

	// Deregistrations are kept in the lease store; brokers before it kept
	// them in a JSON file next to the bbolt file, imported once here.
	var legacy string // none before a PostgreSQL store
	if cfg.LeaseStore.Path != "" {
		legacy = cfg.LeaseStore.Path + legacyDenylistSuffix
	}
	reg, err := openRegistry(ctx, a.store, legacy)
	if err != nil {
		return nil, err
	}
	// A PostgreSQL store may be shared by several replicas (replicas.go):
	// deregistrations made through another are followed, and the
	// singletons run under a leadership. A bbolt store has neither ability.
	if w, ok := a.base.(deniedWatcher); ok {
		reg.shared = true
		a.runners = append(a.runners, func(ctx context.Context) error { return reg.follow(ctx, w, a.log) })
	}
	lead, _ := a.base.(leader)
	revoker := bulkRevoker{leases: a.manager}
	var refresh func(context.Context) error // nil without a SPIRE watch
	if cfg.Registry.SPIREServerAddress != "" {
		sweep := newRegistrySweep(reg, a.manager, revoker, a.audit, a.metrics, a.log)
		if lead != nil {
			// Every replica polls SPIRE (admission needs the listing);
			// one revokes what the listing no longer holds.
			sweep.shared = true
			a.runners = append(a.runners, singleton(lead, "spire-sweep", a.log, sweep.lead))
		}
		watch, err := newRegistryWatch(cfg.Registry, a.source, sweep, a.health, a.log)
		if err != nil {
			return nil, err
		}
		a.closers = append(a.closers, watch.close)
		// The watch's times are the wall clock's, not opts.Now.
		a.metrics.watchRegistry(watch.w.Status, time.Now)
		a.runners = append(a.runners, watch.Run)
		refresh = watch.refresh
	}
	admission := NewAdmission(AdmissionConfig{Roles: roles, Registry: reg, Refresh: refresh, Logger: a.log})
	a.reconciler = NewReconciler(ReconcilerSettings{
		Databases: databasePlugins(a.dbs),
		Leases:    a.manager,
		Logger:    a.log,
		Interval:  cfg.Reconciler.Interval.Duration,
		audit:     a.audit,
	})
	if cfg.Reconciler.Enabled {
		// ListOrphans and Reconcile (an operator's explicit call) stay
		// served by every replica; the periodic drops by one.
		run := a.reconciler.Run
		if lead != nil {
			run = singleton(lead, "reconciler", a.log, run)
		}
		a.runners = append(a.runners, run)
	}

	var admins []spiffeid.ID
	for _, s := range cfg.Admins {
		admins = append(admins, spiffeid.RequireFromString(s))
	}
	rotations := map[string]*adminRotation{}
	for name, d := range a.dbs {
		r := newAdminRotation(d, cfg.Databases[name], a.audit, a.log, opts.Now)
		rotations[name] = r
		if r.every > 0 {
			a.runners = append(a.runners, r.Run)
		}
	}
	issuer := NewIssuer(IssuerDeps{Admission: admission, Leases: a.manager, Audit: a.audit, Quotas: a.manager, CapsInStore: lcfg.Limits != nil, Health: a.dbHealth, Now: opts.Now})
	watch := newWatcher(watchDeps{
		issuer: issuer,
		admit: func(ctx context.Context, caller spiffeid.ID, role string) error {
			_, err := admission.Admit(ctx, caller, role)
			return err
		},
		leases:  a.manager,
		ends:    ends,
		roles:   roles,
		set:     cfg.Watch.Settings(),
		audit:   a.audit,
		metrics: a.metrics,
		log:     a.log,
		now:     opts.Now,
	})
	a.runners = append(a.runners, watch.Run)
	if reg.shared {
		// Another replica may end a lease this one streams.
		a.runners = append(a.runners, func(ctx context.Context) error {
			return ends.follow(ctx, a.manager, time.After, a.log)
		})
	}
	srv := NewServer(ServerConfig{
		Roles:      roles,
		Issuer:     issuer,
		Leases:     a.manager,
		Reconciler: a.reconciler,
		registry:   reg,
		revoker:    revoker,
		audit:      a.audit,
		metrics:    a.metrics,
		rotations:  rotations,
		watch:      watch,
		Admins:     identity.NewAdminSet(admins),
		Now:        opts.Now,
		Logger:     a.log,
	})
	a.grpc = grpc.NewServer(
		grpc.Creds(credentials.NewTLS(identity.ServerTLSConfig(a.source, td))),
		// A connection is authenticated at its handshake; recycling it makes
		// every client present its current SVID again. The interceptors
		// also check the SVID's validity on every call (auth.go).
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      cfg.Server.MaxConnectionAge.Duration,
			MaxConnectionAgeGrace: cfg.Server.MaxConnectionAgeGrace.Duration,
		}),
		grpc.ChainUnaryInterceptor(srv.UnaryAuth),
		grpc.ChainStreamInterceptor(srv.StreamAuth),
	)
	srv.Register(a.grpc)
	healthpb.RegisterHealthServer(a.grpc, a.health)
	reflection.Register(a.grpc)

	a.listener = opts.Listener
	if a.listener == nil {
		if a.listener, err = (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Listen); err != nil {
			return nil, fmt.Errorf("listen: %w", err)
		}
	}
	return a, nil
}

// openMetrics builds the metrics and opens their listener, if the config
// has them.
func (a *App) openMetrics(ctx context.Context, cfg *Config) error {
	if cfg.Metrics.Listen == "" {
		return nil
	}
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Metrics.Listen)
	if err != nil {
		return fmt.Errorf("metrics: listen: %w", err)
	}
	a.closers = append(a.closers, func() { _ = lis.Close() }) // if Run never serves it
	a.metrics = newMetrics()
	a.metricsServer = newMetricsServer(lis, a.metrics.reg, a.log)
	a.runners = append(a.runners, a.metricsServer.Run)
	return nil
}

// clock is now, or time.Now if nil.
func clock(now func() time.Time) func() time.Time {
	if now == nil {
		return time.Now
	}
	return now
}

// openAudit opens the audit log the config names, if any.
func (a *App) openAudit(ctx context.Context, cfg *Config, opts AppOptions) error {
	aud, w, err := openAuditor(ctx, cfg.Audit, opts.Now, a.log)
	if err != nil || aud == nil {
		return err
	}
	a.audit = aud
	a.closers = append(a.closers, func() {
		if err := w.Close(); err != nil {
			a.log.Error("audit: close", "error", err.Error())
		}
	})
	a.loaded = fmt.Sprintf("instance %s: %d roles, %d databases", cfg.InstanceID, len(cfg.Roles), len(cfg.Databases))
	return nil
}

// openDatabases opens every configured database; one that is unreachable
// does not stop the start.
func (a *App) openDatabases(ctx context.Context, cfg *Config) error {
	a.dbHealth = newDBHealth(a.health, a.dbs, a.log)
	intervals, timeouts := map[string]time.Duration{}, map[string]time.Duration{}
	for name, dc := range cfg.Databases {
		intervals[name], timeouts[name] = dc.PingInterval.Duration, dc.ConnectTimeout.Duration
	}
	a.runners = append(a.runners, func(ctx context.Context) error { return a.dbHealth.Run(ctx, intervals, timeouts) })
	for _, name := range sortedKeys(cfg.Databases) {
		if err := recoverAdminPassword(ctx, cfg, name, cfg.Databases[name], a.log); err != nil {
			return err
		}
		d, err := openDatabase(ctx, cfg.catalog, name, cfg.Databases[name], "credbroker:"+cfg.InstanceID)
		if err != nil {
			return err
		}
		d.DB = a.metrics.observePlugin(name, d.DB)
		a.dbs[name] = d
		a.closers = append(a.closers, d.DB.Close)
		if !d.DB.Capabilities().ServerExpiry {
			// Said once per start so that nobody relies on the server to end
			// a lease the broker could not revoke while it was down.
			a.log.Warn("database has no server-side expiry: users outlive their lease while the broker is down, until it is back and revokes them",
				"database", name, "plugin", d.Plugin)
		}
		err = d.DB.Ping(ctx)
		if err != nil {
			// Not fatal: leases on other databases must keep being served
			// and revoked; issuance here answers UNAVAILABLE until it is back.
			a.log.Warn("database unreachable at startup", "database", name, "error", err)
		}
		a.dbHealth.pinged(name, err)
	}
	return nil
}

func (a *App) openSource(ctx context.Context, cfg *Config) (identity.Source, error) {
	if sock := cfg.SVID.WorkloadAPISocket; sock != "" {
		src, err := identity.NewWorkloadAPISource(ctx, sock)
		if err != nil {
			return nil, fmt.Errorf("svid: workload api: %w", err)
		}
		a.closers = append(a.closers, func() { _ = src.Close() })
		return src, nil
	}
	src, err := identity.NewFileSource(identity.FileSourceConfig{
		CertFile:     cfg.SVID.CertFile,
		KeyFile:      cfg.SVID.KeyFile,
		BundleFile:   cfg.SVID.BundleFile,
		TrustDomain:  spiffeid.RequireTrustDomainFromString(cfg.TrustDomain),
		PollInterval: cfg.SVID.ReloadInterval.Duration,
		Logger:       a.log,
	})
	if err != nil {
		return nil, fmt.Errorf("svid: %w", err)
	}
	a.runners = append(a.runners, src.Run)
	return src, nil
}

// Addr is where the gRPC server listens.
func (a *App) Addr() net.Addr { return a.listener.Addr() }

// MetricsAddr is where /metrics is served; nil when metrics are off.
func (a *App) MetricsAddr() net.Addr {
	if a.metricsServer == nil {
		return nil
	}
	return a.metricsServer.lis.Addr()
}

// Reconcile drops orphan users once (what the periodic reconciler does) and
// returns how many it dropped.
func (a *App) Reconcile(ctx context.Context) int {
	return a.reconciler.Once(ctx)
}

// Manager exposes the lease manager (tests, admin tooling).
func (a *App) Manager() LeaseManager { return a.manager }

// Run serves until ctx ends, then stops accepting calls, lets running calls
// finish for a short grace period, waits for every component and closes the
// store and pools.
func (a *App) Run(ctx context.Context) error {
	defer a.close()
	a.audit.write(ctx, audit.Record{Event: audit.EventConfigLoad, Reason: a.loaded})
	g, gctx := errgroup.WithContext(ctx)
	for _, run := range a.runners {
		g.Go(func() error { return run(gctx) })
	}
	g.Go(func() error {
		a.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
		for _, svc := range []string{pb.CredentialService_ServiceDesc.ServiceName, pb.AdminService_ServiceDesc.ServiceName} {
			a.health.SetServingStatus(svc, healthpb.HealthCheckResponse_SERVING)
		}
		a.log.Info("serving", "addr", a.listener.Addr().String())
		if err := a.grpc.Serve(a.listener); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("grpc: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		a.health.Shutdown()
		stopped := make(chan struct{})
		go func() { a.grpc.GracefulStop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			a.grpc.Stop()
		}
		return nil
	})
	err := g.Wait()
	if ctx.Err() != nil && errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

func (a *App) close() {
	for i := len(a.closers) - 1; i >= 0; i-- {
		a.closers[i]()
	}
	a.closers = nil
}
