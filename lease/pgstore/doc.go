// Package pgstore is a lease.Store in PostgreSQL, and a lease.SharedStore:
// any number of brokers (replicas) share one store, each running
// lease.Shared on it. It passes lease/leasetest's Run and RunShared on a
// real server with password auth. The broker uses it when its config has
// lease_store.postgres.
//
// # Schema
//
// Everything lives in one schema (Config.Schema, default "credbroker",
// always quoted): a leases table with typed columns (state as text, times
// as timestamptz, the revocation statements as text[]) indexed on
// (state, expire_time), on owner, on (role, id), on the due leases
// (next_action), on the CREATING ones by claim deadline, and uniquely on
// (owner, request_id); a deregistrations table; and schema_version, one
// row per applied migration. The id column is COLLATE "C" (version 3), so
// that ID order, After and IDPrefix compare bytes as Go does, whatever the
// database's default collation. PostgreSQL
// keeps microseconds: the nanoseconds below them are kept in a smallint
// column next to each time, so a lease comes back exactly as it was put
// (Lease.Normalized), as every store must.
//
// # Versions
//
// SchemaVersion is 3: 1 made the tables, 2 added the request ids, 3 what
// shared stores need (revoking_since, the CREATING and role indexes, the
// "C" ids). Init creates the schema at SchemaVersion (credbroker
// init-store); Open refuses a missing store (lease.ErrStoreMissing: run
// init-store) and a store at another version (ErrSchemaOlder: run `credbroker migrate`;
// ErrSchemaNewer: upgrade the broker), and never migrates by itself.
// Migrate applies the missing migrations in order, in one transaction,
// serialized between replicas by an advisory lock.
//
// # Replicas and migrations
//
// Open is one replica's store. Replicas coordinate through the row
// versions and claims below, never through a lock, so a store takes no
// lock for its writes and any number may be open on one schema.
//
// Each open store holds one lock only, the serving lock, in SHARED mode:
// pg_try_advisory_lock_shared with two keys (a constant, and a hash of the
// schema name), on a connection of its own, for the store's life (Close
// unlocks it; the server frees it when the connection ends, on a crash or
// kill -9). Migrate takes it exclusively for its transaction, so it
// refuses to change the tables while any broker serves them ("stop every
// broker on it before migrating"), and Open refuses to start a broker
// while a migration runs. The lock fences nothing: a store whose lock
// connection died goes on working (only that protection of Migrate is
// lost). Init of a current store is harmless and allowed at any time.
//
// # Durability and errors
//
// Every write is one statement (PutAll and ClaimDue: one transaction)
// committed when it returns nil. The conditional writes of issuance
// (Create, PutIfVersion) of concurrent callers share one commit
// (groupcommit.go): one pipeline, run as one implicit transaction, each
// statement a conflict-free conditional write, so that a credential costs
// the store two shared commits instead of two of its own. Errors wrap lease.ErrStoreUnavailable; a row that does not
// decode (an unknown state, a NULL statement) lease.ErrStoreCorrupt too;
// tables that vanished under a running store lease.ErrStoreMissing. The
// password is set on the parsed connection config, never in a connection
// string, and scrubbed from any error text that would hold it.
//
// # Claims and fencing
//
// With several replicas on one store, each due lease must be revoked by
// one replica at a time, a dead replica's work must move to another within
// a bound, and a replica cut off from the store must never act on what it
// can no longer confirm: a lease renewed through a healthy replica is never
// revoked by a partitioned one. The store's side of lease.SharedStore (the
// Shared manager, being written, drives it):
//
//   - Every row has a version, bumped by every write: Put, PutAll, Create,
//     PutIfVersion and each claim. Put and Delete stay unconditional, as
//     lease.Store requires (Put also ends any claim: a renewed lease is no
//     longer due).
//   - Create inserts a CREATING lease claimed by the store's replica
//     (Config.Replica, in claimed_by) until now() + hold: the issuing
//     replica has that long to create the user and write ACTIVE. A taken
//     ID is lease.ErrExists, a taken (owner, request id)
//     lease.ErrRequestExists (the unique index leases_request decides, so
//     two replicas issuing for one request cannot both succeed).
//   - ClaimDue claims a batch of leases that need a replica and whose claim
//     is absent or lapsed: CREATING ones first (an issuance whose replica
//     died or stalled past its hold), then REVOKING ones, then ACTIVE ones
//     expiring within a lookahead, the most overdue first. Two locking
//     selects, one per partial index (leases_creating, leases_due), with
//     FOR UPDATE SKIP LOCKED so that concurrent claimers take disjoint
//     rows, joined under the batch's LIMIT; one UPDATE sets
//     claimed_by, claim_deadline = now() + ttl and version + 1. It returns
//     the database's now() (Claimed.Now), read in the same transaction, so
//     that the claimer times the revocations on the store's clock. Every
//     time involved is the database's now(): replicas' clocks play no part
//     in who may claim what. On 100k leases the plan reads the rows it
//     claims and, of the due ones, those still claimed, nothing else
//     (TestPlansUseIndexes checks and logs it).
//   - The claimer acts only through PutIfVersion and DeleteIfVersion with
//     the version its claim returned; each checks the version in the same
//     statement as the write and fails with lease.ErrConflict (ErrFenced
//     is the same error) if the row changed. PutIfVersion's hold either
//     keeps the row claimed by the replica until now() + hold (a
//     revocation in progress, a failed one's backoff) or, with 0, ends any
//     claim. A revocation therefore writes REVOKING with PutIfVersion
//     before it drops the user: if that is fenced, it drops nothing.
//   - A renew reads with GetVersion and writes with PutIfVersion (or Put):
//     it bumps the version, so a replica that claimed the lease before,
//     then stalled or lost the store, is fenced when it comes back. In the
//     other order, once REVOKING is stored a renew read before it is fenced
//     and, reading again, sees REVOKING (not active).
//   - A claim lapses at its deadline: another replica claims the lease,
//     bumping the version, which fences the first. The deadline only
//     decides when work moves; safety rests on the version alone, checked
//     by the database, so no clock skew or pause can make a stale write
//     succeed. The ttl must exceed the lookahead plus a revocation's
//     timeout, or a slow revocation is repeated by another replica (a
//     second DROP of a user, harmless; the slower one is then fenced).
//
// A CREATING row written by Put has no claim: ClaimDue takes it at once.
// Only Create's rows are held (lease.Shared's issuance).
//
// Every write also keeps revoking_since: now() when the row becomes
// REVOKING, kept while it stays REVOKING (retries, claims), NULL
// otherwise, so that Stats.OldestRevoking is the age of the longest
// revocation on the store's clock.
//
// # Deregistrations seen by every replica
//
// Deny and Allow send a NOTIFY on the store's channel in the same statement
// (delivered at commit). WatchDenied LISTENs on a connection of its own and
// calls back on each, within milliseconds (TestWatchDenied measures it),
// and again after every reconnection, since notifications sent while it was
// disconnected are lost: the caller reads the whole list (Denied) each
// time. The broker reloads its denylist on each (broker/replicas.go).
//
// # Singletons
//
// Lead runs a function while its store holds a named leadership, a session
// advisory lock ("cbld" and a hash of the schema and the name) on a
// connection of its own, checked every LeadTiming.Check: among the stores
// on a schema one runs it at a time, and when the leader's session is lost
// its function's context ends (ErrNotLeading) and another store takes over
// within about LeadTiming.Retry plus 2×LeadTiming.Check (TestLead): a new
// leader waits that long before running the function, so that the old one
// has noticed. The broker runs its singletons (the SPIRE registry sweep,
// the reconciler) under it.
//
// # Queries
//
// Query, FindRequest, Owners and Stats answer as lease.Manager's List,
// FindRequest, Owners and Stats do, from the table: Query in ID order
// along the primary key (After, IDPrefix as a key range), leases_role or
// leases_owner; FindRequest on leases_request; Owners sorted in Go. Stats
// is an aggregate over every row (no count is kept): for metrics, not per
// request.
//
// # Abilities
//
// Store is a lease.SharedStore and a lease.BulkPutter (COPY into a
// temporary table, one upsert). It is no lease.Verifier: Open reads no
// lease, so that a replica starts in constant time whatever the store
// holds. It is no lease.SizeHinter: an exact count is a scan of the table,
// and the suite (rightly) wants an exact one.
package pgstore
