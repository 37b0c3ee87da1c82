package pgstore

import (
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/lease"
)

// leaseCols are the columns a lease is written to and read from, in the
// order of leaseArgs and scanLease.
var leaseCols = []string{
	"id", "state", "owner", "role", "database", "username",
	"issue_time", "issue_time_ns", "expire_time", "expire_time_ns", "max_expire_time", "max_expire_time_ns",
	"revocation_statements", "last_error", "attempts", "expired",
	"request_id", // schema version 2
}

// stateText is how a storable state is written; the other states
// (REVOKED, EXPIRED) are only ever reported, never stored.
func stateText(s lease.State) (string, bool) {
	switch s {
	case lease.StateCreating, lease.StateActive, lease.StateRevoking:
		return s.String(), true
	}
	return "", false
}

func parseState(s string) (lease.State, bool) {
	for _, st := range []lease.State{lease.StateCreating, lease.StateActive, lease.StateRevoking} {
		if s == st.String() {
			return st, true
		}
	}
	return 0, false
}

// splitTime is t as a timestamptz (microseconds; nil for the zero time)
// and the nanoseconds below them.
func splitTime(t time.Time) (*time.Time, int16) {
	t = lease.UTC(t)
	if t.IsZero() {
		return nil, 0
	}
	us := t.Truncate(time.Microsecond)
	return &us, int16(t.Sub(us))
}

// joinTime is the inverse of splitTime.
func joinTime(t *time.Time, ns int16) (time.Time, error) {
	switch {
	case ns < 0 || ns > 999:
		return time.Time{}, fmt.Errorf("nanoseconds %d out of range", ns)
	case t == nil && ns != 0:
		return time.Time{}, errors.New("nanoseconds without a time")
	case t == nil:
		return time.Time{}, nil
	}
	return t.UTC().Add(time.Duration(ns)), nil
}

// leaseArgs are l's values for leaseCols.
func leaseArgs(l lease.Lease) ([]any, error) {
	if l.ID == "" {
		return nil, fmt.Errorf("empty id: %w", lease.ErrInvalid)
	}
	st, ok := stateText(l.State)
	if !ok {
		return nil, fmt.Errorf("lease %s: state %s is never stored: %w", l.ID, l.State, lease.ErrInvalid)
	}
	it, itns := splitTime(l.IssueTime)
	et, etns := splitTime(l.ExpireTime)
	mt, mtns := splitTime(l.MaxExpireTime)
	stmts := l.RevocationStatements
	if stmts == nil {
		stmts = []string{} // the column is NOT NULL; read back as nil
	}
	return []any{
		l.ID, st, l.Owner, l.Role, l.Database, l.Username,
		it, itns, et, etns, mt, mtns,
		stmts, l.LastError, int32(l.Attempts), l.Expired,
		l.RequestID,
	}, nil
}

// rowValues receives a row of leaseCols.
type rowValues struct {
	id, state, owner, role, database, username string
	it, et, mt                                 *time.Time
	itns, etns, mtns                           int16
	stmts                                      []string
	lastError                                  string
	attempts                                   int32
	expired                                    bool
	requestID                                  string
}

func (r *rowValues) dest() []any {
	return []any{
		&r.id, &r.state, &r.owner, &r.role, &r.database, &r.username,
		&r.it, &r.itns, &r.et, &r.etns, &r.mt, &r.mtns,
		&r.stmts, &r.lastError, &r.attempts, &r.expired,
		&r.requestID,
	}
}

// lease decodes the row, or says why it cannot be trusted.
func (r *rowValues) lease() (lease.Lease, error) {
	l := lease.Lease{
		ID: r.id, Owner: r.owner, Role: r.role, Database: r.database, Username: r.username,
		LastError: r.lastError, Attempts: int(r.attempts), Expired: r.expired,
		RequestID: r.requestID,
	}
	var ok bool
	if l.State, ok = parseState(r.state); !ok {
		return lease.Lease{}, fmt.Errorf("row %q: state %q", r.id, r.state)
	}
	var err error
	if l.IssueTime, err = joinTime(r.it, r.itns); err != nil {
		return lease.Lease{}, fmt.Errorf("row %q: issue time: %w", r.id, err)
	}
	if l.ExpireTime, err = joinTime(r.et, r.etns); err != nil {
		return lease.Lease{}, fmt.Errorf("row %q: expire time: %w", r.id, err)
	}
	if l.MaxExpireTime, err = joinTime(r.mt, r.mtns); err != nil {
		return lease.Lease{}, fmt.Errorf("row %q: max expire time: %w", r.id, err)
	}
	if len(r.stmts) > 0 {
		l.RevocationStatements = r.stmts
	}
	return l, nil
}

// scanLease reads a row of leaseCols followed by extra destinations. A row
// that does not decode (a NULL statement, an unknown state) is an error
// wrapping lease.ErrStoreCorrupt.
func scanLease(row pgx.Row, extra ...any) (lease.Lease, error) {
	var r rowValues
	if err := row.Scan(append(r.dest(), extra...)...); err != nil {
		var argErr pgx.ScanArgError
		if errors.As(err, &argErr) {
			return lease.Lease{}, fmt.Errorf("%w: row does not decode: %w", lease.ErrStoreCorrupt, err)
		}
		return lease.Lease{}, err
	}
	l, err := r.lease()
	if err != nil {
		return lease.Lease{}, fmt.Errorf("%w: %w", lease.ErrStoreCorrupt, err)
	}
	return l, nil
}
