package broker

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/identity/spireregistry"
)

// RegistryHealthService is the health-check service name that reports the
// SPIRE registry watch: NOT_SERVING while the SPIRE server cannot be listed
// (the broker keeps serving and revokes nothing because of it).
const RegistryHealthService = "credbroker.registry"

// registryWatch follows the SPIRE server's registration entries and hands
// every complete listing to the registry sweep. It is built before the
// Server so that admission gets its refresh at construction.
type registryWatch struct {
	w        *spireregistry.Watcher
	sweep    *registrySweep
	health   *health.Server
	interval time.Duration
}

// newRegistryWatch builds the watch; it starts nothing (Run does).
func newRegistryWatch(cfg RegistryConfig, source identity.Source, sweep *registrySweep, hs *health.Server, log *slog.Logger) (*registryWatch, error) {
	w, err := spireregistry.New(spireregistry.Config{
		Address:  cfg.SPIREServerAddress,
		ServerID: spiffeid.RequireFromString(cfg.SPIREServerID),
		Source:   source,
		Interval: cfg.PollInterval.Duration,
		Logger:   log,
	})
	if err != nil {
		return nil, fmt.Errorf("registry: %w", err)
	}
	return &registryWatch{w: w, sweep: sweep, health: hs, interval: cfg.PollInterval.Duration}, nil
}

// close releases the watch's connection to the SPIRE server.
func (r *registryWatch) close() { _ = r.w.Close() }

// refresh lists the SPIRE entries now and applies the listing: admission
// calls it, rate-limited, for a caller the last listing did not contain.
func (r *registryWatch) refresh(ctx context.Context) error {
	snap, err := r.w.Poll(ctx)
	if err != nil {
		return err
	}
	r.sweep.observe(ctx, snap.At, snap.IDs)
	return nil
}

// Run polls SPIRE, applying each complete listing, and mirrors the watch's
// state into the health service, until ctx ends.
func (r *registryWatch) Run(ctx context.Context) error {
	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		return r.w.Run(ctx, func(ctx context.Context, snap spireregistry.Snapshot) {
			r.sweep.observe(ctx, snap.At, snap.IDs)
		})
	})
	g.Go(func() error {
		t := time.NewTicker(min(r.interval, time.Second))
		defer t.Stop()
		last := healthpb.HealthCheckResponse_UNKNOWN
		for {
			st := healthpb.HealthCheckResponse_NOT_SERVING
			if r.w.Status().Healthy {
				st = healthpb.HealthCheckResponse_SERVING
			}
			if st != last {
				r.health.SetServingStatus(RegistryHealthService, st)
				last = st
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	return g.Wait()
}
