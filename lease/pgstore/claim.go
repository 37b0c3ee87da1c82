package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/lease"
)

// Claim is a due lease that one replica may work on until Deadline. See
// "Claims and fencing" in the package documentation.
type Claim struct {
	Lease lease.Lease
	// Version is the row's version after the claim: the version the
	// claimer's PutIfVersion and DeleteIfVersion must give.
	Version int64
	// Deadline is when the claim lapses, on the database's clock: after it
	// another replica may claim the lease. The claimer must not rely on it
	// against its own clock; the version fences it anyway.
	Deadline time.Time
}

// ClaimRequest says what ClaimDue claims.
type ClaimRequest struct {
	// Replica names the claimer (stored in claimed_by, for operators).
	Replica string
	// Lookahead claims the leases due within it of the database's now, so
	// that a replica can revoke them on time; 0 claims only what is due.
	Lookahead time.Duration
	// Limit bounds the batch. Required.
	Limit int
	// TTL is how long the claim holds. It must exceed Lookahead plus the
	// time a revocation may take, or another replica may claim the lease
	// while it is being revoked (it would drop the user a second time,
	// which is harmless, and the slower one is fenced).
	TTL time.Duration
}

// ClaimDue claims, in one transaction and on the database's clock, up to
// req.Limit leases that need a replica: ACTIVE ones expiring within
// req.Lookahead and REVOKING ones, whose claim (if any) has lapsed, the
// most overdue first. Rows another replica is claiming at the same moment
// are skipped (FOR UPDATE SKIP LOCKED), so each lease goes to one replica.
// Each claimed row's version is bumped, which fences whoever worked on it
// before. CREATING leases are never claimed (see doc.go).
func (s *Store) ClaimDue(ctx context.Context, req ClaimRequest) ([]Claim, error) {
	if err := s.writable(ctx); err != nil {
		return nil, fmt.Errorf("pgstore: claim: %w", err)
	}
	switch {
	case req.Replica == "":
		return nil, errors.New("pgstore: claim: replica is required")
	case req.Limit < 1:
		return nil, fmt.Errorf("pgstore: claim: limit %d must be positive", req.Limit)
	case req.TTL <= 0 || req.Lookahead < 0:
		return nil, fmt.Errorf("pgstore: claim: ttl %s must be positive, lookahead %s not negative", req.TTL, req.Lookahead)
	}
	returning := make([]string, len(leaseCols))
	for i, c := range leaseCols {
		returning[i] = "l." + c
	}
	q := `WITH due AS (
		SELECT id FROM ` + s.schema + `.leases
		WHERE state IN ('ACTIVE', 'REVOKING')
			AND next_action <= now() + $2 * interval '1 microsecond'
			AND (claim_deadline IS NULL OR claim_deadline < now())
		ORDER BY next_action
		LIMIT $3
		FOR UPDATE SKIP LOCKED
	)
	UPDATE ` + s.schema + `.leases AS l
	SET claimed_by = $1, claim_deadline = now() + $4 * interval '1 microsecond', version = l.version + 1
	FROM due WHERE l.id = due.id
	RETURNING ` + strings.Join(returning, ", ") + `, l.version, l.claim_deadline`
	var claims []Claim
	// In a transaction, so that a row that does not decode leaves nothing
	// claimed.
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, q, req.Replica, req.Lookahead.Microseconds(), req.Limit, req.TTL.Microseconds())
		if err != nil {
			return err
		}
		defer rows.Close()
		for rows.Next() {
			var c Claim
			if c.Lease, err = scanLease(rows, &c.Version, &c.Deadline); err != nil {
				return err
			}
			c.Deadline = c.Deadline.UTC()
			claims = append(claims, c)
		}
		return rows.Err()
	})
	if err != nil {
		return nil, s.fail("claim", err)
	}
	return claims, nil
}

// GetVersion is Get with the row's version, for a later PutIfVersion or
// DeleteIfVersion (a renew: read, check, write only if nobody wrote since).
func (s *Store) GetVersion(ctx context.Context, id string) (lease.Lease, int64, error) {
	if err := s.usable(ctx); err != nil {
		return lease.Lease{}, 0, fmt.Errorf("pgstore: get %s: %w", id, err)
	}
	var v int64
	l, err := scanLease(s.pool.QueryRow(ctx, `SELECT `+strings.Join(leaseCols, ", ")+`, version FROM `+s.schema+`.leases WHERE id = $1`, id), &v)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return lease.Lease{}, 0, fmt.Errorf("pgstore: get %s: %w", id, lease.ErrNotFound)
	case err != nil:
		return lease.Lease{}, 0, s.fail("get "+id, err)
	}
	return l, v, nil
}

// PutIfVersion stores l only if its row is still at version (0: only if
// there is no row with its ID), in one statement, and returns the row's
// new version. A row changed, claimed or deleted since is left alone and
// the error wraps ErrFenced. A claim on the row is kept: the claimer goes
// on working under it, with the new version.
func (s *Store) PutIfVersion(ctx context.Context, l lease.Lease, version int64) (int64, error) {
	op := fmt.Sprintf("put %s at version %d", l.ID, version)
	if err := s.writable(ctx); err != nil {
		return 0, fmt.Errorf("pgstore: %s: %w", op, err)
	}
	args, err := leaseArgs(l)
	if err != nil {
		return 0, fmt.Errorf("pgstore: %s: %w", op, err)
	}
	var q string
	if version == 0 {
		q = `INSERT INTO ` + s.schema + `.leases (` + strings.Join(leaseCols, ", ") + `)
			VALUES (` + placeholders(len(leaseCols)) + `) ON CONFLICT (id) DO NOTHING RETURNING version`
	} else {
		set := make([]string, 0, len(leaseCols))
		for i, c := range leaseCols[1:] {
			set = append(set, fmt.Sprintf("%s = $%d", c, i+2))
		}
		args = append(args, version)
		q = `UPDATE ` + s.schema + `.leases SET ` + strings.Join(set, ", ") + `, version = version + 1
			WHERE id = $1 AND version = $` + fmt.Sprint(len(args)) + ` RETURNING version`
	}
	var next int64
	switch err := s.pool.QueryRow(ctx, q, args...).Scan(&next); {
	case errors.Is(err, pgx.ErrNoRows):
		return 0, fmt.Errorf("pgstore: %s: %w", op, ErrFenced)
	case err != nil:
		return 0, s.fail(op, err)
	}
	return next, nil
}

// DeleteIfVersion deletes the lease with id only if its row is still at
// version. A row changed, claimed or already deleted since is an error
// wrapping ErrFenced.
func (s *Store) DeleteIfVersion(ctx context.Context, id string, version int64) error {
	op := fmt.Sprintf("delete %s at version %d", id, version)
	if err := s.writable(ctx); err != nil {
		return fmt.Errorf("pgstore: %s: %w", op, err)
	}
	tag, err := s.pool.Exec(ctx, `DELETE FROM `+s.schema+`.leases WHERE id = $1 AND version = $2`, id, version)
	if err != nil {
		return s.fail(op, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("pgstore: %s: %w", op, ErrFenced)
	}
	return nil
}
