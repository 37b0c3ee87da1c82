package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/credbroker/credbroker/lease/pgstore"
)

// Several replicas on one PostgreSQL lease store (issue 10): what the
// broker itself wires, on two abilities of the store. Both are detected on
// the store, so a bbolt store (one broker) runs everything as before.
//
//   - Deregistrations made through one replica are refused by every other
//     within a second: each follows the store's deregistrations
//     (registry.follow, on deniedWatcher) and replaces its copy in memory.
//   - The singletons run on one replica at a time (singleton, on leader):
//     the SPIRE sweep's revocations ("spire-sweep") and the periodic
//     reconciler ("reconciler"). Every replica still polls SPIRE, since
//     admission on every replica needs the last listing; only the leader
//     revokes the leases of workloads it no longer lists.

// deniedWatcher is a lease store that says when its deregistrations may
// have changed, whichever replica changed them: at once when it starts
// listening, after every change, and after every reconnection
// (pgstore.Store.WatchDenied).
type deniedWatcher interface {
	WatchDenied(ctx context.Context, changed func()) error
}

// leader is a lease store that runs a named function on one of the
// replicas sharing it at a time, and moves it to another when that
// replica's session ends (pgstore.Store.Lead).
type leader interface {
	Lead(ctx context.Context, name string, timing pgstore.LeadTiming, fn func(context.Context) error) error
}

var (
	_ deniedWatcher = (*pgstore.Store)(nil)
	_ leader        = (*pgstore.Store)(nil)
)

// leadTiming: a leader checks its session every second, and the others
// try to take over every two seconds. A singleton whose leader stopped
// (its session closed, or seen gone by the server) therefore runs again
// elsewhere within about 2 s plus a connection; a leader cut off from
// PostgreSQL stops within about 1 s plus its check's timeout. Each
// non-leader opens one connection per singleton every Retry to compete.
var leadTiming = pgstore.LeadTiming{Check: time.Second, Retry: 2 * time.Second}

// singleton wraps run so that it runs only while this replica leads name
// among the replicas on the store; the App runs the result as a runner.
// Taking and losing the leadership are logged.
func singleton(l leader, name string, log *slog.Logger, run func(context.Context) error) func(context.Context) error {
	return func(ctx context.Context) error {
		return l.Lead(ctx, name, leadTiming, func(lctx context.Context) error {
			log.Info("replicas: leading singleton", "singleton", name)
			err := run(lctx)
			switch cause := context.Cause(lctx); {
			case errors.Is(cause, pgstore.ErrNotLeading):
				log.Warn("replicas: singleton's leadership lost", "singleton", name, "error", cause.Error())
			case ctx.Err() == nil && err != nil:
				log.Error("replicas: singleton failed; competing again", "singleton", name, "error", err.Error())
			default:
				log.Info("replicas: singleton's leadership released", "singleton", name)
			}
			return err
		})
	}
}

// reloadRetry is the pause before reading the deregistrations again after
// a read failed.
const reloadRetry = time.Second

// follow keeps the registry's deregistrations those of the store, as
// other replicas change them, until ctx ends: each time w says they may
// have changed, it reads them all (store.Denied) and replaces the copy in
// memory. Notifications arriving during a read are coalesced into one
// more read; a failed read is retried every reloadRetry, keeping the copy
// meanwhile.
func (r *registry) follow(ctx context.Context, w deniedWatcher, log *slog.Logger) error {
	changed := make(chan struct{}, 1)
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return w.WatchDenied(ctx, func() {
			select {
			case changed <- struct{}{}:
			default:
			}
		})
	})
	g.Go(func() error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-changed:
			}
			for {
				err := r.reload(ctx, log)
				if err == nil || ctx.Err() != nil {
					break
				}
				log.Warn("registry: cannot read the deregistrations from the store; keeping the last ones", "error", err.Error())
				select {
				case <-ctx.Done():
				case <-time.After(reloadRetry):
				}
			}
		}
	})
	return g.Wait()
}

// reloadAttempts bounds the reads of one reload that this replica's own
// writes overtake.
const reloadAttempts = 5

// maxLoggedIDs bounds the SPIFFE IDs one reload logs.
const maxLoggedIDs = 16

// reload replaces the deregistrations in memory with the store's, unless
// this replica changed them while it read (its own write would be undone
// until the next notification): then it reads again.
func (r *registry) reload(ctx context.Context, log *slog.Logger) error {
	for range reloadAttempts {
		r.mu.RLock()
		gen := r.gen
		r.mu.RUnlock()
		denied, err := r.store.Denied(ctx)
		if err != nil {
			return fmt.Errorf("registry: %w", err)
		}
		r.mu.Lock()
		if r.gen != gen {
			r.mu.Unlock()
			continue
		}
		var added, lifted []string
		for id := range denied {
			if _, ok := r.denied[id]; !ok {
				added = append(added, id)
			}
		}
		for id := range r.denied {
			if _, ok := denied[id]; !ok {
				lifted = append(lifted, id)
			}
		}
		r.denied = denied
		n := len(denied) // denied is r.denied now, changed under r.mu
		r.mu.Unlock()
		if len(added)+len(lifted) > 0 {
			log.Info("registry: deregistrations changed in the store",
				"deregistered", len(added), "lifted", len(lifted), "now_deregistered", n,
				"deregistered_ids", firstIDs(added), "lifted_ids", firstIDs(lifted))
		}
		return nil
	}
	return fmt.Errorf("registry: deregistrations changed by this replica during %d reads", reloadAttempts)
}

// firstIDs is ids sorted, at most maxLoggedIDs of them.
func firstIDs(ids []string) []string {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	return ids[:min(len(ids), maxLoggedIDs)]
}
