// Package lease keeps track of the database users the broker hands out: one
// Lease per user, its durable record, its expiry and its revocation. It
// knows nothing of gRPC, SQL or SPIFFE; the broker drives it and supplies a
// Backend that talks to the databases.
//
// # States
//
//	state     meaning                                      on restart (Load, DeferLoad)
//	CREATING  intent written, user may or may not exist    drop the user, delete the record
//	ACTIVE    user exists, credential handed out           queued at expiry; overdue ones revoked, rate-limited
//	REVOKING  revocation started or failing; LastError     retried at once, then capped backoff, forever
//	(gone)    user confirmed absent                        —
//
// REVOKED and EXPIRED are never stored: they are the final state reported
// to whoever revoked the lease (EXPIRED when the revocation started because
// the lease reached its expiry).
//
// # Life of a lease
//
// Manager.Issue runs the whole issuance; the broker gives it the lease and
// a CreateFunc that makes the database user:
//
//	Issue     → record CREATING (durable) ┐ at once: create waits for the
//	            create: prepare the user  ┘ record (intent) before the user can exist
//	          → record ACTIVE (durable), queue; only now is the credential handed out
//	          on failure: create said ErrNotCreated → delete the record;
//	                      otherwise → drop, delete (retried as a revocation);
//	                      create made a user without the record → Backend.Drop, logged
//	Renew     → Backend.Extend, record, requeue   never past MaxExpireTime
//	Revoke / expiry
//	          → record REVOKING (durable), Backend.Drop, delete, Config.OnEnd
//
// Config.OnEnd (optional) sees every lease that ended, with its final state
// and whether expiry started the revocation; the broker writes its expiry
// audit records there, and the package knows nothing of audit logs.
//
// The cleanup of a failed issuance runs on a context detached from the
// caller's (bounded by 30 s), so a client that hangs up mid-issue leaves
// nothing behind. Issue owns invariants 1 and 2 below: it is the only way
// to create a lease, so no caller can skip the CREATING record or hand out
// a credential before the ACTIVE one.
//
// # Invariants
//
//  1. Every user the broker may have created has a record (CREATING, ACTIVE
//     or REVOKING) from before its creation until after its drop.
//  2. No credential is handed out before its record is durably ACTIVE.
//  3. A record leaves the store only after Backend.Drop confirmed the user
//     absent.
//  4. Revocation never gives up: a failing one stays REVOKING, visible with
//     its LastError, and is retried with capped exponential backoff.
//  5. Operations on one lease are serialized; concurrent revocations of one
//     lease share one Drop; a revoked lease is never renewed back to life.
//  6. The expiry loop starts at most RevokeRate revocations a second and
//     runs at most RevokeConcurrency at once, so a restart after downtime or
//     a clock jump does not stampede the databases.
//
// # Storage
//
// Store is the persistence seam, free of engine types: the leases (Put,
// Get, Delete, Scan with a Filter by state and owner) and the workloads an
// operator deregistered (Deny, Allow, Denied), every write durable when it
// returns. Implementations live in their own packages and are proven by
// one conformance suite, package leasetest:
//
//	lease/boltstore   the embedded store: one bbolt file, fsync per commit
//	                  shared by concurrent writers (internal/batch)
//	MemStore          in memory, for tests; keeps nothing across restarts
//
// Store errors wrap ErrStoreUnavailable; a store whose data cannot be
// trusted fails with ErrStoreCorrupt, one that must exist and does not with
// ErrStoreMissing, and the broker must not start on either.
//
// Optional abilities of a Store are exported interfaces, which the Manager
// uses when present and does without otherwise, at a documented cost:
//
//	Verifier     checked every record when opened: DeferLoad can refuse a
//	             bad store at once and restore in Run (serve within a
//	             second of a restart with a million leases). Without it
//	             DeferLoad loads synchronously, as Load.
//	SizeHinter   the number of leases: Load sizes its map once. Without it
//	             the map grows through the inserts.
//	BulkPutter   many leases in one transaction (PutAll): imports and
//	             benchmarks. Without it one Put each.
//
// A Store that wraps another (fault injection) forwards them, or the
// Manager takes the other path.
//
// # Lists
//
// Manager.List takes a Query (owner, role, database, states, ID prefix,
// after, limit) and returns leases in ID order, at the cost of what it
// returns: the Manager indexes its leases by origin group (the interned
// role, owner, database and statements they share; one pointer per lease)
// for owner and role, and in a chunked sorted list (about 9 B per lease)
// for pages by ID. Manager.Owners gives the owners with a lease in a
// state. Manager.FindRequest finds the lease of an owner's request id (an
// idempotency key, Lease.RequestID) in a map kept only for leases that have
// one; Issue refuses a second lease for a key with ErrRequestExists. See
// index.go.
//
// # Crash testing
//
// Built with -tags failpoints, the issuance can be killed at
// FailpointAfterIntent, FailpointAfterCreateUser and FailpointAfterActivate,
// the revocation path at FailpointAfterRevoking and FailpointAfterDrop (see
// package internal/failpoint).
package lease
