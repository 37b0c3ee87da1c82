package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/credbroker/credbroker/lease"
)

// Sentinel errors of the store; every other error wraps one of package
// lease's (ErrStoreUnavailable, ErrStoreCorrupt, ErrStoreMissing).
var (
	// ErrSchemaOlder: the stored schema is older than this binary's; run
	// `credbroker migrate`. Open never migrates by itself.
	ErrSchemaOlder = errors.New("store schema is older than this broker")
	// ErrSchemaNewer: the stored schema was made by a newer broker; upgrade
	// this one.
	ErrSchemaNewer = errors.New("store schema is newer than this broker")
	// ErrFenced is lease.ErrConflict, under the name the claim tests and
	// doc.go use: a conditional write (PutIfVersion, DeleteIfVersion)
	// found the lease changed, claimed or deleted by someone else since
	// the version it was given, so the caller must not act on what it
	// read. One error, so that the Shared manager tests for one sentinel
	// whatever the store.
	ErrFenced = lease.ErrConflict
)

// migrations[i] takes the schema from version i to version i+1, inside one
// transaction; {{schema}} is the quoted schema name. Each version is one
// more entry: never edit a released one.
var migrations = []string{
	// 1: leases, deregistrations.
	`
CREATE TABLE {{schema}}.leases (
	id                    text PRIMARY KEY,
	state                 text NOT NULL CHECK (state IN ('CREATING', 'ACTIVE', 'REVOKING')),
	owner                 text NOT NULL,
	role                  text NOT NULL,
	database              text NOT NULL,
	username              text NOT NULL,
	-- PostgreSQL keeps microseconds; *_ns holds the nanoseconds below them
	-- so that a lease comes back exactly as it was put. NULL: the zero time.
	issue_time            timestamptz,
	issue_time_ns         smallint NOT NULL DEFAULT 0,
	expire_time           timestamptz,
	expire_time_ns        smallint NOT NULL DEFAULT 0,
	max_expire_time       timestamptz,
	max_expire_time_ns    smallint NOT NULL DEFAULT 0,
	revocation_statements text[] NOT NULL DEFAULT '{}',
	last_error            text NOT NULL DEFAULT '',
	attempts              integer NOT NULL DEFAULT 0,
	expired               boolean NOT NULL DEFAULT false,
	-- Row version, bumped by every write and claim: the fence of
	-- PutIfVersion and DeleteIfVersion.
	version               bigint NOT NULL DEFAULT 1,
	-- When the lease needs a replica's attention: an ACTIVE lease at its
	-- expiry, a REVOKING one at once.
	next_action           timestamptz GENERATED ALWAYS AS (
	                          CASE state WHEN 'ACTIVE' THEN expire_time
	                                     WHEN 'REVOKING' THEN '-infinity'::timestamptz END) STORED,
	claimed_by            text,
	claim_deadline        timestamptz
);
CREATE INDEX leases_state_expire ON {{schema}}.leases (state, expire_time);
CREATE INDEX leases_owner ON {{schema}}.leases (owner);
CREATE INDEX leases_due ON {{schema}}.leases (next_action) WHERE state IN ('ACTIVE', 'REVOKING');
CREATE TABLE {{schema}}.deregistrations (
	spiffe_id  text PRIMARY KEY,
	at         timestamptz, -- NULL: the zero time
	at_ns      smallint NOT NULL DEFAULT 0
);
`,
	// 2: the request id of an idempotent issuance (lease.Lease.RequestID),
	// '' for none; at most one lease per owner and request id, found by
	// the index without a scan.
	`
ALTER TABLE {{schema}}.leases ADD COLUMN request_id text NOT NULL DEFAULT '';
CREATE UNIQUE INDEX leases_request ON {{schema}}.leases (owner, request_id) WHERE request_id <> '';
`,
	// 3: what several replicas sharing the store need (lease.SharedStore).
	//   - revoking_since: when the lease became REVOKING (NULL unless it
	//     is), kept across rewrites while it stays REVOKING, for
	//     Stats.OldestRevoking. Leases already REVOKING count from the
	//     migration, as a restored one counts from its restore.
	//   - leases_creating: the CREATING rows by claim deadline (none:
	//     -infinity, the most overdue), so that ClaimDue reads only the
	//     issuances whose replica did not finish (claim lapsed or absent),
	//     not those in flight.
	//   - ids compared byte by byte (COLLATE "C"), as Go compares strings:
	//     Query's ID order, After and IDPrefix are Manager.List's whatever
	//     the database's default collation, and use the primary key
	//     (rebuilt; the rows are not rewritten).
	//   - leases_role: a role's leases in ID order (Query by role, paged).
	`
ALTER TABLE {{schema}}.leases ADD COLUMN revoking_since timestamptz;
UPDATE {{schema}}.leases SET revoking_since = now() WHERE state = 'REVOKING';
ALTER TABLE {{schema}}.leases ALTER COLUMN id TYPE text COLLATE "C";
CREATE INDEX leases_creating ON {{schema}}.leases ((coalesce(claim_deadline, '-infinity'::timestamptz))) WHERE state = 'CREATING';
CREATE INDEX leases_role ON {{schema}}.leases (role, id);
`,
}

// SchemaVersion is the version of the schema this package reads and
// writes: the number of migrations.
func SchemaVersion() int { return len(migrations) }

// Init creates the store in c.Schema at SchemaVersion, as `credbroker
// init-store` does. A store already at SchemaVersion is left as it is; an
// older one is refused with ErrSchemaOlder (run Migrate), a newer one with
// ErrSchemaNewer.
func Init(ctx context.Context, c Config) error {
	c = c.withDefaults()
	pool, err := connect(ctx, c)
	if err != nil {
		return err
	}
	defer pool.Close()
	return upgrade(ctx, pool, c, true)
}

// Migrate applies, in order and in one transaction, the migrations from the
// stored schema's version to SchemaVersion (`credbroker migrate`). A missing
// store is not created (lease.ErrStoreMissing: that is Init's job, so a
// wrong schema name is not mistaken for an empty store); a newer one is
// refused with ErrSchemaNewer.
func Migrate(ctx context.Context, c Config) error {
	c = c.withDefaults()
	pool, err := connect(ctx, c)
	if err != nil {
		return err
	}
	defer pool.Close()
	return upgrade(ctx, pool, c, false)
}

// upgrade is Init (create) or Migrate, serialized with any other replica's
// by a transaction-scoped advisory lock on the schema's name.
func upgrade(ctx context.Context, pool *pgxpool.Pool, c Config, create bool) error {
	op := "migrate"
	if create {
		op = "init"
	}
	schema := quoteIdent(c.Schema)
	err := pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtext('credbroker-store:' || $1))`, c.Schema); err != nil {
			return unavailable(err)
		}
		v, err := storedVersion(ctx, tx, c.Schema)
		switch {
		case errors.Is(err, lease.ErrStoreMissing) && create:
			v = 0
			if _, err := tx.Exec(ctx, `CREATE SCHEMA IF NOT EXISTS `+schema); err != nil {
				return unavailable(err)
			}
			if _, err := tx.Exec(ctx, `CREATE TABLE `+schema+`.schema_version (
				version    integer PRIMARY KEY,
				applied_at timestamptz NOT NULL DEFAULT now())`); err != nil {
				return unavailable(err)
			}
		case err != nil:
			return err
		case v > SchemaVersion():
			return fmt.Errorf("schema %s is at version %d, this broker knows %d: %w; upgrade the broker", c.Schema, v, SchemaVersion(), ErrSchemaNewer)
		case v < SchemaVersion() && create:
			return fmt.Errorf("schema %s is at version %d, this broker needs %d: %w; run `credbroker migrate`", c.Schema, v, SchemaVersion(), ErrSchemaOlder)
		}
		if v > 0 && v < SchemaVersion() {
			// Every broker serving the old schema holds the serving lock
			// (shared); migrating under them would change the tables they
			// write. Taken exclusively, it also keeps new brokers out until
			// the migration commits.
			var free bool
			if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock($1, $2)`, servingKey1, servingKey2(c.Schema)).Scan(&free); err != nil {
				return unavailable(err)
			}
			if !free {
				return fmt.Errorf("schema %s: a broker is serving this store: %w; stop every broker on it before migrating", c.Schema, lease.ErrStoreUnavailable)
			}
		}
		for i := v; i < SchemaVersion(); i++ {
			if _, err := tx.Exec(ctx, strings.ReplaceAll(migrations[i], "{{schema}}", schema)); err != nil {
				return fmt.Errorf("to version %d: %w", i+1, unavailable(err))
			}
			if _, err := tx.Exec(ctx, `INSERT INTO `+schema+`.schema_version (version) VALUES ($1)`, i+1); err != nil {
				return fmt.Errorf("to version %d: %w", i+1, unavailable(err))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("pgstore: %s %s: %w", op, c.Schema, redactErr(err, c.Password))
	}
	return nil
}

// querier is what storedVersion needs of a pool or a transaction.
type querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

// storedVersion returns the version of the store in schema: an error
// wrapping lease.ErrStoreMissing if there is none, lease.ErrStoreCorrupt if
// its tables are there without a version.
func storedVersion(ctx context.Context, q querier, schema string) (int, error) {
	var hasVersions, hasLeases bool
	err := q.QueryRow(ctx, `SELECT
		to_regclass(format('%I.schema_version', $1::text)) IS NOT NULL,
		to_regclass(format('%I.leases', $1::text)) IS NOT NULL`, schema).Scan(&hasVersions, &hasLeases)
	if err != nil {
		return 0, unavailable(err)
	}
	switch {
	case !hasVersions && hasLeases:
		return 0, fmt.Errorf("schema %s has a leases table but no schema_version: %w", schema, lease.ErrStoreCorrupt)
	case !hasVersions:
		return 0, fmt.Errorf("no store in schema %s: %w; run `credbroker init-store`", schema, lease.ErrStoreMissing)
	}
	var v *int
	if err := q.QueryRow(ctx, `SELECT max(version) FROM `+quoteIdent(schema)+`.schema_version`).Scan(&v); err != nil {
		return 0, unavailable(err)
	}
	if v == nil {
		return 0, fmt.Errorf("schema %s records no version: %w", schema, lease.ErrStoreCorrupt)
	}
	return *v, nil
}

// checkVersion is Open's check: the store must be at SchemaVersion.
func checkVersion(ctx context.Context, q querier, schema string) error {
	v, err := storedVersion(ctx, q, schema)
	switch {
	case err != nil:
		return err
	case v < SchemaVersion():
		return fmt.Errorf("schema %s is at version %d, this broker needs %d: %w; run `credbroker migrate`", schema, v, SchemaVersion(), ErrSchemaOlder)
	case v > SchemaVersion():
		return fmt.Errorf("schema %s is at version %d, this broker knows %d: %w; upgrade the broker", schema, v, SchemaVersion(), ErrSchemaNewer)
	}
	return nil
}
