package boltstore

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// Every stored value starts with its encoding's version byte, so that the
// encoding can change without guessing what a record is.
const (
	// codecV1 is JSON. Still read; no longer written.
	codecV1 byte = 1
	// codecV2 is the binary form below, written since issue 5: decoding
	// JSON was 60% of a broker's start with a million leases.
	codecV2 byte = 2
	// codecV3 is codecV2 followed by the request id (a string), written
	// only for a lease that has one, so that a store whose leases have none
	// stays readable by a broker from before request ids.
	codecV3 byte = 3
)

// knownCodec reports whether b is a version byte decodeLease reads.
func knownCodec(b byte) bool { return b == codecV1 || b == codecV2 || b == codecV3 }

// encodeLease serializes l for a Store, which keeps it under the key l.ID.
// Times are stored in UTC with their nanoseconds and without monotonic
// readings, so decodeLease(l.ID, encodeLease(l)) equals l field for field
// when l's times are UTC.
//
// Layout (codecV2), varints as in encoding/binary; the ID is the record's
// key and is not repeated:
//
//	version byte
//	Role, Owner, Database, Username         uvarint length + bytes each
//	IssueTime, ExpireTime, MaxExpireTime    varint Unix seconds + uvarint nanoseconds
//	                                        (the zero time: 0 and 1e9, see putTime)
//	State                                   uvarint
//	RevocationStatements                    uvarint count, then each as a string
//	LastError                               string
//	Attempts                                varint
//	Expired                                 one byte, 0 or 1
//	RequestID                               string (codecV3 only)
func encodeLease(l lease.Lease) ([]byte, error) {
	l = normalizeTimes(l)
	n := 1 + 3*(2*binary.MaxVarintLen64) + 3*binary.MaxVarintLen64 + 1
	for _, s := range [...]string{l.ID, l.Role, l.Owner, l.Database, l.Username, l.LastError, l.RequestID} {
		n += binary.MaxVarintLen64 + len(s)
	}
	for _, s := range l.RevocationStatements {
		n += binary.MaxVarintLen64 + len(s)
	}
	b := make([]byte, 0, n)
	if l.RequestID != "" {
		b = append(b, codecV3)
	} else {
		b = append(b, codecV2)
	}
	for _, s := range [...]string{l.Role, l.Owner, l.Database, l.Username} {
		b = putString(b, s)
	}
	for _, t := range [...]time.Time{l.IssueTime, l.ExpireTime, l.MaxExpireTime} {
		b = putTime(b, t)
	}
	b = binary.AppendUvarint(b, uint64(l.State))
	b = binary.AppendUvarint(b, uint64(len(l.RevocationStatements)))
	for _, s := range l.RevocationStatements {
		b = putString(b, s)
	}
	b = putString(b, l.LastError)
	b = binary.AppendVarint(b, int64(l.Attempts))
	if l.Expired {
		b = append(b, 1)
	} else {
		b = append(b, 0)
	}
	if l.RequestID != "" {
		b = putString(b, l.RequestID)
	}
	return b, nil
}

func putString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// putTime writes t's Unix seconds and nanoseconds. The zero time is written
// with an out-of-range nanosecond count (1e9), so it comes back as the zero
// time rather than as 0001-01-01 in UTC.
func putTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		b = binary.AppendVarint(b, 0)
		return binary.AppendUvarint(b, 1e9)
	}
	b = binary.AppendVarint(b, t.Unix())
	return binary.AppendUvarint(b, uint64(t.Nanosecond()))
}

// decodeLease is the inverse of encodeLease, for either version: b is the
// record stored under key.
func decodeLease(key, b []byte) (lease.Lease, error) {
	return decodeLeaseWith(key, b, nil)
}

// decodeLeaseWith is decodeLease where in, if not nil, turns the strings
// that many leases share (role, owner, database, revocation statements)
// into one string each, so a store of a million leases does not hold a
// million copies of them.
func decodeLeaseWith(key, b []byte, in *interner) (lease.Lease, error) {
	if len(b) == 0 {
		return lease.Lease{}, errors.New("boltstore: decode: empty record")
	}
	switch b[0] {
	case codecV1:
		var l lease.Lease
		if err := json.Unmarshal(b[1:], &l); err != nil {
			return lease.Lease{}, fmt.Errorf("boltstore: decode: %w", err)
		}
		return l, nil
	case codecV2, codecV3:
	default:
		return lease.Lease{}, fmt.Errorf("boltstore: decode: unknown record version %d", b[0])
	}
	d := decoder{b: b[1:]}
	var l lease.Lease
	l.ID = string(key)
	l.Role = in.get(fieldRole, d.raw())
	l.Owner = in.get(fieldOwner, d.raw())
	l.Database = in.get(fieldDatabase, d.raw())
	l.Username = string(d.raw())
	l.IssueTime = d.time()
	l.ExpireTime = d.time()
	l.MaxExpireTime = d.time()
	l.State = lease.State(d.uvarint())
	if n := d.uvarint(); n > 0 {
		if n > uint64(len(d.b)) { // each statement takes at least a byte
			return lease.Lease{}, errors.New("boltstore: decode: bad statement count")
		}
		l.RevocationStatements = make([]string, n)
		for i := range l.RevocationStatements {
			l.RevocationStatements[i] = in.get(fieldStatement, d.raw())
		}
	}
	l.LastError = string(d.raw())
	l.Attempts = int(d.varint())
	l.Expired = d.byte() == 1
	if b[0] == codecV3 {
		if l.RequestID = string(d.raw()); l.RequestID == "" && d.err == nil {
			return lease.Lease{}, errors.New("boltstore: decode: empty request id in a version 3 record")
		}
	}
	switch {
	case d.err != nil:
		return lease.Lease{}, fmt.Errorf("boltstore: decode: %w", d.err)
	case len(d.b) != 0:
		return lease.Lease{}, fmt.Errorf("boltstore: decode: %d trailing bytes", len(d.b))
	}
	return l, nil
}

// checkRecord reports whether the record v stored under key k would load:
// it decodes, holds the lease with ID k, and that ID and the state are
// valid. It allocates nothing for codecV2, so opening a store can check
// every record before anything is served.
func checkRecord(k, v []byte) error {
	if len(v) > 0 && (v[0] == codecV2 || v[0] == codecV3) {
		d := decoder{b: v[1:]}
		for range 4 { // role, owner, database, username
			d.raw()
		}
		for range 3 {
			d.time()
		}
		state := lease.State(d.uvarint())
		for n := d.uvarint(); n > 0 && d.err == nil; n-- {
			d.raw()
		}
		d.raw()
		d.varint()
		d.byte()
		emptyRequestID := false
		if v[0] == codecV3 {
			emptyRequestID = len(d.raw()) == 0
		}
		switch {
		case d.err != nil:
			return fmt.Errorf("boltstore: decode: %w", d.err)
		case len(d.b) != 0:
			return fmt.Errorf("boltstore: decode: %d trailing bytes", len(d.b))
		case !lease.ValidID(string(k)):
			return fmt.Errorf("key %q is not a lease id", k)
		case state != lease.StateCreating && state != lease.StateActive && state != lease.StateRevoking:
			return fmt.Errorf("stored state %s", state)
		case emptyRequestID:
			return errors.New("boltstore: decode: empty request id in a version 3 record")
		}
		return nil
	}
	l, err := decodeLease(k, v)
	switch {
	case err != nil:
		return err
	case l.ID != string(k) || !lease.ValidID(l.ID):
		return fmt.Errorf("holds lease %q", l.ID)
	case l.State != lease.StateCreating && l.State != lease.StateActive && l.State != lease.StateRevoking:
		return fmt.Errorf("stored state %s", l.State)
	}
	return nil
}

// interner shares the strings that repeat across the leases of one scan.
// Each field remembers its last value, which consecutive leases mostly
// share (their role, their database), before the table is consulted.
type interner struct {
	shared map[string]string
	last   [4]string // by field
}

const (
	fieldRole = iota
	fieldOwner
	fieldDatabase
	fieldStatement
)

// maxInterned bounds the table: distinct roles, owners and databases are
// few, and a store of unusual leases must not make it grow without bound.
const maxInterned = 1 << 16

func newInterner() *interner { return &interner{shared: map[string]string{}} }

// get returns b as a string, shared if possible. A nil interner copies.
func (in *interner) get(field int, b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if in == nil {
		return string(b)
	}
	if string(b) == in.last[field] {
		return in.last[field]
	}
	s, ok := in.shared[string(b)]
	if !ok {
		s = string(b)
		if len(in.shared) < maxInterned {
			in.shared[s] = s
		}
	}
	in.last[field] = s
	return s
}

// decoder reads codecV2 fields; the first error sticks and later reads
// return zero values.
type decoder struct {
	b   []byte
	err error
}

var errShort = errors.New("record too short")

func (d *decoder) uvarint() uint64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	if d.err != nil {
		return 0
	}
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.err = errShort
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) byte() byte {
	if d.err != nil || len(d.b) == 0 {
		d.err = errShort
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

// raw returns the bytes of a string field, without copying them.
func (d *decoder) raw() []byte {
	n := d.uvarint()
	if d.err != nil {
		return nil
	}
	if n > uint64(len(d.b)) {
		d.err = errShort
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) time() time.Time {
	sec := d.varint()
	nsec := d.uvarint()
	switch {
	case d.err != nil:
		return time.Time{}
	case nsec == 1e9 && sec == 0:
		return time.Time{}
	case nsec >= 1e9:
		d.err = errors.New("bad nanoseconds")
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}

// decodeTime reads a deregistration time: a version byte (codecV2), then
// the time as putTime writes it.
func decodeTime(b []byte) (time.Time, error) {
	if len(b) == 0 || b[0] != codecV2 {
		return time.Time{}, errors.New("boltstore: decode: unknown time encoding")
	}
	d := decoder{b: b[1:]}
	t := d.time()
	switch {
	case d.err != nil:
		return time.Time{}, fmt.Errorf("boltstore: decode: %w", d.err)
	case len(d.b) != 0:
		return time.Time{}, fmt.Errorf("boltstore: decode: %d trailing bytes", len(d.b))
	}
	return t, nil
}

// normalizeTimes and utc are the lease package's (decodeLease must give
// back what was put).
func normalizeTimes(l lease.Lease) lease.Lease { return l.Normalized() }

func utc(t time.Time) time.Time { return lease.UTC(t) }
