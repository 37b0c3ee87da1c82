package leasetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// Run runs the conformance suite against the stores of h, each case a
// subtest of t.
func Run(t *testing.T, h Harness) {
	if h.Open == nil {
		t.Fatal("leasetest: Harness.Open is required")
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, h Harness)
	}{
		{"PutGetDelete", testPutGetDelete},
		{"Overwrite", testOverwrite},
		{"ScanByState", testScanByState},
		{"ScanByOwner", testScanByOwner},
		{"ScanCallbackError", testScanCallbackError},
		{"Denylist", testDenylist},
		{"RestoreLoad", func(t *testing.T, h Harness) { testRestore(t, h, false) }},
		{"RestoreDeferLoad", func(t *testing.T, h Harness) { testRestore(t, h, true) }},
		{"ConcurrentWriters", testConcurrentWriters},
		{"CanceledContext", testCanceledContext},
		{"Closed", testClosed},
		{"BulkPut", testBulkPut},
		{"Durability", testDurability},
		{"Corrupt", testCorrupt},
		{"Missing", testMissing},
		{"RequestID", testRequestID},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, h) })
	}
}

// env is one store under test; it is closed when the test ends, whatever
// it has been replaced with by then.
type env struct {
	h Harness
	s lease.Store
}

func open(t *testing.T, h Harness) *env {
	t.Helper()
	e := &env{h: h, s: h.Open(t)}
	t.Cleanup(func() {
		if e.s != nil {
			_ = e.s.Close()
		}
	})
	return e
}

func (e *env) reopen(t *testing.T) {
	t.Helper()
	s := e.s
	e.s = nil
	e.s = e.h.Reopen(t, s)
}

var bg = context.Background()

// base is a time with nanoseconds, in a zone other than UTC: stores give
// times back in UTC, equal to what was put.
var base = time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.FixedZone("CET", 3600))

var seq atomic.Int64

// newLease returns a valid lease in state st, owned by owner, expiring an
// hour after base.
func newLease(t *testing.T, st lease.State, owner string) lease.Lease {
	t.Helper()
	id, err := lease.NewID()
	if err != nil {
		t.Fatal(err)
	}
	n := seq.Add(1)
	return lease.Lease{
		ID:                   id,
		Role:                 "readonly",
		Owner:                owner,
		Database:             "pg1",
		Username:             fmt.Sprintf("cb_readonly_%d", n),
		IssueTime:            base,
		ExpireTime:           base.Add(time.Hour),
		MaxExpireTime:        base.Add(2 * time.Hour),
		State:                st,
		RevocationStatements: []string{`DROP ROLE IF EXISTS "{{name}}"`, "-- ü\n"},
	}
}

// normalized is l as a store gives it back: its times in UTC, without
// monotonic readings.
func normalized(l lease.Lease) lease.Lease {
	for _, t := range []*time.Time{&l.IssueTime, &l.ExpireTime, &l.MaxExpireTime} {
		if !t.IsZero() {
			*t = t.Round(0).UTC()
		}
	}
	return l
}

func put(t *testing.T, s lease.Store, ls ...lease.Lease) {
	t.Helper()
	for _, l := range ls {
		if err := s.Put(bg, l); err != nil {
			t.Fatalf("Put %s: %v", l.ID, err)
		}
	}
}

func mustGet(t *testing.T, s lease.Store, want lease.Lease) {
	t.Helper()
	got, err := s.Get(bg, want.ID)
	if err != nil {
		t.Fatalf("Get %s: %v", want.ID, err)
	}
	if want = normalized(want); !reflect.DeepEqual(got, want) {
		t.Errorf("Get %s:\n got %+v\nwant %+v", want.ID, got, want)
	}
}

func mustBeGone(t *testing.T, s lease.Store, id string) {
	t.Helper()
	if l, err := s.Get(bg, id); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("Get %s = %+v, %v; want ErrNotFound", id, l, err)
	}
}

func scan(t *testing.T, s lease.Store, f lease.Filter) map[string]lease.Lease {
	t.Helper()
	got := map[string]lease.Lease{}
	if err := s.Scan(bg, f, func(l lease.Lease) error {
		if _, dup := got[l.ID]; dup {
			t.Errorf("Scan yielded %s twice", l.ID)
		}
		got[l.ID] = l
		return nil
	}); err != nil {
		t.Fatalf("Scan(%+v): %v", f, err)
	}
	return got
}

func ids(m map[string]lease.Lease) map[string]bool {
	out := map[string]bool{}
	for id := range m {
		out[id] = true
	}
	return out
}

func set(ls ...lease.Lease) map[string]bool {
	out := map[string]bool{}
	for _, l := range ls {
		out[l.ID] = true
	}
	return out
}

func testPutGetDelete(t *testing.T, h Harness) {
	e := open(t, h)
	full := newLease(t, lease.StateRevoking, "spiffe://example.org/a")
	full.LastError, full.Attempts, full.Expired = "drop: connection refused", 3, true
	plain := newLease(t, lease.StateCreating, "spiffe://example.org/a")
	plain.RevocationStatements = nil
	put(t, e.s, full, plain)
	mustGet(t, e.s, full)
	mustGet(t, e.s, plain)

	missing, _ := lease.NewID()
	mustBeGone(t, e.s, missing)

	if err := e.s.Delete(bg, full.ID); err != nil {
		t.Fatalf("Delete: %v", err)
	}
	mustBeGone(t, e.s, full.ID)
	mustGet(t, e.s, plain)
	if err := e.s.Delete(bg, full.ID); err != nil {
		t.Errorf("Delete of an absent lease: %v, want nil", err)
	}
	if got := ids(scan(t, e.s, lease.Filter{})); !reflect.DeepEqual(got, set(plain)) {
		t.Errorf("Scan after Delete = %v, want %v", got, set(plain))
	}
}

func testOverwrite(t *testing.T, h Harness) {
	e := open(t, h)
	l := newLease(t, lease.StateCreating, "spiffe://example.org/a")
	put(t, e.s, l)
	l.State = lease.StateActive
	l.ExpireTime = l.ExpireTime.Add(time.Minute)
	put(t, e.s, l)
	mustGet(t, e.s, l)
	l.State, l.LastError, l.Attempts = lease.StateRevoking, "boom", 1
	put(t, e.s, l)
	mustGet(t, e.s, l)
	if got := scan(t, e.s, lease.Filter{}); len(got) != 1 || !reflect.DeepEqual(got[l.ID], normalized(l)) {
		t.Errorf("Scan after overwrites = %+v, want only %+v", got, normalized(l))
	}
}

// mixed stores leases of every state and two owners.
func mixed(t *testing.T, s lease.Store) (all []lease.Lease) {
	t.Helper()
	for _, owner := range []string{"spiffe://example.org/a", "spiffe://example.org/b"} {
		for i, st := range []lease.State{lease.StateCreating, lease.StateActive, lease.StateActive, lease.StateRevoking} {
			l := newLease(t, st, owner)
			if i == 2 {
				l.RequestID = fmt.Sprintf("req-%d", seq.Add(1))
			}
			all = append(all, l)
		}
	}
	put(t, s, all...)
	return all
}

func pick(all []lease.Lease, f lease.Filter) map[string]bool {
	out := map[string]bool{}
	for _, l := range all {
		if (f.State == 0 || l.State == f.State) && (f.Owner == "" || l.Owner == f.Owner) {
			out[l.ID] = true
		}
	}
	return out
}

func testScanByState(t *testing.T, h Harness) {
	e := open(t, h)
	all := mixed(t, e.s)
	for _, f := range []lease.Filter{
		{},
		{State: lease.StateCreating},
		{State: lease.StateActive},
		{State: lease.StateRevoking},
	} {
		got := scan(t, e.s, f)
		if want := pick(all, f); !reflect.DeepEqual(ids(got), want) {
			t.Errorf("Scan(%+v) = %d leases, want %d", f, len(got), len(want))
		}
		for id, l := range got {
			if !f.Match(l) {
				t.Errorf("Scan(%+v) yielded %s in state %s", f, id, l.State)
			}
		}
	}
}

func testScanByOwner(t *testing.T, h Harness) {
	e := open(t, h)
	all := mixed(t, e.s)
	for _, f := range []lease.Filter{
		{Owner: "spiffe://example.org/a"},
		{Owner: "spiffe://example.org/b"},
		{Owner: "spiffe://example.org/nobody"},
		{Owner: "spiffe://example.org/b", State: lease.StateActive},
	} {
		got := scan(t, e.s, f)
		if want := pick(all, f); !reflect.DeepEqual(ids(got), want) {
			t.Errorf("Scan(%+v) = %d leases, want %d", f, len(got), len(want))
		}
		for id, l := range got {
			if l.Owner != f.Owner {
				t.Errorf("Scan(%+v) yielded %s of %s", f, id, l.Owner)
			}
			if want := all[0]; l.ID == want.ID && !reflect.DeepEqual(l, normalized(want)) {
				t.Errorf("Scan yielded %+v, want %+v", l, normalized(want))
			}
		}
	}
}

func testScanCallbackError(t *testing.T, h Harness) {
	e := open(t, h)
	mixed(t, e.s)
	stop := errors.New("stop")
	n := 0
	err := e.s.Scan(bg, lease.Filter{}, func(lease.Lease) error { n++; return stop })
	if err != stop {
		t.Errorf("Scan = %v, want the callback's error as is", err)
	}
	if n != 1 {
		t.Errorf("callback ran %d times after returning an error, want 1", n)
	}
}

func testConcurrentWriters(t *testing.T, h Harness) {
	e := open(t, h)
	const writers, each = 8, 25
	var (
		mu   sync.Mutex
		kept = map[string]lease.Lease{}
		wg   sync.WaitGroup
	)
	for w := range writers {
		wg.Go(func() {
			owner := fmt.Sprintf("spiffe://example.org/w%d", w)
			for i := range each {
				l := newLease(t, lease.StateCreating, owner)
				if err := e.s.Put(bg, l); err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				l.State = lease.StateActive
				if err := e.s.Put(bg, l); err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				if _, err := e.s.Get(bg, l.ID); err != nil {
					t.Errorf("Get of a lease just put: %v", err)
				}
				if i%3 == 0 {
					if err := e.s.Delete(bg, l.ID); err != nil {
						t.Errorf("Delete: %v", err)
					}
					continue
				}
				if i%5 == 0 {
					if err := e.s.Deny(bg, owner, base); err != nil {
						t.Errorf("Deny: %v", err)
					}
				}
				mu.Lock()
				kept[l.ID] = normalized(l)
				mu.Unlock()
			}
		})
	}
	// A reader scans meanwhile.
	wg.Go(func() {
		for range 5 {
			if err := e.s.Scan(bg, lease.Filter{State: lease.StateActive}, func(lease.Lease) error { return nil }); err != nil {
				t.Errorf("concurrent Scan: %v", err)
			}
		}
	})
	wg.Wait()
	if got := scan(t, e.s, lease.Filter{}); !reflect.DeepEqual(got, kept) {
		t.Errorf("after concurrent writes: %d leases stored, want %d", len(got), len(kept))
	}
	if d := denied(t, e.s); len(d) != writers {
		t.Errorf("Denied = %d IDs, want %d", len(d), writers)
	}
}

func testCanceledContext(t *testing.T, h Harness) {
	e := open(t, h)
	ctx, cancel := context.WithCancel(bg)
	cancel()
	l := newLease(t, lease.StateActive, "spiffe://example.org/a")
	if err := e.s.Put(ctx, l); !errors.Is(err, lease.ErrStoreUnavailable) {
		t.Errorf("Put with an ended ctx = %v, want ErrStoreUnavailable", err)
	}
	mustBeGone(t, e.s, l.ID)
	if err := e.s.Deny(ctx, l.Owner, base); !errors.Is(err, lease.ErrStoreUnavailable) {
		t.Errorf("Deny with an ended ctx = %v, want ErrStoreUnavailable", err)
	}
	if d := denied(t, e.s); len(d) != 0 {
		t.Errorf("Deny with an ended ctx stored %v", d)
	}
}

func testClosed(t *testing.T, h Harness) {
	e := open(t, h)
	l := newLease(t, lease.StateActive, "spiffe://example.org/a")
	put(t, e.s, l)
	if err := e.s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	ops := []struct {
		name string
		op   func() error
	}{
		{"Put", func() error { return e.s.Put(bg, l) }},
		{"Get", func() error { _, err := e.s.Get(bg, l.ID); return err }},
		{"Delete", func() error { return e.s.Delete(bg, l.ID) }},
		{"Scan", func() error { return e.s.Scan(bg, lease.Filter{}, func(lease.Lease) error { return nil }) }},
		{"Deny", func() error { return e.s.Deny(bg, l.Owner, base) }},
		{"Allow", func() error { return e.s.Allow(bg, l.Owner) }},
		{"Denied", func() error { _, err := e.s.Denied(bg); return err }},
	}
	for _, o := range ops {
		if err := o.op(); !errors.Is(err, lease.ErrStoreUnavailable) {
			t.Errorf("%s after Close = %v, want ErrStoreUnavailable", o.name, err)
		}
	}
}

// testBulkPut checks lease.PutAll, which uses the store's BulkPutter if it
// has one.
func testBulkPut(t *testing.T, h Harness) {
	e := open(t, h)
	var ls []lease.Lease
	for i := range 50 {
		l := newLease(t, lease.StateActive, "spiffe://example.org/a")
		if i%2 == 0 {
			l.RequestID = fmt.Sprintf("bulk-%d", i)
		}
		ls = append(ls, l)
	}
	if err := lease.PutAll(bg, e.s, ls); err != nil {
		t.Fatalf("PutAll: %v", err)
	}
	got := scan(t, e.s, lease.Filter{})
	if len(got) != len(ls) {
		t.Fatalf("PutAll stored %d of %d leases", len(got), len(ls))
	}
	for _, l := range ls {
		if !reflect.DeepEqual(got[l.ID], normalized(l)) {
			t.Errorf("PutAll stored %+v, want %+v", got[l.ID], normalized(l))
		}
	}
	if _, ok := e.s.(lease.BulkPutter); !ok {
		t.Log("store is no lease.BulkPutter: PutAll wrote one Put each")
	}
}

func testDurability(t *testing.T, h Harness) {
	skipWithout(t, h.Reopen != nil, "Reopen", h.NoReopen)
	e := open(t, h)
	all := mixed(t, e.s)
	if err := e.s.Delete(bg, all[0].ID); err != nil {
		t.Fatal(err)
	}
	kept := all[1:]
	kept[0].ExpireTime = kept[0].ExpireTime.Add(time.Minute)
	put(t, e.s, kept[0])
	for _, id := range []string{"spiffe://example.org/a", "spiffe://example.org/b"} {
		if err := e.s.Deny(bg, id, base); err != nil {
			t.Fatal(err)
		}
	}
	if err := e.s.Allow(bg, "spiffe://example.org/a"); err != nil {
		t.Fatal(err)
	}

	e.reopen(t)
	got := scan(t, e.s, lease.Filter{})
	if len(got) != len(kept) {
		t.Fatalf("after reopening: %d leases, want %d", len(got), len(kept))
	}
	for _, l := range kept {
		if !reflect.DeepEqual(got[l.ID], normalized(l)) {
			t.Errorf("after reopening: %+v, want %+v", got[l.ID], normalized(l))
		}
	}
	if d := denied(t, e.s); !sameTimes(d, map[string]time.Time{"spiffe://example.org/b": base}) {
		t.Errorf("after reopening: Denied = %v, want only spiffe://example.org/b", d)
	}
	if v, ok := e.s.(lease.Verifier); ok {
		if err := v.Verified(); err != nil {
			t.Errorf("Verified after reopening a sound store: %v", err)
		}
	}
	if sh, ok := e.s.(lease.SizeHinter); ok {
		if n := sh.SizeHint(); n != len(kept) {
			t.Errorf("SizeHint after reopening = %d, want %d", n, len(kept))
		}
	}
}

func testCorrupt(t *testing.T, h Harness) {
	skipWithout(t, h.Corrupt != nil, "Corrupt", h.NoCorrupt)
	e := open(t, h)
	all := mixed(t, e.s)
	victim := all[1] // ACTIVE
	s := e.s
	e.s = nil
	s, err := h.Corrupt(t, s, victim.ID)
	if err != nil {
		if !errors.Is(err, lease.ErrStoreCorrupt) {
			t.Fatalf("opening the damaged store = %v, want ErrStoreCorrupt", err)
		}
		return
	}
	e.s = s
	// Opened: then nothing may be restored from it, by either path.
	if err := s.Scan(bg, lease.Filter{}, func(lease.Lease) error { return nil }); !errors.Is(err, lease.ErrStoreCorrupt) {
		t.Errorf("Scan of the damaged store = %v, want ErrStoreCorrupt", err)
	}
	for _, deferred := range []bool{false, true} {
		m, err := lease.NewManager(lease.Config{Store: s, Backend: NewBackend()})
		if err != nil {
			t.Fatal(err)
		}
		load, name := m.Load, "Load"
		if deferred {
			load, name = m.DeferLoad, "DeferLoad"
		}
		if err := load(bg); !errors.Is(err, lease.ErrStoreCorrupt) {
			t.Errorf("%s of the damaged store = %v, want ErrStoreCorrupt before anything is served", name, err)
		}
	}
}

func testMissing(t *testing.T, h Harness) {
	skipWithout(t, h.OpenMissing != nil, "Missing", h.NoMissing)
	if err := h.OpenMissing(t); !errors.Is(err, lease.ErrStoreMissing) {
		t.Errorf("opening a missing store = %v, want ErrStoreMissing", err)
	}
}
