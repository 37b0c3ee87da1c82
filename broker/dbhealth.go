package broker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/plugins"
)

// DatabaseHealthPrefix starts the health service name of each configured
// database: credbroker.database.<name> is SERVING while the server answers
// the broker's admin login, NOT_SERVING while it does not.
const DatabaseHealthPrefix = "credbroker.database."

// healthSetter is the part of grpc's health.Server the database health uses.
type healthSetter interface {
	SetServingStatus(service string, status healthpb.HealthCheckResponse_ServingStatus)
}

// dbHealth keeps one health service per database up to date, from a
// periodic Ping of each and from what issuance sees. Only a failure of the
// admin login or of the server itself (plugins.Kind AdminLogin, Unavailable)
// or a Ping refused for a privilege (the admin cannot use the configured
// database) makes a database NOT_SERVING: a role whose statements lack a
// privilege fails that role only, and is reported by its status code.
type dbHealth struct {
	health healthSetter
	dbs    map[string]*Database
	log    *slog.Logger

	mu      sync.Mutex
	serving map[string]bool // last status set, to log changes only
	lastErr map[string]string
}

func newDBHealth(h healthSetter, dbs map[string]*Database, log *slog.Logger) *dbHealth {
	return &dbHealth{health: h, dbs: dbs, log: log, serving: map[string]bool{}, lastErr: map[string]string{}}
}

// set records the database's state; a change is logged once.
func (h *dbHealth) set(name string, err error) {
	if h == nil {
		return
	}
	h.mu.Lock()
	was, known := h.serving[name]
	now := err == nil
	h.serving[name] = now
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	changed := !known || was != now || (!now && h.lastErr[name] != msg)
	h.lastErr[name] = msg
	h.mu.Unlock()
	st := healthpb.HealthCheckResponse_SERVING
	if !now {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	h.health.SetServingStatus(DatabaseHealthPrefix+name, st)
	if !changed {
		return
	}
	if now {
		h.log.Info("database serving", "database", name)
	} else {
		h.log.Warn("database not serving", "database", name, "error", msg)
	}
}

// pinged records the result of a Ping.
func (h *dbHealth) pinged(name string, err error) { h.set(name, err) }

// issued records what an issuance on the database saw: success proves the
// admin login works; a failure counts only if it is about the server or the
// login (see dbHealth).
func (h *dbHealth) issued(name string, err error) {
	if err == nil {
		h.set(name, nil)
		return
	}
	if k := plugins.KindOf(err); k.Unavailable() || k.AdminLogin() {
		h.set(name, err)
	}
}

// Run pings each database every interval (its own, from the config) until
// ctx ends.
func (h *dbHealth) Run(ctx context.Context, intervals map[string]time.Duration, timeouts map[string]time.Duration) error {
	var wg sync.WaitGroup
	for name, d := range h.dbs {
		every := intervals[name]
		if every <= 0 {
			every = DefaultPingInterval
		}
		wg.Go(func() {
			t := time.NewTicker(every)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				pctx, cancel := context.WithTimeout(ctx, timeouts[name]+time.Second)
				err := d.DB.Ping(pctx)
				cancel()
				if ctx.Err() != nil {
					return
				}
				h.pinged(name, err)
			}
		})
	}
	wg.Wait()
	return nil
}
