package broker

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/lease"
)

// leaseOwners is the part of lease.Manager the registry sweep needs: the
// owners of the leases in a state, about one lease looked at per owner.
type leaseOwners interface {
	Owners(ctx context.Context, s lease.State) ([]string, error)
}

// registrySweep applies each complete listing of SPIRE registration
// entries: the registry learns it (lifting re-registrations), and the
// leases of owners no entry yields any longer are revoked. It is built
// before the Server, so that the SPIRE watch calling it can hand its
// refresh to admission at construction.
type registrySweep struct {
	registry *registry
	owners   leaseOwners
	revoker  bulkRevoker
	log      *slog.Logger
	audit    *auditor // nil: no audit log
	metrics  *metrics // nil: metrics off

	// shared: several replicas on one store, each applying its own
	// listings. Only the one leading "spire-sweep" revokes (lead), under
	// its leadership's context; the others only learn the listing (for
	// their admission) and lift re-registrations, which is idempotent.
	shared  bool
	mu      sync.Mutex
	leadCtx context.Context // while this replica leads; nil otherwise
}

// aud and met may be nil (no audit log, metrics off).
func newRegistrySweep(reg *registry, owners leaseOwners, revoker bulkRevoker, aud *auditor, met *metrics, log *slog.Logger) *registrySweep {
	return &registrySweep{registry: reg, owners: owners, revoker: revoker, audit: aud, metrics: met, log: log}
}

// observe applies a complete SPIRE listing begun at at: deregistrations
// whose ID was registered again are lifted, and every lease whose owner no
// entry yields any longer is revoked. A listing older than the last one
// changes nothing.
func (s *registrySweep) observe(ctx context.Context, at time.Time, ids map[string]time.Time) {
	again, stale, err := s.registry.observe(ctx, at, ids)
	if stale {
		return
	}
	if err != nil {
		s.log.Error("registry: could not persist re-registrations", "error", err)
	}
	for _, id := range again {
		s.log.Info("audit: workload registered again in SPIRE", "spiffe_id", id)
		s.audit.write(ctx, audit.Record{Event: audit.EventRegister, Reason: "workload " + id + " registered again in SPIRE"})
	}
	if s.shared {
		if ctx = s.leading(); ctx == nil {
			return // another replica revokes
		}
	}
	s.revokeGone(ctx, ids)
}

// leading is the context of this replica's leadership of the sweep, nil
// when it does not lead.
func (s *registrySweep) leading() context.Context {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leadCtx
}

// lead is the "spire-sweep" singleton (shared store): while it runs, the
// listings this replica applies revoke. Taking over, it sweeps the last
// listing at once, so that a workload gone while no replica led loses its
// leases now, not a poll later.
func (s *registrySweep) lead(ctx context.Context) error {
	s.mu.Lock()
	s.leadCtx = ctx
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.leadCtx = nil
		s.mu.Unlock()
	}()
	if ids := s.registry.listing(); ids != nil {
		s.revokeGone(ctx, ids)
	}
	<-ctx.Done()
	return nil
}

// revokeGone revokes every lease whose owner ids does not contain.
func (s *registrySweep) revokeGone(ctx context.Context, ids map[string]time.Time) {
	owners, err := s.owners.Owners(ctx, lease.StateActive)
	if err != nil {
		s.log.Error("registry: cannot list leases; nothing revoked", "error", err)
		return
	}
	for _, owner := range owners {
		if _, ok := ids[owner]; ok {
			continue
		}
		revoked, err := s.revoker.revokeAll(ctx, lease.Query{Owner: owner})
		s.log.Info("audit: SPIRE entry gone, leases revoked", "spiffe_id", owner, "revoked", len(revoked))
		s.audit.revoked(ctx, "", audit.BySPIRE, revoked)
		s.metrics.ended(audit.BySPIRE, revoked)
		if err != nil {
			// The failed ones stay REVOKING and are retried by the expiry loop.
			s.log.Warn("registry: some revocations failed and will be retried", "spiffe_id", owner, "error", err)
		}
	}
}
