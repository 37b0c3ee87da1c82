package boltstore

import (
	"reflect"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// canonical is l as a store gives it back: times normalized, no empty
// statement list (read back as nil).
func canonical(l lease.Lease) lease.Lease {
	l = l.Normalized()
	if len(l.RevocationStatements) == 0 {
		l.RevocationStatements = nil
	}
	return l
}

// Unix seconds of years 1 and 9999: the times a lease can hold.
const minSec, maxSec = -62135596800, 253402300799

// FuzzCodecRoundTrip: decode(encode(x)) == x for any lease, with or without
// a request id (codecV3 or codecV2), and checkRecord agrees.
func FuzzCodecRoundTrip(f *testing.F) {
	f.Add("0123456789abcdef0123456789abcdef", "readonly", "spiffe://example.org/app", "pg1", "cb_readonly_x", int64(1767225600), int64(123456789), int64(3600), 2, "DROP ROLE {{name}}", "", 0, false, "")
	f.Add("0123456789abcdef0123456789abcdef", "r", "o", "d", "u", int64(0), int64(0), int64(0), 3, "", "drop: refused", 7, true, "req-1")
	f.Add("0123456789abcdef0123456789abcdef", "", "", "", "", int64(minSec), int64(999999999), int64(-1), -1, "a\x00b", "\xff", -5, false, "\x00")
	f.Fuzz(func(t *testing.T, id, role, owner, database, username string, sec, nsec, ttl int64, state int, stmt, lastErr string, attempts int, expired bool, requestID string) {
		if sec < minSec || sec > maxSec || nsec < 0 || nsec >= 1e9 || ttl < -1e9 || ttl > 1e9 || sec+ttl < minSec || sec+2*ttl > maxSec || sec+2*ttl < minSec {
			return
		}
		issue := time.Unix(sec, nsec).In(time.FixedZone("X", 3600))
		l := lease.Lease{
			ID: id, Role: role, Owner: owner, Database: database, Username: username,
			IssueTime: issue, ExpireTime: issue.Add(time.Duration(ttl) * time.Second), MaxExpireTime: issue.Add(time.Duration(2*ttl) * time.Second),
			State: lease.State(state), LastError: lastErr, Attempts: attempts, Expired: expired, RequestID: requestID,
		}
		if stmt != "" {
			l.RevocationStatements = []string{stmt, stmt + "2"}
		}
		if sec == 0 {
			l.IssueTime = time.Time{} // the zero time round-trips as zero
		}
		b, err := encodeLease(l)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decodeLease([]byte(id), b)
		if err != nil {
			t.Fatalf("decode(encode(%+v)): %v", l, err)
		}
		if want := canonical(l); !reflect.DeepEqual(got, want) {
			t.Fatalf("decode(encode(x)):\n got %+v\nwant %+v", got, want)
		}
		if (requestID != "") != (b[0] == codecV3) {
			t.Fatalf("request id %q written with codec %d", requestID, b[0])
		}
		validState := l.State == lease.StateCreating || l.State == lease.StateActive || l.State == lease.StateRevoking
		if err := checkRecord([]byte(id), b); (err == nil) != (validState && lease.ValidID(id)) {
			t.Fatalf("checkRecord of a sound record (state %d, id %q): %v", state, id, err)
		}
	})
}

// FuzzDecode: no bytes make the decoder panic; what decodes re-encodes to
// a record that decodes equal (the interning decoder too), and a record
// checkRecord passes decodes.
func FuzzDecode(f *testing.F) {
	sound := lease.Lease{ID: "0123456789abcdef0123456789abcdef", Role: "r", Owner: "o", Database: "d", Username: "u",
		IssueTime: time.Unix(1767225600, 5), ExpireTime: time.Unix(1767229200, 5), MaxExpireTime: time.Unix(1767232800, 5),
		State: lease.StateActive, RevocationStatements: []string{"DROP ROLE {{name}}"}}
	for _, rid := range []string{"", "req-1"} {
		sound.RequestID = rid
		b, err := encodeLease(sound)
		if err != nil {
			f.Fatal(err)
		}
		f.Add([]byte(sound.ID), b)
	}
	f.Add([]byte(sound.ID), []byte(`{"id":"x","state":2,"revocation_statements":[],"issue_time":"2026-01-01T00:00:00+01:00"}`))
	f.Add([]byte(sound.ID), append([]byte{codecV1}, `{"id":"0123456789abcdef0123456789abcdef","state":1,"request_id":"r"}`...))
	f.Add([]byte("k"), []byte{codecV3, 0, 0, 0, 0, 0, 0x80, 0x94, 0xeb, 0xdc, 0x03})
	f.Add([]byte("k"), []byte{codecV2, 9, 'x'})
	f.Fuzz(func(t *testing.T, key, b []byte) {
		l, err := decodeLease(key, b)
		cerr := checkRecord(key, b)
		if cerr == nil && err != nil {
			t.Fatalf("checkRecord passes a record that does not decode: %v", err)
		}
		if err != nil {
			return
		}
		interned, err := decodeLeaseWith(key, b, newInterner())
		if err != nil || !reflect.DeepEqual(interned, l) {
			t.Fatalf("interning decoder: %+v, %v; want %+v", interned, err, l)
		}
		for _, tm := range []time.Time{l.IssueTime, l.ExpireTime, l.MaxExpireTime} {
			if !tm.IsZero() && (tm.Year() < 1 || tm.Year() > 9999) {
				return // beyond what a lease holds: only decoding must not panic
			}
		}
		re, err := encodeLease(l)
		if err != nil {
			t.Fatal(err)
		}
		again, err := decodeLease([]byte(l.ID), re)
		if err != nil {
			t.Fatalf("re-encoded record does not decode: %v", err)
		}
		if want := canonical(l); !reflect.DeepEqual(again, want) {
			t.Fatalf("decode(encode(decode(b))):\n got %+v\nwant %+v", again, want)
		}
	})
}
