package broker

import (
	"context"
	"time"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
)

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
func (s *Server) findOrphans(ctx context.Context) []orphanReport {
	var out []orphanReport
	for _, name := range sortedKeys(s.dbs) {
		users, err := s.dbs[name].DB.ListUsers(ctx)
		if err != nil {
			out = append(out, orphanReport{database: name, err: err})
			continue
		}
		leases, err := s.leases.List(ctx, lease.Query{Database: name})
		if err != nil {
			out = append(out, orphanReport{database: name, err: err})
			continue
		}
		backed := make(map[string]bool, len(leases))
		for _, l := range leases {
			backed[l.Username] = true
		}
		r := orphanReport{database: name, usernames: []string{}}
		for _, u := range users {
			if !backed[u] {
				r.usernames = append(r.usernames, u)
			}
		}
		out = append(out, r)
	}
	return out
}

// Reconciler drops orphans periodically. It is off by default: the first
// start of a restored system should look at ListOrphans before trusting it.
type Reconciler struct {
	server   *Server
	interval time.Duration
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
	s := r.server
	dropped := 0
	for _, rep := range s.findOrphans(ctx) {
		if rep.err != nil {
			s.log.Warn("reconciler: cannot compare users with leases", "database", rep.database, "error", rep.err)
			continue
		}
		for _, u := range rep.usernames {
			err := s.dbs[rep.database].DB.DeleteUser(ctx, plugins.DeleteUserRequest{Username: u})
			if err != nil {
				s.log.Warn("reconciler: orphan not dropped", "database", rep.database, "username", u, "error", err)
				continue
			}
			dropped++
			s.log.Info("audit: orphan user dropped", "database", rep.database, "username", u)
		}
	}
	return dropped
}
