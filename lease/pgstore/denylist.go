package pgstore

import (
	"context"
	"fmt"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// The deregistrations are rows of their own table, written in their own
// committed transactions: as durable as the leases, and seen by every
// replica at once.

// Deny records that the workload id was deregistered at at, unless it is
// already (its first time is kept).
func (s *Store) Deny(ctx context.Context, id string, at time.Time) error {
	if err := s.writable(ctx); err != nil {
		return fmt.Errorf("pgstore: deny %s: %w", id, err)
	}
	if id == "" {
		return fmt.Errorf("pgstore: deny: empty id: %w", lease.ErrInvalid)
	}
	t, ns := splitTime(at)
	_, err := s.pool.Exec(ctx, `INSERT INTO `+s.schema+`.deregistrations (spiffe_id, at, at_ns)
		VALUES ($1, $2, $3) ON CONFLICT (spiffe_id) DO NOTHING`, id, t, ns)
	if err != nil {
		return s.fail("deny "+id, err)
	}
	return nil
}

// Allow lifts the deregistration of id; an id not denied is not an error.
func (s *Store) Allow(ctx context.Context, id string) error {
	if err := s.writable(ctx); err != nil {
		return fmt.Errorf("pgstore: allow %s: %w", id, err)
	}
	if _, err := s.pool.Exec(ctx, `DELETE FROM `+s.schema+`.deregistrations WHERE spiffe_id = $1`, id); err != nil {
		return s.fail("allow "+id, err)
	}
	return nil
}

// Denied returns every deregistration. A row that does not decode is an
// error wrapping lease.ErrStoreCorrupt: forgetting it would re-admit a
// deregistered workload.
func (s *Store) Denied(ctx context.Context) (map[string]time.Time, error) {
	if err := s.usable(ctx); err != nil {
		return nil, fmt.Errorf("pgstore: denied: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT spiffe_id, at, at_ns FROM `+s.schema+`.deregistrations`)
	if err != nil {
		return nil, s.fail("denied", err)
	}
	defer rows.Close()
	out := map[string]time.Time{}
	for rows.Next() {
		var (
			id string
			t  *time.Time
			ns int16
		)
		if err := rows.Scan(&id, &t, &ns); err != nil {
			return nil, s.fail("denied", err)
		}
		at, err := joinTime(t, ns)
		if err != nil {
			return nil, s.fail("denied", fmt.Errorf("%w: %s: %w", lease.ErrStoreCorrupt, id, err))
		}
		out[id] = at
	}
	if err := rows.Err(); err != nil {
		return nil, s.fail("denied", err)
	}
	return out, nil
}
