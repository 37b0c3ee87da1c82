package pgstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/lease"
)

// Query returns the leases q selects, in ID order (bytewise, as Go
// compares strings: the id column is COLLATE "C"), as lease.Manager.List
// does: one statement, which the indexes bound to about the leases it
// returns (the primary key from After or IDPrefix on, leases_owner,
// leases_role in ID order).
func (s *Store) Query(ctx context.Context, q lease.Query) ([]lease.Lease, error) {
	if err := s.usable(ctx); err != nil {
		return nil, fmt.Errorf("pgstore: query: %w", err)
	}
	sql, args, ok := s.querySQL(q)
	if !ok {
		return nil, nil // no stored lease is in a state never stored
	}
	rows, err := s.pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, s.fail("query", err)
	}
	ls, err := pgx.CollectRows(rows, func(row pgx.CollectableRow) (lease.Lease, error) { return scanLease(row) })
	if err != nil {
		return nil, s.fail("query", err)
	}
	return ls, nil
}

// querySQL is Query's statement and arguments; false if q selects nothing
// without asking (only states that are never stored).
func (s *Store) querySQL(q lease.Query) (sql string, args []any, ok bool) {
	var where []string
	arg := func(v any) string {
		args = append(args, v)
		return fmt.Sprintf("$%d", len(args))
	}
	for _, f := range []struct{ col, v string }{{"owner", q.Owner}, {"role", q.Role}, {"database", q.Database}} {
		if f.v != "" {
			where = append(where, f.col+" = "+arg(f.v))
		}
	}
	if len(q.States) > 0 {
		var states []string
		for _, st := range q.States {
			if t, ok := stateText(st); ok {
				states = append(states, t)
			}
		}
		if len(states) == 0 {
			return "", nil, false
		}
		where = append(where, "state = ANY("+arg(states)+"::text[])")
	}
	if q.After != "" {
		where = append(where, "id > "+arg(q.After))
	}
	if len(q.IDs) > 0 {
		where = append(where, "id = ANY("+arg(q.IDs)+"::text[])")
	}
	if p := q.IDPrefix; p != "" {
		// starts_with is the exact test; the range lets the primary key
		// start and stop at the prefix (bytewise: every string with the
		// prefix sorts below it with its last byte incremented, when that
		// is still ASCII).
		where = append(where, "starts_with(id, "+arg(p)+")", "id >= "+arg(p))
		if last := p[len(p)-1]; last < 0x7f {
			where = append(where, "id < "+arg(p[:len(p)-1]+string(last+1)))
		}
	}
	sql = `SELECT ` + strings.Join(leaseCols, ", ") + ` FROM ` + s.schema + `.leases`
	if len(where) > 0 {
		sql += ` WHERE ` + strings.Join(where, " AND ")
	}
	sql += ` ORDER BY id`
	if q.Limit > 0 {
		sql += ` LIMIT ` + arg(q.Limit)
	}
	return sql, args, true
}

// FindRequest returns the lease owner was issued for requestID, in
// whatever state, or an error wrapping lease.ErrNotFound; found through
// the unique index leases_request.
func (s *Store) FindRequest(ctx context.Context, owner, requestID string) (lease.Lease, error) {
	op := fmt.Sprintf("find request %q of %s", requestID, owner)
	if err := s.usable(ctx); err != nil {
		return lease.Lease{}, fmt.Errorf("pgstore: %s: %w", op, err)
	}
	if requestID == "" {
		return lease.Lease{}, fmt.Errorf("pgstore: find request: empty request id: %w", lease.ErrInvalid)
	}
	l, err := scanLease(s.pool.QueryRow(ctx, `SELECT `+strings.Join(leaseCols, ", ")+` FROM `+s.schema+`.leases
		WHERE owner = $1 AND request_id = $2 AND request_id <> ''`, owner, requestID))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return lease.Lease{}, fmt.Errorf("pgstore: %s: %w", op, lease.ErrNotFound)
	case err != nil:
		return lease.Lease{}, s.fail(op, err)
	}
	return l, nil
}

// Owners returns, sorted (in Go, bytewise, whatever the database's
// collation), the owners with a lease in state st.
func (s *Store) Owners(ctx context.Context, st lease.State) ([]string, error) {
	if err := s.usable(ctx); err != nil {
		return nil, fmt.Errorf("pgstore: owners: %w", err)
	}
	text, ok := stateText(st)
	if !ok {
		return nil, nil
	}
	rows, err := s.pool.Query(ctx, `SELECT DISTINCT owner FROM `+s.schema+`.leases WHERE state = $1`, text)
	if err != nil {
		return nil, s.fail("owners", err)
	}
	owners, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, s.fail("owners", err)
	}
	slices.Sort(owners)
	return owners, nil
}

// Stats counts the leases by state and role, and finds the oldest
// revoking_since, in one statement. It reads every row (an aggregate,
// no count is kept): call it at the pace of metrics, not per request.
func (s *Store) Stats(ctx context.Context) (lease.Stats, error) {
	if err := s.usable(ctx); err != nil {
		return lease.Stats{}, fmt.Errorf("pgstore: stats: %w", err)
	}
	rows, err := s.pool.Query(ctx, `SELECT state, role, count(*), min(revoking_since) FROM `+s.schema+`.leases GROUP BY state, role`)
	if err != nil {
		return lease.Stats{}, s.fail("stats", err)
	}
	defer rows.Close()
	st := lease.Stats{ByState: map[lease.State]int{}, ByRole: map[string]int{}}
	for _, k := range []lease.State{lease.StateCreating, lease.StateActive, lease.StateRevoking} {
		st.ByState[k] = 0
	}
	for rows.Next() {
		var (
			state, role string
			n           int
			since       *time.Time
		)
		if err := rows.Scan(&state, &role, &n, &since); err != nil {
			return lease.Stats{}, s.fail("stats", err)
		}
		k, ok := parseState(state)
		if !ok {
			return lease.Stats{}, s.fail("stats", fmt.Errorf("%w: state %q", lease.ErrStoreCorrupt, state))
		}
		st.ByState[k] += n
		st.ByRole[role] += n
		if since != nil && (st.OldestRevoking.IsZero() || since.Before(st.OldestRevoking)) {
			st.OldestRevoking = since.UTC()
		}
	}
	if err := rows.Err(); err != nil {
		return lease.Stats{}, s.fail("stats", err)
	}
	return st, nil
}
