package broker

import (
	"context"
	"log/slog"
	"time"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
)

// leaseLister is the part of lease.Manager the reconciler needs.
type leaseLister interface {
	List(ctx context.Context, q lease.Query) ([]lease.Lease, error)
}

// ReconcilerSettings builds a Reconciler.
type ReconcilerSettings struct {
	Databases map[string]plugins.Database // by configured name
	Leases    leaseLister
	Logger    *slog.Logger
	// Interval is the time between two passes of Run; Once ignores it.
	Interval time.Duration
	// audit records each orphan dropped; nil: no audit log.
	audit *auditor
}

// Reconciler finds the users carrying the broker's marker that no lease
// backs (ListOrphans), and drops them, once (App.Reconcile) or
// periodically (Run). Periodic drops are off by default: the first start of
// a restored system should look at ListOrphans before trusting it.
type Reconciler struct {
	dbs      map[string]plugins.Database
	leases   leaseLister
	log      *slog.Logger
	interval time.Duration
	audit    *auditor
}

// NewReconciler builds a Reconciler; it starts nothing.
func NewReconciler(c ReconcilerSettings) *Reconciler {
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Reconciler{dbs: c.Databases, leases: c.Leases, log: c.Logger, interval: c.Interval, audit: c.audit}
}

// orphanReport is one database's marked users that no lease backs.
type orphanReport struct {
	database  string
	usernames []string
	err       error
}

// findOrphans compares each database's marked users with the lease store.
// The users are listed first and the leases after: a user listed was
// created after its CREATING record was stored, so a record that exists is
// seen, and a user whose record was deleted meanwhile was already dropped.
func (r *Reconciler) findOrphans(ctx context.Context) []orphanReport {
	var out []orphanReport
	for _, name := range sortedKeys(r.dbs) {
		users, err := r.dbs[name].ListUsers(ctx)
		if err != nil {
			out = append(out, orphanReport{database: name, err: err})
			continue
		}
		leases, err := r.leases.List(ctx, lease.Query{Database: name})
		if err != nil {
			out = append(out, orphanReport{database: name, err: err})
			continue
		}
		backed := make(map[string]bool, len(leases))
		for _, l := range leases {
			backed[l.Username] = true
		}
		rep := orphanReport{database: name, usernames: []string{}}
		for _, u := range users {
			if !backed[u] {
				rep.usernames = append(rep.usernames, u)
			}
		}
		out = append(out, rep)
	}
	return out
}

// Run reconciles every interval until ctx ends.
func (r *Reconciler) Run(ctx context.Context) error {
	t := time.NewTicker(r.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			r.Once(ctx)
		}
	}
}

// Once drops every orphan found now and returns how many were dropped.
func (r *Reconciler) Once(ctx context.Context) int {
	dropped := 0
	for _, rep := range r.findOrphans(ctx) {
		if rep.err != nil {
			r.log.Warn("reconciler: cannot compare users with leases", "database", rep.database, "error", rep.err)
			continue
		}
		for _, u := range rep.usernames {
			err := r.dbs[rep.database].DeleteUser(ctx, plugins.DeleteUserRequest{Username: u})
			if err != nil {
				r.log.Warn("reconciler: orphan not dropped", "database", rep.database, "username", u, "error", err)
				continue
			}
			dropped++
			r.log.Info("audit: orphan user dropped", "database", rep.database, "username", u)
			r.audit.write(ctx, audit.Record{Event: audit.EventOrphanDrop, Database: rep.database, Username: u,
				Reason: "marked user no lease backs"})
		}
	}
	return dropped
}
