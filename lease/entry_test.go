package lease

import (
	"reflect"
	"testing"
	"time"
	"unsafe"
)

// TestEntryRoundTrip checks that every lease reads back from an entry
// exactly as it was set, whether it packs or is kept whole.
func TestEntryRoundTrip(t *testing.T) {
	base := Lease{
		ID: "0123456789abcdef0123456789abcdef", Role: "ro", Owner: "spiffe://example.org/a",
		Database: "main", Username: "cb_ro_x",
		IssueTime:     time.Date(2026, 2, 3, 4, 5, 6, 789012345, time.UTC),
		ExpireTime:    time.Date(2026, 2, 3, 5, 5, 6, 1, time.UTC),
		MaxExpireTime: time.Date(2026, 2, 4, 4, 5, 6, 0, time.UTC),
		State:         StateActive,
	}
	tests := []struct {
		name   string
		change func(*Lease)
		packs  bool
	}{
		{name: "plain", change: func(*Lease) {}, packs: true},
		{name: "statements", change: func(l *Lease) {
			l.RevocationStatements = []string{`REVOKE ALL ON "x" FROM "{{name}}"`, "", "with\x00nul", "DROP ROLE \"{{name}}\";\n-- ü"}
		}, packs: true},
		{name: "expired revoking", change: func(l *Lease) { l.State, l.Expired = StateRevoking, true }, packs: true},
		{name: "zero times", change: func(l *Lease) { l.IssueTime, l.ExpireTime, l.MaxExpireTime = time.Time{}, time.Time{}, time.Time{} }, packs: true},
		{name: "int64 nanosecond limits", change: func(l *Lease) {
			l.IssueTime = time.Unix(0, -1<<63+1).UTC()
			l.MaxExpireTime = time.Unix(0, 1<<63-1).UTC()
		}, packs: true},
		{name: "after 2262", change: func(l *Lease) { l.MaxExpireTime = time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC) }},
		{name: "before 1678", change: func(l *Lease) { l.IssueTime = time.Date(1000, 1, 1, 0, 0, 0, 1, time.UTC) }},
		{name: "the zero time's own nanoseconds", change: func(l *Lease) { l.IssueTime = time.Unix(0, -1<<63).UTC() }},
		{name: "failed attempts", change: func(l *Lease) {
			l.State, l.LastError, l.Attempts = StateRevoking, "connection refused", 3
			l.RevocationStatements = []string{"DROP ROLE x"}
		}},
		{name: "attempts only", change: func(l *Lease) { l.Attempts = 1 }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := base
			tt.change(&want)
			e := newEntry(want)
			if packed := e.full == nil; packed != tt.packs {
				t.Errorf("packed = %v, want %v", packed, tt.packs)
			}
			if got := e.lease(); !reflect.DeepEqual(got, want) {
				t.Errorf("lease() =\n%#v\nwant\n%#v", got, want)
			}
			// Set over a lease of the other kind, as a failed revocation
			// or a retry that succeeds does.
			other := base
			if tt.packs {
				other.LastError, other.Attempts = "x", 1
			}
			o := newEntry(other)
			o.set(want)
			if got := o.lease(); !reflect.DeepEqual(got, want) {
				t.Errorf("after set over another: lease() =\n%#v\nwant\n%#v", got, want)
			}
			if o.state() != want.State {
				t.Errorf("state = %s, want %s", o.state(), want.State)
			}
		})
	}
}

func TestEntryLeaseIsACopy(t *testing.T) {
	for _, l := range []Lease{
		{ID: "a", RevocationStatements: []string{"one", "two"}},
		{ID: "b", RevocationStatements: []string{"one"}, Attempts: 1}, // kept whole
	} {
		e := newEntry(l)
		got := e.lease()
		got.RevocationStatements[0] = "changed"
		if again := e.lease(); again.RevocationStatements[0] != "one" {
			t.Errorf("%s: changing a returned lease changed the entry: %q", l.ID, again.RevocationStatements)
		}
		l.RevocationStatements[0] = "changed"
		if again := e.lease(); again.RevocationStatements[0] != "one" {
			t.Errorf("%s: changing the set lease changed the entry: %q", l.ID, again.RevocationStatements)
		}
	}
}

// TestEntryShared checks that leases of one role and workload share their
// common part, and that the entry stays small: it is what a broker holds
// per lease (docs/performance.md §4).
func TestEntryShared(t *testing.T) {
	mk := func(id, owner string) *entry {
		return newEntry(Lease{ID: id, Role: "ro", Owner: owner, Database: "main", RevocationStatements: []string{"DROP ROLE x"}})
	}
	a, b, c := mk("a", "w1"), mk("b", "w1"), mk("c", "w2")
	if a.origin != b.origin {
		t.Error("leases of one role and owner do not share their origin")
	}
	if a.origin == c.origin {
		t.Error("leases of different owners share their origin")
	}
	if size := unsafe.Sizeof(entry{}); size > 112 {
		t.Errorf("entry is %d bytes, want at most 112", size)
	}
}
