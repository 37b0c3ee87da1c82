package broker

import (
	"context"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/identity/spireregistry"
)

// RegistryHealthService is the health-check service name that reports the
// SPIRE registry watch: NOT_SERVING while the SPIRE server cannot be listed
// (the broker keeps serving and revokes nothing because of it).
const RegistryHealthService = "credbroker.registry"

// watchRegistry follows the SPIRE server's registration entries.
func (a *App) watchRegistry(cfg RegistryConfig) error {
	w, err := spireregistry.New(spireregistry.Config{
		Address:  cfg.SPIREServerAddress,
		ServerID: spiffeid.RequireFromString(cfg.SPIREServerID),
		Source:   a.source,
		Interval: cfg.PollInterval.Duration,
		Logger:   a.log,
	})
	if err != nil {
		return fmt.Errorf("registry: %w", err)
	}
	a.closers = append(a.closers, func() { _ = w.Close() })
	srv := a.server
	srv.refresh = func(ctx context.Context) error {
		snap, err := w.Poll(ctx)
		if err != nil {
			return err
		}
		srv.observeRegistry(ctx, snap.At, snap.IDs)
		return nil
	}
	a.runners = append(a.runners, func(ctx context.Context) error {
		return w.Run(ctx, func(ctx context.Context, snap spireregistry.Snapshot) {
			srv.observeRegistry(ctx, snap.At, snap.IDs)
		})
	}, func(ctx context.Context) error {
		// Mirror the watch's state into the health service.
		t := time.NewTicker(min(cfg.PollInterval.Duration, time.Second))
		defer t.Stop()
		last := healthpb.HealthCheckResponse_UNKNOWN
		for {
			st := healthpb.HealthCheckResponse_NOT_SERVING
			if w.Status().Healthy {
				st = healthpb.HealthCheckResponse_SERVING
			}
			if st != last {
				a.health.SetServingStatus(RegistryHealthService, st)
				last = st
			}
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
			}
		}
	})
	return nil
}
