// Package pgstore is a lease.Store in PostgreSQL, for several brokers
// sharing one store (issue 10). It passes lease/leasetest on a real
// server with password auth. The broker does not use it yet.
//
// # Schema
//
// Everything lives in one schema (Config.Schema, default "credbroker",
// always quoted): a leases table with typed columns (state as text, times
// as timestamptz, the revocation statements as text[]) indexed on
// (state, expire_time), on owner and on the due leases; a deregistrations
// table; and schema_version, one row per applied migration. PostgreSQL
// keeps microseconds: the nanoseconds below them are kept in a smallint
// column next to each time, so a lease comes back exactly as it was put
// (Lease.Normalized), as every store must.
//
// # Versions
//
// Init creates the schema at SchemaVersion (credbroker init-store); Open
// refuses a missing store (lease.ErrStoreMissing: run init-store) and a
// store at another version (ErrSchemaOlder: run `credbroker migrate`;
// ErrSchemaNewer: upgrade the broker), and never migrates by itself.
// Migrate applies the missing migrations in order, in one transaction,
// serialized between replicas by an advisory lock.
//
// # Durability and errors
//
// Every write is one statement (PutAll: one transaction) committed when it
// returns nil. Errors wrap lease.ErrStoreUnavailable; a row that does not
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
// revoked by a partitioned one. The primitives (not wired into the Manager
// yet):
//
//   - Every row has a version, bumped by every write: Put, PutAll,
//     PutIfVersion and each claim. Put and Delete stay unconditional, as
//     lease.Store requires (Put also ends any claim: a renewed lease is no
//     longer due).
//   - ClaimDue claims a batch of due leases (ACTIVE ones expiring within a
//     lookahead, REVOKING ones at once, the most overdue first) whose claim
//     is absent or lapsed, with FOR UPDATE SKIP LOCKED so that concurrent
//     claimers take disjoint rows, and sets claimed_by, claim_deadline =
//     now() + ttl and version + 1 in the same statement. Every time
//     involved is the database's now(): replicas' clocks play no part in
//     who may claim what.
//   - The claimer acts only through PutIfVersion and DeleteIfVersion with
//     the version its claim returned; each checks the version in the same
//     statement as the write and fails with ErrFenced if the row changed.
//     A revocation therefore writes REVOKING with PutIfVersion before it
//     drops the user: if that is fenced, it drops nothing.
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
// CREATING records are never claimed: an issuance in flight on a live
// replica looks the same as one whose replica died. Cleaning them up
// (issue 10, within ~10 s) needs an issuance deadline in the row; that is a
// migration to version 2 when the Manager is wired.
//
// # Abilities
//
// Store is a lease.BulkPutter (COPY into a temporary table, one upsert). It
// is no lease.Verifier: Open reads no lease, so that a replica starts in
// constant time whatever the store holds, and Manager.DeferLoad loads
// synchronously. It is no lease.SizeHinter: an exact count is a scan of the
// table, and the suite (rightly) wants an exact one.
package pgstore
