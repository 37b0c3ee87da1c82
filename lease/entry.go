package lease

import (
	"context"
	"encoding/binary"
	"sync/atomic"
	"time"
	"unique"
)

// entry is one lease in memory. A broker may hold millions of them, so the
// lease is kept packed (docs/performance.md §4): times as int64 nanoseconds,
// the fields that many leases share behind one interned handle, and the
// entry itself is the expiry queue's item. Manager methods build the public
// Lease on demand (lease) and store one back with set.
type entry struct {
	// op is the lease lock: whoever holds it may change the lease, and
	// holds it across the I/O. A channel of capacity 1, so acquiring it can
	// honour ctx; made on first use, because most of a million restored
	// leases are never locked before they expire (see opc).
	op atomic.Pointer[chan struct{}]

	// id never changes. The rest of the lease is read with mu or op held
	// and written with both held (set).
	id       string
	username string
	origin   unique.Handle[origin]
	// issue, expire and maxExpire are the lease's times in Unix
	// nanoseconds (packTime).
	issue, expire, maxExpire int64
	// full is the whole lease when it does not pack (see set); the packed
	// fields are then unused, except id, origin and state. Few leases need
	// it.
	full *Lease

	flight *flight // revocation being run, joined by later callers; guarded by mu

	// The expiry queue's part, guarded by mu: when the lease is next due
	// (Unix nanoseconds) and its position in the heap (-1: not queued).
	due   int64
	index int32
	// gpos is the entry's position in its origin group (index.go),
	// guarded by mu.
	gpos int32

	st      uint8 // the State, always current, even with full set
	expired bool  // packed Lease.Expired
	stored  bool  // begin's Put succeeded; invisible before
	gone    bool  // deleted from the map: the user is absent
}

// origin is what the leases of one role and workload have in common. It is
// interned with unique.Make: a million leases issued to a few roles and
// workloads share a few copies, which are collected once no lease uses them.
type origin struct {
	role, owner, database string
	statements            string // the revocation statements, packStatements
}

// flight is one revocation attempt that concurrent Revoke calls and the
// expiry loop share, so exactly one Drop runs for all of them.
type flight struct {
	done  chan struct{}
	lease Lease // valid after done is closed
	err   error
}

// newEntry returns an entry holding l, whose times must be normalized.
func newEntry(l Lease) *entry {
	e := &entry{id: l.ID, index: -1}
	e.set(l)
	return e
}

// set replaces the lease e holds with l, which has e's ID and normalized
// times. A lease packs unless it carries the outcome of failed revocation
// attempts (LastError, Attempts: a few REVOKING leases), a request id (so
// that leases issued without one, the common case, pay nothing for it) or
// a time an int64
// of nanoseconds cannot hold (before 1678 or after 2262); such a lease is
// kept whole, so every lease reads back exactly as it was set.
//
// The origin is kept either way: the Manager's index (index.go) groups
// entries by it, so the Manager never sets a lease of another origin (it
// only updates the one an entry holds).
func (e *entry) set(l Lease) {
	e.st = uint8(l.State)
	o := unique.Make(origin{
		role:       l.Role,
		owner:      l.Owner,
		database:   l.Database,
		statements: packStatements(l.RevocationStatements),
	})
	e.origin = o
	issue, ok1 := packTime(l.IssueTime)
	expire, ok2 := packTime(l.ExpireTime)
	maxExpire, ok3 := packTime(l.MaxExpireTime)
	if !ok1 || !ok2 || !ok3 || l.LastError != "" || l.Attempts != 0 || l.RequestID != "" {
		full := l.clone()
		e.full = &full
		e.username = ""
		return
	}
	e.full = nil
	e.username = l.Username
	e.issue, e.expire, e.maxExpire = issue, expire, maxExpire
	e.expired = l.Expired
}

// lease returns a copy of the lease e holds, sharing no mutable memory
// with it.
func (e *entry) lease() Lease {
	if e.full != nil {
		return e.full.clone()
	}
	o := e.origin.Value()
	return Lease{
		ID:                   e.id,
		Role:                 o.role,
		Owner:                o.owner,
		Database:             o.database,
		Username:             e.username,
		IssueTime:            unpackTime(e.issue),
		ExpireTime:           unpackTime(e.expire),
		MaxExpireTime:        unpackTime(e.maxExpire),
		State:                e.state(),
		RevocationStatements: unpackStatements(o.statements),
		Expired:              e.expired,
	}
}

// zeroTime is how packTime stores the zero time.Time: its own Unix
// nanoseconds are out of range.
const zeroTime = -1 << 63

// packTime returns t (UTC, no monotonic reading) as Unix nanoseconds, and
// false if that would not give t back exactly.
func packTime(t time.Time) (int64, bool) {
	if t.IsZero() {
		return zeroTime, true
	}
	n := t.UnixNano() // undefined out of range: checked below
	return n, n != zeroTime && time.Unix(0, n).Equal(t)
}

func unpackTime(n int64) time.Time {
	if n == zeroTime {
		return time.Time{}
	}
	return time.Unix(0, n).UTC()
}

// packStatements turns statements into one comparable string (origin must
// be), each statement preceded by its length in four bytes, so that any
// statement round-trips. None, nil or empty, packs as "" and reads back as
// nil, as Lease.clone and decodeLease return them.
func packStatements(ss []string) string {
	if len(ss) == 0 {
		return ""
	}
	var b []byte
	for _, s := range ss {
		b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
		b = append(b, s...)
	}
	return string(b)
}

// unpackStatements is the inverse of packStatements. The statements share
// the interned string's memory, which is immutable.
func unpackStatements(p string) []string {
	var out []string
	for len(p) >= 4 {
		n := binary.LittleEndian.Uint32([]byte(p[:4]))
		out = append(out, p[4:4+n])
		p = p[4+n:]
	}
	return out
}

// requestID is the lease's Lease.RequestID: only leases kept whole (set)
// have one.
func (e *entry) requestID() string {
	if e.full == nil {
		return ""
	}
	return e.full.RequestID
}

// state is the lease's State, without unpacking the lease.
func (e *entry) state() State { return State(e.st) }

// opc returns the lock channel, making it if needed.
func (e *entry) opc() chan struct{} {
	if c := e.op.Load(); c != nil {
		return *c
	}
	c := make(chan struct{}, 1)
	if e.op.CompareAndSwap(nil, &c) {
		return c
	}
	return *e.op.Load()
}

func (e *entry) lock(ctx context.Context) error {
	select {
	case e.opc() <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (e *entry) tryLock() bool {
	select {
	case e.opc() <- struct{}{}:
		return true
	default:
		return false
	}
}

func (e *entry) unlock() { <-e.opc() }
