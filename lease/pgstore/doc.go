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
// # Abilities
//
// Store is a lease.BulkPutter (COPY into a temporary table, one upsert). It
// is no lease.Verifier: Open reads no lease, so that a replica starts in
// constant time whatever the store holds, and Manager.DeferLoad loads
// synchronously. It is no lease.SizeHinter: an exact count is a scan of the
// table, and the suite (rightly) wants an exact one.
package pgstore
