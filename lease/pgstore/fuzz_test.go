package pgstore

import (
	"reflect"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// rowOf is what the database gives back for leaseArgs(l): the same values
// in rowValues, with timestamptz in microseconds (splitTime already cut
// them there) and text[] read back as given.
func rowOf(t *testing.T, args []any) *rowValues {
	t.Helper()
	var r rowValues
	dest := r.dest()
	if len(args) != len(dest) || len(leaseCols) != len(dest) {
		t.Fatalf("%d args, %d destinations, %d columns", len(args), len(dest), len(leaseCols))
	}
	for i, a := range args {
		switch d := dest[i].(type) {
		case *string:
			*d = a.(string)
		case **time.Time:
			*d = a.(*time.Time)
		case *int16:
			*d = a.(int16)
		case *[]string:
			*d = a.([]string)
		case *int32:
			*d = a.(int32)
		case *bool:
			*d = a.(bool)
		default:
			t.Fatalf("column %s: destination %T", leaseCols[i], d)
		}
	}
	return &r
}

// FuzzRowCodec: a lease written as a row (leaseArgs) reads back equal
// (rowValues.lease), times to the nanosecond and the request id included;
// no row values make the decoder panic, and a row it accepts encodes back
// to the same values.
func FuzzRowCodec(f *testing.F) {
	f.Add("0123456789abcdef0123456789abcdef", "spiffe://example.org/app", "ACTIVE", int64(1767225600), int64(123456789), int64(3600), int16(0), "DROP ROLE {{name}}", "", int32(0), false, "req-1")
	f.Add("0123456789abcdef0123456789abcdef", "o", "REVOKING", int64(0), int64(0), int64(1), int16(999), "", "drop: refused", int32(3), true, "")
	f.Add("x", "", "REVOKED", int64(-1), int64(1), int64(-1), int16(-1), "a", "b", int32(-1), false, "\x00")
	f.Fuzz(func(t *testing.T, id, owner, state string, sec, nsec, ttl int64, ns int16, stmt, lastErr string, attempts int32, expired bool, requestID string) {
		// Arbitrary row values: never a panic; accepted rows re-encode.
		it := time.Unix(sec, nsec%1e9).UTC()
		r := rowValues{id: id, state: state, owner: owner, role: "r", database: "d", username: "u",
			it: &it, itns: ns, et: nil, etns: ns, mt: &it, mtns: 0,
			stmts: []string{stmt}, lastError: lastErr, attempts: attempts, expired: expired, requestID: requestID}
		if l, err := r.lease(); err == nil {
			args, err := leaseArgs(l)
			if err != nil && id != "" {
				t.Fatalf("an accepted row does not encode: %v", err)
			}
			if err == nil {
				back, err := rowOf(t, args).lease()
				if err != nil || !reflect.DeepEqual(back, l) {
					t.Fatalf("row → lease → row → lease: %+v, %v; want %+v", back, err, l)
				}
			}
		}

		// A lease of a storable state round-trips exactly.
		if id == "" || sec < -62135596800 || sec > 253402300799-2*ttl || ttl < 0 || ttl > 1e9 || nsec < 0 || nsec >= 1e9 {
			return
		}
		issue := time.Unix(sec, nsec).In(time.FixedZone("X", -7200))
		l := lease.Lease{
			ID: id, Role: "readonly", Owner: owner, Database: "pg1", Username: "cb_x",
			IssueTime: issue, ExpireTime: issue.Add(time.Duration(ttl) * time.Second), MaxExpireTime: issue.Add(time.Duration(2*ttl) * time.Second),
			State: lease.StateActive, LastError: lastErr, Attempts: int(attempts), Expired: expired, RequestID: requestID,
		}
		if stmt != "" {
			l.RevocationStatements = []string{stmt}
		}
		args, err := leaseArgs(l)
		if err != nil {
			t.Fatal(err)
		}
		got, err := rowOf(t, args).lease()
		if err != nil {
			t.Fatalf("lease → row → lease: %v", err)
		}
		if want := l.Normalized(); !reflect.DeepEqual(got, want) {
			t.Fatalf("lease → row → lease:\n got %+v\nwant %+v", got, want)
		}
	})
}
