package leasetest

import (
	"maps"
	"reflect"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

func denied(t *testing.T, s lease.Store) map[string]time.Time {
	t.Helper()
	d, err := s.Denied(bg)
	if err != nil {
		t.Fatalf("Denied: %v", err)
	}
	return d
}

func sameTimes(got, want map[string]time.Time) bool {
	return maps.EqualFunc(got, want, time.Time.Equal)
}

func testDenylist(t *testing.T, h Harness) {
	e := open(t, h)
	if d := denied(t, e.s); len(d) != 0 {
		t.Fatalf("new store: Denied = %v, want none", d)
	}
	a, b := "spiffe://example.org/a", "spiffe://example.org/b"
	t1, t2 := base, base.Add(time.Minute+7)
	if err := e.s.Deny(bg, a, t1); err != nil {
		t.Fatalf("Deny: %v", err)
	}
	if err := e.s.Deny(bg, b, t2); err != nil {
		t.Fatalf("Deny: %v", err)
	}
	want := map[string]time.Time{a: t1, b: t2}
	if d := denied(t, e.s); !sameTimes(d, want) {
		t.Errorf("Denied = %v, want %v", d, want)
	}
	// Idempotent: denying again keeps the first time.
	if err := e.s.Deny(bg, a, t2.Add(time.Hour)); err != nil {
		t.Fatalf("Deny again: %v", err)
	}
	if d := denied(t, e.s); !sameTimes(d, want) {
		t.Errorf("after a second Deny: Denied = %v, want %v", d, want)
	}
	if err := e.s.Allow(bg, a); err != nil {
		t.Fatalf("Allow: %v", err)
	}
	delete(want, a)
	if d := denied(t, e.s); !sameTimes(d, want) {
		t.Errorf("after Allow: Denied = %v, want %v", d, want)
	}
	for _, id := range []string{a, "spiffe://example.org/never"} {
		if err := e.s.Allow(bg, id); err != nil {
			t.Errorf("Allow of %s, not denied: %v, want nil", id, err)
		}
	}
	// The denylist and the leases are apart.
	l := newLease(t, lease.StateActive, b)
	put(t, e.s, l)
	if got := ids(scan(t, e.s, lease.Filter{})); !reflect.DeepEqual(got, set(l)) {
		t.Errorf("Scan = %v, want only the lease", got)
	}
	if d := denied(t, e.s); !sameTimes(d, want) {
		t.Errorf("after a Put: Denied = %v, want %v", d, want)
	}
	// Allowed again, then denied again: the new time.
	if err := e.s.Allow(bg, b); err != nil {
		t.Fatal(err)
	}
	if err := e.s.Deny(bg, b, t1); err != nil {
		t.Fatal(err)
	}
	if d := denied(t, e.s); !sameTimes(d, map[string]time.Time{b: t1}) {
		t.Errorf("denied again: Denied = %v, want %s at %s", d, b, t1)
	}
}
