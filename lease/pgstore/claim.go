package pgstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/lease"
)

// codeUniqueViolation is the SQLSTATE of a duplicate key.
const codeUniqueViolation = "23505"

// Create inserts l, which must be CREATING, claimed by this store's
// replica until the database's now plus hold (lease.SharedStore): the
// replica issuing it has that long to finish before another claims the
// issuance and cleans it up. An existing ID is an error wrapping
// lease.ErrExists; an existing owner and request id (the leases_request
// unique index, which Put also meets, as an unavailable store) one
// wrapping lease.ErrRequestExists.
func (s *Store) Create(ctx context.Context, l lease.Lease, hold time.Duration) (int64, error) {
	op := "create " + l.ID
	args, err := s.createArgs(ctx, op, l, hold)
	if err != nil {
		return 0, err
	}
	r, err := s.condWrite(ctx, condWrite{sql: s.createSQL, args: args})
	switch {
	case err != nil:
		return 0, s.fail(op, err)
	case r.wrote:
		return r.version, nil
	}
	return 0, s.createConflict(ctx, op, l)
}

// createArgs checks a create of l (operation op) and returns createSQL's
// arguments.
func (s *Store) createArgs(ctx context.Context, op string, l lease.Lease, hold time.Duration) ([]any, error) {
	if err := s.writable(ctx); err != nil {
		return nil, fmt.Errorf("pgstore: %s: %w", op, err)
	}
	if l.State != lease.StateCreating || hold <= 0 {
		return nil, fmt.Errorf("pgstore: %s: state %s, hold %s: need CREATING and a positive hold: %w", op, l.State, hold, lease.ErrInvalid)
	}
	args, err := leaseArgs(l)
	if err != nil {
		return nil, fmt.Errorf("pgstore: %s: %w", op, err)
	}
	return append(args, s.replica, hold.Microseconds()), nil
}

// createConflict is the error of a create that wrote nothing because l's
// id, or its owner's request id, is taken.
func (s *Store) createConflict(ctx context.Context, op string, l lease.Lease) error {
	var idTaken bool
	if err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM `+s.schema+`.leases WHERE id = $1)`, l.ID).Scan(&idTaken); err != nil {
		return s.fail(op, err)
	}
	if idTaken || l.RequestID == "" {
		return fmt.Errorf("pgstore: %s: %w", op, lease.ErrExists)
	}
	return fmt.Errorf("pgstore: %s: owner %s has a lease for request id %q: %w", op, l.Owner, l.RequestID, lease.ErrRequestExists)
}

// limitKey1 is the first key of the advisory locks that serialize capped
// creations per role: "cbqt".
const limitKey1 int32 = 0x63627174

// limitKey2 derives the second key from the schema and the role. Two roles
// whose keys collide share a lock: their capped creations queue behind each
// other, which costs time, never a wrong count.
func limitKey2(schema, role string) int32 {
	h := fnv.New32a()
	h.Write([]byte("credbroker-limit:" + schema + ":" + role))
	return int32(h.Sum32() & 0x7fffffff)
}

// CreateWithin is Create under lim (lease.SharedStore), in one round trip
// and one implicit transaction (a pipeline ended by one Sync): a
// transaction-scoped advisory lock on the role, then one statement that
// counts the role's CREATING and ACTIVE rows (and the owner's among them)
// and inserts only below the caps. The lock is taken by its own
// statement, so the count, on a snapshot taken after it, sees every
// creation committed by whoever held it before; the lock is released after
// the commit is visible. It is held only while the server runs the count,
// the insert and the commit, never across a round trip to this process,
// so a burst of capped creations queues for microseconds each rather than
// for round trips. Capped creations run outside the group commit: they
// wait for that lock, which must not hold up other callers' writes.
func (s *Store) CreateWithin(ctx context.Context, l lease.Lease, hold time.Duration, lim lease.Limits) (int64, error) {
	op := "create " + l.ID
	if err := lim.Check(); err != nil {
		return 0, fmt.Errorf("pgstore: %s: %w", op, err)
	}
	if lim.IsZero() {
		return s.Create(ctx, l, hold)
	}
	args, err := s.createArgs(ctx, op, l, hold)
	if err != nil {
		return 0, err
	}
	start := time.Now()
	b := &pgx.Batch{}
	b.Queue(`SELECT pg_advisory_xact_lock($1, $2)`, limitKey1, limitKey2(s.rawSchema, l.Role))
	b.Queue(s.createWithinSQL, append(args, lim.Role, lim.Owner)...)
	br := s.pool.SendBatch(ctx, b)
	var (
		n, own  int
		version *int64
	)
	_, err = br.Exec()
	if err == nil {
		err = br.QueryRow().Scan(&n, &own, &version)
	}
	if cerr := br.Close(); err == nil {
		err = cerr // the commit's outcome
	}
	if err != nil {
		s.observed(1, start, err)
		return 0, s.fail(op, err)
	}
	if version != nil {
		s.observed(1, start, nil)
		return *version, nil
	}
	if over := lim.Over(n, own); over != nil {
		return 0, fmt.Errorf("pgstore: %s: %w", op, over)
	}
	return 0, s.createConflict(ctx, op, l)
}

// createWithinSQL is CreateWithin's statement on the leases table
// (quoted): createSQL's arguments, then the role's cap ($n+3) and the
// owner's ($n+4), 0 for none. It returns the role's and the owner's live
// leases before the insert, and the new row's version (NULL if nothing was
// inserted: a cap reached, or the id or request id taken).
func createWithinSQL(table string) string {
	n := len(leaseCols)
	param := func(col string) string { return fmt.Sprintf("$%d", slices.Index(leaseCols, col)+1) }
	return `WITH live AS (
			SELECT count(*) AS n, count(*) FILTER (WHERE owner = ` + param("owner") + `) AS own FROM ` + table + `
			WHERE role = ` + param("role") + ` AND state IN ('CREATING', 'ACTIVE')
		), ins AS (
			` + createInto(table) + `
			SELECT ` + createValues() + ` FROM live
			WHERE ($` + fmt.Sprint(n+3) + `::int = 0 OR live.n < $` + fmt.Sprint(n+3) + `)
				AND ($` + fmt.Sprint(n+4) + `::int = 0 OR live.own < $` + fmt.Sprint(n+4) + `)
			ON CONFLICT DO NOTHING RETURNING version
		)
		SELECT live.n, live.own, (SELECT version FROM ins) FROM live`
}

// createSQL is Create's statement on the leases table (quoted): the lease's
// columns, then the claim ($n+1 the replica, $n+2 the hold in µs). It does
// nothing on any conflict (the id or the owner's request id), so that a
// taken one fails no other write of the group commit; Create reads which
// one it was after.
func createSQL(table string) string {
	return createInto(table) + ` VALUES (` + createValues() + `)
		ON CONFLICT DO NOTHING RETURNING version`
}

// createInto and createValues are the parts of a new row's insert that
// createSQL and createWithinSQL share: the columns, then their values
// (the lease's, then the claim: $n+1 the replica, $n+2 the hold in µs).
func createInto(table string) string {
	return `INSERT INTO ` + table + ` (` + strings.Join(leaseCols, ", ") + `, claimed_by, claim_deadline)`
}

func createValues() string {
	n := len(leaseCols)
	return placeholders(n) + fmt.Sprintf(`, $%d, now() + $%d * interval '1 microsecond'`, n+1, n+2)
}

// putIfVersionSQL is PutIfVersion's statement on the leases table
// (quoted): the lease's columns, then the version it must be at ($n+1),
// the claimer ($n+2, NULL for none) and the hold in µs ($n+3). The SET's
// right-hand sides read the row before the update, as revokingSince needs.
func putIfVersionSQL(table string) string {
	n := len(leaseCols)
	set := make([]string, 0, n)
	for i, c := range leaseCols[1:] {
		set = append(set, fmt.Sprintf("%s = $%d", c, i+2))
	}
	return `UPDATE ` + table + ` AS l SET ` + strings.Join(set, ", ") + `, version = l.version + 1,
			claimed_by = $` + fmt.Sprint(n+2) + `,
			claim_deadline = CASE WHEN $` + fmt.Sprint(n+3) + `::bigint > 0 THEN now() + $` + fmt.Sprint(n+3) + ` * interval '1 microsecond' END,
			revoking_since = ` + revokingSince("$2::text", "l") + `
		WHERE id = $1 AND version = $` + fmt.Sprint(n+1) + ` RETURNING version`
}

// ClaimDue claims, in one transaction and on the database's clock, up to
// req.Limit leases that need a replica and whose claim is absent or has
// lapsed: CREATING ones first (an issuance whose replica did not finish
// within its hold), then REVOKING ones, then ACTIVE ones expiring within
// req.Lookahead, by expiry. Rows another replica is claiming at the same
// moment are skipped (FOR UPDATE SKIP LOCKED), so each lease goes to one
// replica. Each claimed row's version is bumped, which fences whoever
// worked on it before, and it is claimed by this store's replica for
// req.TTL.
//
// The two kinds of rows are two locking selects, each on its partial index
// (leases_creating by claim deadline, leases_due by next_action), joined
// with UNION ALL under the batch's LIMIT: the second is read only as far
// as the first leaves room, so no more rows are locked than claimed.
func (s *Store) ClaimDue(ctx context.Context, req lease.ClaimRequest) (lease.Claimed, error) {
	if err := s.writable(ctx); err != nil {
		return lease.Claimed{}, fmt.Errorf("pgstore: claim: %w", err)
	}
	switch {
	case req.Limit < 1:
		return lease.Claimed{}, fmt.Errorf("pgstore: claim: limit %d must be positive: %w", req.Limit, lease.ErrInvalid)
	case req.TTL <= 0 || req.Lookahead < 0:
		return lease.Claimed{}, fmt.Errorf("pgstore: claim: ttl %s must be positive, lookahead %s not negative: %w", req.TTL, req.Lookahead, lease.ErrInvalid)
	}
	returning := make([]string, len(leaseCols))
	for i, c := range leaseCols {
		returning[i] = "l." + c
	}
	var out lease.Claimed
	start := time.Now()
	// In a transaction, so that a row that does not decode leaves nothing
	// claimed, and so that Now is the claim's now() (the transaction's
	// start, the same in every statement of it).
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, s.claimSQL(returning), s.replica, req.Lookahead.Microseconds(), req.Limit, req.TTL.Microseconds())
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var c lease.Versioned
			if c.Lease, err = scanLease(rows, &c.Version); err != nil {
				return err
			}
			out.Leases = append(out.Leases, c)
		}
		if err := rows.Err(); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT now()`).Scan(&out.Now)
	})
	if err != nil || len(out.Leases) > 0 {
		s.observed(len(out.Leases), start, err)
	}
	if err != nil {
		return lease.Claimed{}, s.fail("claim", err)
	}
	out.Now = out.Now.UTC()
	return out, nil
}

// claimSQL is ClaimDue's statement: $1 replica, $2 lookahead and $4 ttl in
// microseconds, $3 limit. An UPDATE's RETURNING has no order, so pick
// numbers the rows as the UNION ALL yields them (CREATING first, then by
// next_action) and the outer SELECT sorts on that number.
func (s *Store) claimSQL(returning []string) string {
	free := `(claim_deadline IS NULL OR claim_deadline < now())`
	return `WITH creating AS (
		SELECT id FROM ` + s.schema + `.leases
		WHERE state = 'CREATING' AND coalesce(claim_deadline, '-infinity'::timestamptz) < now()
		ORDER BY coalesce(claim_deadline, '-infinity'::timestamptz)
		LIMIT $3
		FOR UPDATE SKIP LOCKED
	), due AS (
		SELECT id, next_action FROM ` + s.schema + `.leases
		WHERE state IN ('ACTIVE', 'REVOKING')
			AND next_action <= now() + $2 * interval '1 microsecond'
			AND ` + free + `
		ORDER BY next_action
		LIMIT $3
		FOR UPDATE SKIP LOCKED
	), pick AS (
		SELECT id, row_number() OVER () AS ord FROM (
			(SELECT id FROM creating)
			UNION ALL
			(SELECT id FROM due)
			LIMIT $3
		) AS p
	), claimed AS (
		UPDATE ` + s.schema + `.leases AS l
		SET claimed_by = $1, claim_deadline = now() + $4 * interval '1 microsecond', version = l.version + 1
		FROM pick WHERE l.id = pick.id
		RETURNING ` + strings.Join(returning, ", ") + `, l.version, pick.ord
	)
	SELECT ` + strings.Join(leaseCols, ", ") + `, version FROM claimed ORDER BY ord`
}

// GetVersion is Get with the row's version, for a later PutIfVersion or
// DeleteIfVersion (a renew: read, check, write only if nobody wrote since).
func (s *Store) GetVersion(ctx context.Context, id string) (lease.Versioned, error) {
	if err := s.usable(ctx); err != nil {
		return lease.Versioned{}, fmt.Errorf("pgstore: get %s: %w", id, err)
	}
	var v lease.Versioned
	var err error
	v.Lease, err = scanLease(s.pool.QueryRow(ctx, `SELECT `+strings.Join(leaseCols, ", ")+`, version FROM `+s.schema+`.leases WHERE id = $1`, id), &v.Version)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return lease.Versioned{}, fmt.Errorf("pgstore: get %s: %w", id, lease.ErrNotFound)
	case err != nil:
		return lease.Versioned{}, s.fail("get "+id, err)
	}
	return v, nil
}

// PutIfVersion stores l only if its row is still at version, in one
// statement, and returns the row's new version. A row changed, claimed or
// deleted since is left alone and the error wraps lease.ErrConflict
// (ErrFenced); version 0 never matches (Create inserts). hold > 0 leaves
// the row claimed by this store's replica until the database's now plus
// hold; hold == 0 ends any claim.
func (s *Store) PutIfVersion(ctx context.Context, l lease.Lease, version int64, hold time.Duration) (int64, error) {
	op := fmt.Sprintf("put %s at version %d", l.ID, version)
	if err := s.writable(ctx); err != nil {
		return 0, fmt.Errorf("pgstore: %s: %w", op, err)
	}
	if hold < 0 {
		return 0, fmt.Errorf("pgstore: %s: hold %s is negative: %w", op, hold, lease.ErrInvalid)
	}
	args, err := leaseArgs(l)
	if err != nil {
		return 0, fmt.Errorf("pgstore: %s: %w", op, err)
	}
	var claimedBy *string
	if hold > 0 {
		claimedBy = &s.replica
	}
	args = append(args, version, claimedBy, hold.Microseconds())
	r, err := s.condWrite(ctx, condWrite{sql: s.putIfVersionSQL, args: args})
	switch {
	case err != nil:
		return 0, s.fail(op, err)
	case !r.wrote:
		return 0, fmt.Errorf("pgstore: %s: %w", op, ErrFenced) // nothing written, nothing to report
	}
	return r.version, nil
}

// DeleteIfVersion deletes the lease with id only if its row is still at
// version. A row changed, claimed or already deleted since is an error
// wrapping lease.ErrConflict (ErrFenced).
func (s *Store) DeleteIfVersion(ctx context.Context, id string, version int64) error {
	op := fmt.Sprintf("delete %s at version %d", id, version)
	if err := s.writable(ctx); err != nil {
		return fmt.Errorf("pgstore: %s: %w", op, err)
	}
	start := time.Now()
	tag, err := s.pool.Exec(ctx, `DELETE FROM `+s.schema+`.leases WHERE id = $1 AND version = $2`, id, version)
	if err != nil {
		s.observed(1, start, err)
		return s.fail(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("pgstore: %s: %w", op, ErrFenced) // nothing written, nothing to report
	}
	s.observed(1, start, nil)
	return nil
}
