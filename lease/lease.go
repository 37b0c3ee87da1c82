package lease

import (
	"errors"
	"fmt"
	"time"
)

// State is where a lease is in its life. See docs/architecture.md.
type State int

const (
	// StateCreating: the intent is durable, the user may or may not exist.
	StateCreating State = iota + 1
	// StateActive: the user exists and the credential was handed out.
	StateActive
	// StateRevoking: revocation started (or keeps failing); LastError says why.
	StateRevoking
	// StateRevoked is never stored: it is the final state reported to a
	// caller once the user is confirmed absent and the record deleted.
	StateRevoked
	// StateExpired, like StateRevoked, is only reported, for a lease that
	// ended by reaching its expiry.
	StateExpired
)

func (s State) String() string {
	switch s {
	case StateCreating:
		return "CREATING"
	case StateActive:
		return "ACTIVE"
	case StateRevoking:
		return "REVOKING"
	case StateRevoked:
		return "REVOKED"
	case StateExpired:
		return "EXPIRED"
	}
	return "UNKNOWN"
}

// Lease is one database user handed to one workload. Everything needed to
// revoke it is inside it (database, username, revocation statements as they
// were at issue time), so editing or deleting the role never strands it.
type Lease struct {
	ID        string    `json:"id"`
	Role      string    `json:"role"`
	Owner     string    `json:"owner"` // SPIFFE ID of the workload
	Database  string    `json:"database"`
	Username  string    `json:"username"`
	IssueTime time.Time `json:"issue_time"`
	// ExpireTime is when the user is revoked unless renewed.
	ExpireTime time.Time `json:"expire_time"`
	// MaxExpireTime caps every renewal.
	MaxExpireTime time.Time `json:"max_expire_time"`
	State         State     `json:"state"`
	// RevocationStatements snapshot the role's optional statements.
	RevocationStatements []string `json:"revocation_statements,omitempty"`
	// LastError is the scrubbed text of the last failed revocation attempt.
	LastError string `json:"last_error,omitempty"`
	// Attempts counts failed revocation attempts (drives the backoff).
	Attempts int `json:"attempts,omitempty"`
	// Expired records that revocation started because the lease reached its
	// expiry (reported as EXPIRED rather than REVOKED).
	Expired bool `json:"expired,omitempty"`
	// RequestID is the caller's idempotency key (IssueCredentialRequest's
	// request_id), empty if none: at most one lease per Owner and RequestID
	// exists at a time (Manager.FindRequest). Kept so that a retry after a
	// restart still finds the lease.
	RequestID string `json:"request_id,omitempty"`
}

// Limits caps the live (CREATING or ACTIVE) leases an issuance may join:
// those of its role (Role) and those of its role held by its owner
// (Owner). Zero is no cap. A REVOKING lease does not count: its user can
// no longer log in.
type Limits struct{ Role, Owner int }

// Check returns an error wrapping ErrInvalid if a cap is negative.
func (l Limits) Check() error {
	if l.Role < 0 || l.Owner < 0 {
		return fmt.Errorf("limits %+v: want caps of 0 (none) or more: %w", l, ErrInvalid)
	}
	return nil
}

// IsZero reports whether l caps nothing.
func (l Limits) IsZero() bool { return l == Limits{} }

// LimitError is an issuance refused by a cap of Limits. It wraps ErrLimit.
type LimitError struct {
	// Owner is true when the per-owner cap was reached, false for the
	// per-role one.
	Owner bool
	// Max is the cap reached.
	Max int
}

func (e *LimitError) Error() string {
	if e.Owner {
		return fmt.Sprintf("%s: the role's leases of this owner are at their cap of %d", ErrLimit, e.Max)
	}
	return fmt.Sprintf("%s: the role's leases are at their cap of %d", ErrLimit, e.Max)
}

func (e *LimitError) Unwrap() error { return ErrLimit }

// Over returns the cap that n leases of the role, of which own are the
// owner's, would pass with one more, or nil.
func (l Limits) Over(n, own int) error {
	switch {
	case l.Role > 0 && n >= l.Role:
		return &LimitError{Max: l.Role}
	case l.Owner > 0 && own >= l.Owner:
		return &LimitError{Owner: true, Max: l.Owner}
	}
	return nil
}

// Sentinel errors.
var (
	ErrNotFound         = errors.New("lease not found")
	ErrMaxTTLReached    = errors.New("lease cannot be renewed past its max ttl")
	ErrNotActive        = errors.New("lease is not active")
	ErrStoreUnavailable = errors.New("lease store unavailable")
	// ErrStoreCorrupt: the store's data cannot be trusted (unreadable file,
	// undecodable record). The broker must refuse to start rather than
	// forget leases.
	ErrStoreCorrupt = errors.New("lease store corrupt")
	// ErrStoreMissing: a store that must exist (boltstore.WithMustExist)
	// does not. A store that vanished is lost leases, never "no leases".
	ErrStoreMissing = errors.New("lease store does not exist")
	// ErrStoreFenced: this process may no longer write the store (a store
	// with a single-writer lock that it lost; none of this repository's
	// stores has one since lease/pgstore became shared): another broker may
	// hold it and own the leases. Errors that wrap it also wrap
	// ErrStoreUnavailable. The Manager then acts on no lease: a revocation
	// drops no user, as the lease may have been renewed through the other.
	ErrStoreFenced = errors.New("lease store held by another writer")
	// ErrExists: Issue was given an ID that is already known.
	ErrExists = errors.New("lease already exists")
	// ErrRequestExists: Issue was given a lease whose Owner and RequestID
	// another lease already has. Errors that wrap it also wrap ErrExists.
	ErrRequestExists = fmt.Errorf("%w for this request id", ErrExists)
	// ErrLimit: an issuance would pass a cap on live leases (Limits).
	// Errors that wrap it are a *LimitError, which says which cap.
	ErrLimit = errors.New("live lease limit reached")
	// ErrWrongState: the operation does not apply to the lease's current
	// state (Revoke on a lease that is still CREATING: its Issue cleans it
	// up).
	ErrWrongState = errors.New("lease is in the wrong state for this operation")
	// ErrInvalid: the lease or argument given is malformed.
	ErrInvalid = errors.New("invalid lease")
	// ErrNotCreated marks an error of Issue's create function after which
	// the caller knows no user exists (the database rolled the creation
	// back, or dropped what it had made): Issue then deletes the CREATING
	// record without a drop. Any other create error may hide a user, and
	// Issue drops it. Mark an error with errors.Join or, to keep its message,
	// a type whose Unwrap() []error returns it and ErrNotCreated.
	ErrNotCreated = errors.New("user not created")
)

// clone returns a copy of l that shares no memory with it.
func (l Lease) clone() Lease {
	if l.RevocationStatements != nil {
		l.RevocationStatements = append([]string(nil), l.RevocationStatements...)
	}
	return l
}

// Normalized returns l with every time in UTC and without a monotonic
// reading: how the Manager holds leases, and how a Store must give back
// what it was given.
func (l Lease) Normalized() Lease {
	l.IssueTime = UTC(l.IssueTime)
	l.ExpireTime = UTC(l.ExpireTime)
	l.MaxExpireTime = UTC(l.MaxExpireTime)
	return l
}

// normalizeTimes is Lease.Normalized.
func normalizeTimes(l Lease) Lease { return l.Normalized() }

// UTC is t in UTC without a monotonic reading; the zero time stays zero.
func UTC(t time.Time) time.Time {
	if t.IsZero() {
		return time.Time{}
	}
	return t.Round(0).UTC()
}
