/*
Package broker is credbroker's server: it issues short-lived database
credentials to workloads that authenticate with an X.509-SVID, over gRPC
(CredentialService for workloads, AdminService for operators).

It is the only package that sees SPIFFE (identity/), leases (lease/) and
databases (plugins/) at once, and wires them to the wire API. It names no
database engine: it reaches each database through the plugins.Catalog it is
given (cmd/credbroker passes builtin.Catalog()).

# Components

One file per component; each is built from its own dependencies, declared
as small interfaces where they are used (the parts of lease.Manager it
needs), and none starts a goroutine when it is built.

	config.go     Config: the YAML file, its defaults, LoadConfig and ParseConfig
	validate.go   Config.Validate: every key checked (engine keys by the catalog)
	store.go      the lease store the config names (bbolt file or PostgreSQL
	              schema): openStore, InitStore and MigrateStore for cmd/
	databases.go  Database (a configured database and its plugin), openDatabase,
	              backend (lease.Backend: a lease's drop and extend routed to its plugin)
	roles.go      Role: a resolved role template
	admission.go  Admission: may this caller have this role now? role name, role,
	              role policy, then the registry (with a rate-limited SPIRE refresh)
	issue.go      Issuer: admission, then the role's quota, then lease.Manager.Issue
	              around the plugin's NewUser, then the credential
	quota.go      quotas: live leases per role and per caller, issuance rate per
	              caller, counted and reserved under one lock (RESOURCE_EXHAUSTED)
	revoke.go     bulkRevoker: every lease a query selects, revoked with bounded
	              concurrency (DeregisterWorkload, RevokeLeases, the registry sweep)
	registry.go   registry: deregistrations (kept in the lease store) and the
	              last complete SPIRE listing, in memory for every request
	sweep.go      registrySweep: applies a complete SPIRE listing: re-registrations
	              lifted, leases of owners no longer registered revoked
	spire.go      registryWatch: polls the SPIRE server, hands listings to the sweep,
	              reports itself in the health service (credbroker.registry)
	replicas.go   several replicas on one PostgreSQL store: deregistrations
	              followed (registry.follow on WatchDenied), singletons run on
	              one replica (singleton on Lead); see Replicas below
	dbhealth.go   dbHealth: one health service per database
	              (credbroker.database.<name>), from a periodic Ping and issuance
	rotate.go     adminRotation: the broker's own admin password rotated
	              (RotateAdminCredential, rotate_admin_every) through a side file,
	              recovered at start
	dryrun.go     DryRun: every role's statements tried on its database
	              (check-config --dry-run, plugins.DryRunner)
	reconcile.go  Reconciler: marked database users no lease backs (ListOrphans),
	              dropped once (App.Reconcile) or periodically (Run)
	server.go     Server: the two services on the components above
	credential.go CredentialService handlers
	watch.go      watcher: WatchCredential streams (issue, renew, rotate with an
	              overlap, revoke after a disconnect grace), leaseEnds (streams told
	              of their lease's end through lease.Config.OnEnd); docs/watch.md
	watchplan.go  a stream's timing as pure functions (renew at 2/3, rotation,
	              overlap end), tested without a clock
	admin.go      AdminService handlers (admin check, audit log lines and records)
	auth.go       the interceptors: a verified SPIFFE ID whose SVID is still valid
	              on the broker's clock, or UNAUTHENTICATED; refused calls
	              recorded in the audit log
	audit.go      auditor: the audit records (docs/audit.md), fail-closed for
	              issue only; expiry records through lease.Config.OnEnd
	metrics.go    metrics: the Prometheus metrics (docs/metrics.md) on a registry
	              of their own, served on their own listener (metricsServer);
	              lease gauges read from lease.Manager.Stats at scrape time,
	              plugin calls through plugins.Observed, expiry through OnEnd
	wire.go       wire conversions: leases to protobuf, duration arguments, page tokens
	errors.go     toStatus: the one error → gRPC status mapping
	app.go        App: NewApp assembles everything, Run runs it
	log.go        the structured logger

# How a request flows

IssueCredential passes through UnaryAuth, which refuses a peer without a
verified SPIFFE ID and puts the ID in the context. The handler reads the
arguments and asks the Issuer, which asks Admission: the role name is
valid, the role exists, the role policy allows the caller, and the
registry neither holds a deregistration of the caller nor (with a SPIRE
watch) misses it from the last complete listing; a caller missing from it
makes admission re-list SPIRE once, at most every 250 ms, before refusing.
The Issuer then resolves the ttl and calls lease.Manager.Issue, which
records the lease CREATING durably while the plugin's NewUser creates the
user (waiting for that record before the user can exist) and records it
ACTIVE; only then does the Issuer write the issue record to the audit log
(if configured: a failed write with fail_closed revokes the lease and
answers UNAVAILABLE) and build the credential, whose password is never
stored or logged. Renew and revoke go to the lease.Manager, which
reaches the database through backend.

# Errors

Handlers and components return plain errors (sentinels of identity/,
lease/, plugins/ and this package, and invalid-argument errors). UnaryAuth
and StreamAuth are the one place they become gRPC statuses, through toStatus
in errors.go, and the one place a failed call is logged. A plugin error carries the
logical database it came from (databaseError) and its plugins.Kind, so the
status says which database and what kind of failure: the admin's login
refused (UNAVAILABLE), a privilege the admin lacks (FAILED_PRECONDITION),
the server unreachable (UNAVAILABLE), the role's statements rejected
(INVALID_ARGUMENT). Anything toStatus does not recognise is a bare
"internal error".

# Replicas

With a PostgreSQL lease store, several brokers may share it (issue 10).
NewApp looks for two abilities on the store (deniedWatcher, leader; a bbolt
store has neither and nothing below applies):

  - Every replica follows the deregistrations: on each NOTIFY of the
    store's Deny or Allow, and after each reconnection, it reads the whole
    list and replaces its copy, so a workload deregistered through one
    replica is refused by all within a second (milliseconds in practice),
    and re-admitted when registered again. deny and allow write through to
    the store even when the copy says there is nothing to do: it may lag.
  - The SPIRE watch feeds admission and sweeps. Every replica runs the
    watch, since admission on each needs the last listing (and its
    rate-limited refresh); lifting re-registrations is idempotent, so any
    replica may. Only the replica leading "spire-sweep" revokes the leases
    of workloads the listing lacks, under its leadership's context, and a
    new leader sweeps the last listing at once.
  - The periodic reconciler (when enabled) runs under "reconciler" on one
    replica; ListOrphans and Reconcile, explicit operator calls, stay
    served by every replica.

Leaderships use pgstore.Lead with Check 1s and Retry 2s (leadTiming): a
singleton moves to another replica within about 2 s of its leader's
session ending, and a leader cut off from PostgreSQL stops within about a
second plus its check's timeout.

# Lifecycle

NewApp builds every component, in dependency order: SVID source, metrics
and their listener (with a metrics section), audit
log (closed last), lease store, databases, roles, lease manager (its records checked, restored in
Run), registry, bulk revoker, health service, registry sweep and SPIRE
watch (with a registry section), admission (given the watch's refresh),
reconciler, issuer, watcher, server, gRPC server, listener. It starts no goroutine. App.Run runs the components that
have a Run (SVID file reloader, metrics server, database health pings, lease
manager, SPIRE watch, scheduled admin password rotations, watcher, reconciler if
enabled; with a PostgreSQL store also the deregistrations' follower and the
sweep's leadership, the reconciler under its own) and the gRPC server under one errgroup; when its context ends it
stops serving, waits for all of them and closes the store and the pools.
*/
package broker
