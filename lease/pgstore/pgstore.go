package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/credbroker/credbroker/internal/batch"
	"github.com/credbroker/credbroker/lease"
)

// Store is a lease.Store in a PostgreSQL schema, shared by any number of
// brokers. Every write is one committed transaction when it returns nil.
type Store struct {
	pool      *pgxpool.Pool
	schema    string // quoted
	rawSchema string // as configured
	secret    string // the password, only to scrub it from errors
	closed    atomic.Bool
	// serving is the lock that keeps Migrate away while the store is open.
	serving *serving
	// connectTimeout bounds the release of serving at Close.
	connectTimeout time.Duration
	// replica is Config.Replica: claimed_by of this store's claims.
	replica string

	// SQL built once for the schema.
	putSQL, getSQL, deleteSQL string
	// The conditional writes of issuance (claim.go).
	createSQL, createWithinSQL, putIfVersionSQL string
	// denyChannel is the NOTIFY channel of the denylist (WatchDenied).
	denyChannel string
	// connConfig opens the connections of WatchDenied.
	connConfig *pgx.ConnConfig

	observe lease.CommitObserver // nil: none
	// group commits concurrent conditional writes together
	// (groupcommit.go).
	group *batch.Queue[condWrite, condResult]
}

// Option configures Open.
type Option func(*Store)

// WithCommitObserver has observe told of every lease write the store
// commits: Put, Delete and DeleteIfVersion are one transaction of one
// write each, the Create and PutIfVersion calls of one group commit one
// transaction of all of them, PutAll one transaction of all its leases,
// ClaimDue one of the leases it claimed. A write that changed nothing (a
// conditional write that conflicted, a Create of a taken id or request id,
// a ClaimDue that found nothing due) is no commit and is not reported.
func WithCommitObserver(observe lease.CommitObserver) Option {
	return func(s *Store) { s.observe = observe }
}

// observed reports a commit of n writes begun at start, if anyone listens.
func (s *Store) observed(n int, start time.Time, err error) {
	if s.observe != nil {
		s.observe(n, time.Since(start), err)
	}
}

var (
	_ lease.Store       = (*Store)(nil)
	_ lease.BulkPutter  = (*Store)(nil)
	_ lease.SharedStore = (*Store)(nil)
)

// Open connects to the store described by c, as one of any number of
// brokers (replicas) sharing it, each with its own Config.Replica: they
// coordinate through the store's versions and claims (lease.SharedStore;
// "Claims and fencing" in the package documentation), so only a manager
// built on them (lease.Shared) may run on it, never a lease.Manager, which
// holds every lease in memory and expires them by itself.
//
// It never creates or migrates anything: a schema without a store is
// lease.ErrStoreMissing (run `credbroker init-store`, Init), one at
// another version ErrSchemaOlder (run `credbroker migrate`, Migrate) or
// ErrSchemaNewer (upgrade the broker). A server that cannot be reached is
// lease.ErrStoreUnavailable. The store holds the serving lock, shared,
// until Close, so that Migrate refuses to run under it.
//
// Open does not read the leases: a replica starts in constant time,
// whatever the store holds.
func Open(ctx context.Context, c Config, opts ...Option) (*Store, error) {
	c = c.withDefaults()
	pool, err := connect(ctx, c)
	if err != nil {
		return nil, err
	}
	if err := checkVersion(ctx, pool, c.Schema); err != nil {
		pool.Close()
		return nil, fmt.Errorf("pgstore: open: %w", redactErr(err, c.Password))
	}
	s := newStore(pool, c)
	if s.serving, err = holdServing(ctx, c); err != nil {
		pool.Close()
		return nil, redactErr(err, c.Password)
	}
	for _, o := range opts {
		o(s)
	}
	return s, nil
}

func newStore(pool *pgxpool.Pool, c Config) *Store {
	schema := quoteIdent(c.Schema)
	cols := strings.Join(leaseCols, ", ")
	s := &Store{
		pool:      pool,
		schema:    schema,
		secret:    c.Password,
		replica:   c.Replica,
		putSQL:    upsertSQL(schema+".leases", "VALUES ("+placeholders(len(leaseCols))+", "+newRevokingSince("$2::text")+")"),
		getSQL:    `SELECT ` + cols + ` FROM ` + schema + `.leases WHERE id = $1`,
		deleteSQL: `DELETE FROM ` + schema + `.leases WHERE id = $1`,

		createSQL:       createSQL(schema + ".leases"),
		createWithinSQL: createWithinSQL(schema + ".leases"),
		putIfVersionSQL: putIfVersionSQL(schema + ".leases"),

		rawSchema:   c.Schema,
		denyChannel: denyChannel(c.Schema),
		connConfig:  pool.Config().ConnConfig,

		connectTimeout: c.ConnectTimeout,
	}
	s.group = newGroup(s)
	return s
}

// upsertSQL inserts the leases of source (a VALUES list or a SELECT of
// leaseCols then revoking_since) into table, replacing existing rows: an
// unconditional write bumps the row's version and ends any claim on it (a
// renewed lease is no longer due; a replica working on it is fenced).
func upsertSQL(table, source string) string {
	var set []string
	for _, c := range leaseCols[1:] {
		set = append(set, c+" = EXCLUDED."+c)
	}
	return `INSERT INTO ` + table + ` AS l (` + strings.Join(leaseCols, ", ") + `, revoking_since) ` + source + `
		ON CONFLICT (id) DO UPDATE SET ` + strings.Join(set, ", ") + `,
			version = l.version + 1, claimed_by = NULL, claim_deadline = NULL,
			revoking_since = ` + revokingSince("EXCLUDED.state", "l") + `
			`
}

// revokingSince is the SQL of a written row's revoking_since, given the
// expression of its new state and the alias of its old row: now() when it
// becomes REVOKING, kept while it stays REVOKING, NULL otherwise. Every
// write path uses it, so that Stats.OldestRevoking is the age of the
// longest revocation, not of its last retry.
func revokingSince(state, old string) string {
	return `CASE WHEN ` + state + ` <> 'REVOKING' THEN NULL
		WHEN ` + old + `.state = 'REVOKING' THEN coalesce(` + old + `.revoking_since, now())
		ELSE now() END`
}

// newRevokingSince is revoking_since of an inserted row whose state is
// the expression state.
func newRevokingSince(state string) string {
	return `CASE WHEN ` + state + ` = 'REVOKING' THEN now() END`
}

func placeholders(n int) string {
	p := make([]string, n)
	for i := range p {
		p[i] = fmt.Sprintf("$%d", i+1)
	}
	return strings.Join(p, ", ")
}

// usable fails a call on a closed store or with an ended ctx, before any
// SQL is sent.
func (s *Store) usable(ctx context.Context) error {
	if s.closed.Load() {
		return fmt.Errorf("%w: closed", lease.ErrStoreUnavailable)
	}
	return ctxErr(ctx)
}

// writable is usable, for a write.
func (s *Store) writable(ctx context.Context) error { return s.usable(ctx) }

// fail wraps err of operation op: data that does not decode is
// lease.ErrStoreCorrupt (and unavailable, as the store cannot answer),
// anything else lease.ErrStoreUnavailable; never with the password.
func (s *Store) fail(op string, err error) error {
	if errors.Is(err, lease.ErrStoreCorrupt) && !errors.Is(err, lease.ErrStoreUnavailable) {
		err = fmt.Errorf("%w: %w", lease.ErrStoreUnavailable, err)
	} else {
		err = unavailable(err)
	}
	return fmt.Errorf("pgstore: %s: %w", op, redactErr(err, s.secret))
}

// Put stores l, replacing any lease with its ID, in one committed
// transaction. It is unconditional, as lease.Store requires: it bumps the
// row's version and ends a claim on it (PutIfVersion is the fenced write).
func (s *Store) Put(ctx context.Context, l lease.Lease) error {
	if err := s.writable(ctx); err != nil {
		return fmt.Errorf("pgstore: put %s: %w", l.ID, err)
	}
	args, err := leaseArgs(l)
	if err != nil {
		return fmt.Errorf("pgstore: put: %w", err)
	}
	start := time.Now()
	_, err = s.pool.Exec(ctx, s.putSQL, args...)
	s.observed(1, start, err)
	if err != nil {
		return s.fail("put "+l.ID, err)
	}
	return nil
}

// PutAll stores every lease of ls in one transaction (lease.BulkPutter):
// COPY into a temporary table, then one upsert from it. A lease given twice
// is stored as its last copy.
func (s *Store) PutAll(ctx context.Context, ls []lease.Lease) error {
	if err := s.writable(ctx); err != nil {
		return fmt.Errorf("pgstore: put all: %w", err)
	}
	last := make(map[string]int, len(ls))
	for i, l := range ls {
		last[l.ID] = i
	}
	rows := make([][]any, 0, len(last))
	for i, l := range ls {
		if last[l.ID] != i {
			continue
		}
		args, err := leaseArgs(l)
		if err != nil {
			return fmt.Errorf("pgstore: put all: %w", err)
		}
		rows = append(rows, args)
	}
	if len(rows) == 0 {
		return nil
	}
	start := time.Now()
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `CREATE TEMPORARY TABLE pgstore_bulk (LIKE `+s.schema+`.leases INCLUDING DEFAULTS) ON COMMIT DROP`); err != nil {
			return err
		}
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{"pgstore_bulk"}, leaseCols, pgx.CopyFromRows(rows)); err != nil {
			return err
		}
		_, err := tx.Exec(ctx, upsertSQL(s.schema+".leases", `SELECT `+strings.Join(leaseCols, ", ")+`, `+newRevokingSince("state")+` FROM pgstore_bulk`))
		return err
	})
	s.observed(len(rows), start, err)
	if err != nil {
		return s.fail("put all", err)
	}
	return nil
}

// Get returns the lease with id, or an error wrapping lease.ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (lease.Lease, error) {
	if err := s.usable(ctx); err != nil {
		return lease.Lease{}, fmt.Errorf("pgstore: get %s: %w", id, err)
	}
	l, err := scanLease(s.pool.QueryRow(ctx, s.getSQL, id))
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return lease.Lease{}, fmt.Errorf("pgstore: get %s: %w", id, lease.ErrNotFound)
	case err != nil:
		return lease.Lease{}, s.fail("get "+id, err)
	}
	return l, nil
}

// Delete removes the lease with id, whoever claims it; an absent id is
// not an error.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := s.writable(ctx); err != nil {
		return fmt.Errorf("pgstore: delete %s: %w", id, err)
	}
	start := time.Now()
	_, err := s.pool.Exec(ctx, s.deleteSQL, id)
	s.observed(1, start, err)
	if err != nil {
		return s.fail("delete "+id, err)
	}
	return nil
}

// Scan calls fn for every stored lease that f matches, streaming them from
// one query (one connection held until it returns). A row that does not
// decode stops it with an error wrapping lease.ErrStoreCorrupt; fn's error
// is returned as is.
func (s *Store) Scan(ctx context.Context, f lease.Filter, fn func(lease.Lease) error) error {
	if err := s.usable(ctx); err != nil {
		return fmt.Errorf("pgstore: scan: %w", err)
	}
	q := `SELECT ` + strings.Join(leaseCols, ", ") + ` FROM ` + s.schema + `.leases`
	var where []string
	var args []any
	if f.State != 0 {
		st, ok := stateText(f.State)
		if !ok {
			return nil // no stored lease is in a state never stored
		}
		args = append(args, st)
		where = append(where, fmt.Sprintf("state = $%d", len(args)))
	}
	if f.Owner != "" {
		args = append(args, f.Owner)
		where = append(where, fmt.Sprintf("owner = $%d", len(args)))
	}
	if len(where) > 0 {
		q += ` WHERE ` + strings.Join(where, " AND ")
	}
	rows, err := s.pool.Query(ctx, q, args...)
	if err != nil {
		return s.fail("scan", err)
	}
	defer rows.Close()
	for rows.Next() {
		l, err := scanLease(rows)
		if err != nil {
			return s.fail("scan", err)
		}
		if err := fn(l); err != nil {
			return err
		}
	}
	if err := rows.Err(); err != nil {
		return s.fail("scan", err)
	}
	return nil
}

// Close releases the pool; later calls fail with lease.ErrStoreUnavailable.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	s.pool.Close()
	ctx, cancel := context.WithTimeout(context.Background(), s.connectTimeout)
	defer cancel()
	s.serving.release(ctx)
	return nil
}
