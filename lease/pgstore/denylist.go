package pgstore

import (
	"context"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"

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
	// One statement, one transaction: the row and the notification of
	// WatchDenied's listeners (sent at commit) go together.
	_, err := s.pool.Exec(ctx, `WITH d AS (INSERT INTO `+s.schema+`.deregistrations (spiffe_id, at, at_ns)
		VALUES ($1, $2, $3) ON CONFLICT (spiffe_id) DO NOTHING)
		SELECT pg_notify($4, 'deny')`, id, t, ns, s.denyChannel)
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
	if _, err := s.pool.Exec(ctx, `WITH d AS (DELETE FROM `+s.schema+`.deregistrations WHERE spiffe_id = $1)
		SELECT pg_notify($2, 'allow')`, id, s.denyChannel); err != nil {
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

// denyChannel is the NOTIFY channel of the denylist of the store in
// schema: a fixed prefix and a hash, within PostgreSQL's 63-byte limit for
// any schema name.
func denyChannel(schema string) string {
	h := fnv.New32a()
	h.Write([]byte("credbroker-denylist:" + schema))
	return fmt.Sprintf("credbroker_denylist_%08x", h.Sum32())
}

// watchRetry is how long WatchDenied waits before it connects again after
// losing its connection.
const watchRetry = time.Second

// WatchDenied calls changed whenever the denylist may have changed, until
// ctx ends: once it listens (so that a caller reading Denied then misses
// nothing), after every Deny or Allow committed by any store on the schema
// (LISTEN/NOTIFY: within milliseconds), and again after each reconnection
// once its connection was lost (notifications sent meanwhile are not
// replayed, so the caller must read the whole list again). It holds one
// connection of its own, outside the pool. changed runs on WatchDenied's
// goroutine and should be quick. It returns nil when ctx ends.
func (s *Store) WatchDenied(ctx context.Context, changed func()) error {
	for ctx.Err() == nil {
		err := s.listenDenied(ctx, changed)
		if ctx.Err() != nil {
			break
		}
		_ = err // lost: connect again after a pause
		select {
		case <-ctx.Done():
		case <-time.After(watchRetry):
		}
	}
	return nil
}

// listenDenied is one connection's worth of WatchDenied.
func (s *Store) listenDenied(ctx context.Context, changed func()) error {
	conn, err := pgx.ConnectConfig(ctx, s.connConfig)
	if err != nil {
		return err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	if _, err := conn.Exec(ctx, "LISTEN "+quoteIdent(s.denyChannel)); err != nil {
		return err
	}
	changed()
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return err
		}
		changed()
	}
}
