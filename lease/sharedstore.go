package lease

import (
	"context"
	"errors"
	"time"
)

// ErrConflict: a conditional write (SharedStore.PutIfVersion,
// DeleteIfVersion) found the lease changed, claimed or deleted since the
// version it was given, by another replica or another call. The caller must
// not act on what it read: a revocation whose REVOKING write conflicts drops
// nothing.
var ErrConflict = errors.New("lease changed by another replica")

// SharedStore is a Store that several brokers (replicas) share, such as
// lease/pgstore. The Shared manager runs on it without holding the leases
// in memory: every read is the store's, and due leases are claimed from it
// in batches, each by one replica at a time.
//
// Every row has a version, bumped by every write (Put, Create,
// PutIfVersion) and every claim. Safety rests on the version alone: a
// replica acts on a lease only through PutIfVersion and DeleteIfVersion
// with the version it read or claimed, and the store checks it in the
// same atomic step as the write. Claims only decide who works on what, and
// when work moves: a claim holds until a deadline on the store's clock,
// never a replica's.
//
// Package lease/leasetest's RunShared is its conformance suite.
type SharedStore interface {
	Store

	// Create stores l, which must be CREATING, only if no lease has its ID
	// (an error wrapping ErrExists) and none has its Owner and RequestID
	// (ErrRequestExists), claimed by this store's replica for hold from
	// the store's now: no replica claims it before then. It returns the
	// row's version.
	Create(ctx context.Context, l Lease, hold time.Duration) (int64, error)
	// CreateWithin is Create that also refuses, with a *LimitError (which
	// wraps ErrLimit), a lease that would pass lim: more live (CREATING or
	// ACTIVE) leases of l.Role than lim.Role, or of l.Role and l.Owner
	// than lim.Owner. The count and the write are one atomic step for all
	// replicas: concurrent creators never pass a cap together. With a zero
	// lim it is Create.
	CreateWithin(ctx context.Context, l Lease, hold time.Duration, lim Limits) (int64, error)
	// GetVersion is Get with the row's version.
	GetVersion(ctx context.Context, id string) (Versioned, error)
	// PutIfVersion stores l only if its row is still at version, and
	// returns the new version; otherwise (changed, claimed, deleted) an
	// error wrapping ErrConflict, and nothing is written. hold > 0 leaves
	// the row claimed by this store's replica until the store's now plus
	// hold (so that no other replica claims it meanwhile: a revocation in
	// progress, or a failed one's backoff); hold == 0 ends any claim.
	PutIfVersion(ctx context.Context, l Lease, version int64, hold time.Duration) (int64, error)
	// DeleteIfVersion deletes the lease with id only if its row is still at
	// version; otherwise an error wrapping ErrConflict (an absent row is a
	// conflict too).
	DeleteIfVersion(ctx context.Context, id string, version int64) error
	// ClaimDue claims, atomically and on the store's clock, up to
	// req.Limit leases that need a replica and whose claim is absent or
	// has lapsed: ACTIVE ones whose ExpireTime is within req.Lookahead of
	// the store's now, REVOKING ones, and CREATING ones (an issuance whose
	// replica did not finish within its hold). The most overdue come
	// first (REVOKING and CREATING before ACTIVE). Each claimed row's
	// version is bumped, which fences whoever worked on it before, and it
	// stays claimed by this replica for req.TTL. Concurrent claimers get
	// disjoint sets.
	ClaimDue(ctx context.Context, req ClaimRequest) (Claimed, error)

	// Query returns the leases q selects, in ID order, as Manager.List.
	Query(ctx context.Context, q Query) ([]Lease, error)
	// FindRequest returns the lease owner was issued for requestID, or an
	// error wrapping ErrNotFound.
	FindRequest(ctx context.Context, owner, requestID string) (Lease, error)
	// Owners returns, sorted, the owners with a lease in state s.
	Owners(ctx context.Context, s State) ([]string, error)
	// Stats counts the stored leases by state and by role, and says since
	// when the longest-REVOKING lease has been REVOKING (on the store's
	// clock; zero when none is).
	Stats(ctx context.Context) (Stats, error)
}

// Versioned is a lease with its row version.
type Versioned struct {
	Lease   Lease
	Version int64
}

// ClaimRequest says what SharedStore.ClaimDue claims.
type ClaimRequest struct {
	// Lookahead claims the ACTIVE leases expiring within it, so that the
	// claimer can revoke them on time; 0 claims only those due.
	Lookahead time.Duration
	// Limit bounds the batch; it must be positive.
	Limit int
	// TTL is how long each claim holds; it must be positive. It should
	// exceed Lookahead plus the time to start the revocation (which then
	// extends the hold with its REVOKING write).
	TTL time.Duration
}

// Claimed is the result of a ClaimDue.
type Claimed struct {
	// Now is the store's clock when it claimed, so that the claimer can
	// time the revocations without trusting its own clock's offset.
	Now time.Time
	// Leases are the claimed leases, each with its version after the
	// claim.
	Leases []Versioned
}
