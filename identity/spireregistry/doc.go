// Package spireregistry follows the registration entries of a SPIRE server,
// so that the broker can revoke the leases of a workload whose identity has
// been removed.
//
// A [Watcher] lists every entry through the SPIRE server API (entry/v1
// ListEntries, all pages) over mTLS, presenting the broker's own X.509-SVID,
// which must come from an admin entry, and accepting only the server's SVID.
// Each complete listing becomes a [Snapshot]: the set of SPIFFE IDs that some
// entry yields, with the creation time of the newest such entry.
//
// # Fail-safe
//
// Only a complete, successful listing says anything about registrations. A
// server that cannot be reached, refuses the broker, times out, fails on the
// third page of ten, or returns an entry that cannot be parsed produces no
// snapshot at all, never a partial one: revoking on a partial listing would
// turn an outage into a mass deregistration. Errors are recorded in
// [Watcher.Status] for health reporting and logged, rate-limited, by
// [Watcher.Run]; the previous snapshot stays the latest word until a listing
// succeeds again.
//
// Pagination follows SPIRE's cursor, which orders entries by ID: an entry
// that exists for the whole listing always appears in it. One created or
// deleted during the listing may or may not, and the next poll settles it.
//
// Entries are mirrored as SPIRE stores them. An entry past its expires_at
// still counts until SPIRE prunes it (every few minutes), as SPIRE decides
// when an entry is gone; entries outside the broker's trust domain are kept,
// for the broker to judge.
package spireregistry
