package leasetest

import (
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// queryLeases stores 30 leases over three owners, two roles, two
// databases and the three states, a quarter of them with IDs sharing the
// prefix "ab" (two "abc"), and returns them.
func queryLeases(t *testing.T, h SharedHarness, s lease.SharedStore) []lease.Lease {
	t.Helper()
	owners := []string{"spiffe://example.org/a", "spiffe://example.org/b", "spiffe://example.org/c"}
	states := []lease.State{lease.StateCreating, lease.StateActive, lease.StateRevoking}
	var ls []lease.Lease
	for i := range 30 {
		l := sharedLease(t, h, states[i%3], owners[(i/3)%3], h.Now().Add(time.Hour))
		l.Role = []string{"readonly", "writer"}[i%2]
		l.Database = []string{"pg1", "pg2"}[(i/2)%2]
		switch {
		case i < 2:
			l.ID = "abc" + l.ID[3:]
		case i%4 == 0:
			l.ID = "ab" + l.ID[2:]
		}
		ls = append(ls, l)
	}
	put(t, s, ls...)
	return ls
}

// want is what lease.Manager.List answers to q from ls.
func want(ls []lease.Lease, q lease.Query) []string {
	var out []string
	for _, l := range ls {
		if (q.Owner == "" || l.Owner == q.Owner) && (q.Role == "" || l.Role == q.Role) &&
			(q.Database == "" || l.Database == q.Database) &&
			(len(q.States) == 0 || slices.Contains(q.States, l.State)) &&
			l.ID > q.After && strings.HasPrefix(l.ID, q.IDPrefix) &&
			(len(q.IDs) == 0 || slices.Contains(q.IDs, l.ID)) {
			out = append(out, l.ID)
		}
	}
	slices.Sort(out)
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out
}

func query(t *testing.T, s lease.SharedStore, q lease.Query) []lease.Lease {
	t.Helper()
	got, err := s.Query(bg, q)
	if err != nil {
		t.Fatalf("Query(%+v): %v", q, err)
	}
	return got
}

func leaseIDs(ls []lease.Lease) []string {
	var out []string
	for _, l := range ls {
		out = append(out, l.ID)
	}
	return out
}

func testSharedQuery(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	ls := queryLeases(t, h, ss[0])
	byID := map[string]lease.Lease{}
	for _, l := range ls {
		byID[l.ID] = normalized(l)
	}
	sorted := want(ls, lease.Query{})
	a := "spiffe://example.org/a"
	for _, tt := range []struct {
		name string
		q    lease.Query
	}{
		{"All", lease.Query{}},
		{"Owner", lease.Query{Owner: a}},
		{"UnknownOwner", lease.Query{Owner: "spiffe://example.org/nobody"}},
		{"Role", lease.Query{Role: "writer"}},
		{"Database", lease.Query{Database: "pg2"}},
		{"States", lease.Query{States: []lease.State{lease.StateActive, lease.StateRevoking}}},
		{"OneState", lease.Query{States: []lease.State{lease.StateCreating}}},
		{"NeverStoredState", lease.Query{States: []lease.State{lease.StateRevoked, lease.StateExpired}}},
		{"IDPrefix", lease.Query{IDPrefix: "ab"}},
		{"LongerIDPrefix", lease.Query{IDPrefix: "abc"}},
		{"WholeID", lease.Query{IDPrefix: sorted[5]}},
		{"NoSuchPrefix", lease.Query{IDPrefix: "abcz"}},
		{"After", lease.Query{After: sorted[10]}},
		{"AfterLast", lease.Query{After: sorted[len(sorted)-1]}},
		{"Limit", lease.Query{Limit: 4}},
		{"OwnerStatesLimit", lease.Query{Owner: a, States: []lease.State{lease.StateActive, lease.StateCreating}, Limit: 3}},
		{"RoleDatabaseAfter", lease.Query{Role: "readonly", Database: "pg1", After: sorted[3]}},
		{"PrefixAfterLimit", lease.Query{IDPrefix: "ab", After: sorted[2], Limit: 3}},
		{"OwnerRolePrefix", lease.Query{Owner: a, Role: "writer", IDPrefix: "ab"}},
		{"IDs", lease.Query{IDs: []string{sorted[7], sorted[2], "no-such-lease", sorted[7]}}},
		{"IDsStates", lease.Query{IDs: sorted[:10], States: []lease.State{lease.StateActive}}},
		{"IDsOwnerLimit", lease.Query{IDs: sorted, Owner: a, Limit: 2}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got := query(t, ss[1], tt.q)
			if ids, w := leaseIDs(got), want(ls, tt.q); !reflect.DeepEqual(ids, w) {
				t.Fatalf("Query(%+v) = %v\nwant %v", tt.q, ids, w)
			}
			for _, l := range got {
				if !reflect.DeepEqual(l, byID[l.ID]) {
					t.Errorf("Query returned %+v\nwant %+v", l, byID[l.ID])
				}
			}
		})
	}
}

// Pages of Limit after the last ID of the previous page cover every lease
// q selects once, in ID order.
func testSharedQueryPages(t *testing.T, h SharedHarness) {
	s := replicas(t, h, "a")[0]
	ls := queryLeases(t, h, s)
	for _, q := range []lease.Query{{}, {Role: "readonly"}, {Owner: "spiffe://example.org/b"}, {IDPrefix: "ab"}} {
		var all []string
		for page := 0; ; page++ {
			if page > 30 {
				t.Fatalf("paging %+v does not end", q)
			}
			pq := q
			pq.Limit = 4
			if len(all) > 0 {
				pq.After = all[len(all)-1]
			}
			got := leaseIDs(query(t, s, pq))
			if len(got) > 4 {
				t.Fatalf("a page of %d leases, limit 4", len(got))
			}
			all = append(all, got...)
			if len(got) < 4 {
				break
			}
		}
		if w := want(ls, q); !reflect.DeepEqual(all, w) {
			t.Errorf("pages of %+v = %v\nwant %v", q, all, w)
		}
	}
}

func testSharedFindRequest(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	owner, other := "spiffe://example.org/a", "spiffe://example.org/b"
	l := sharedLease(t, h, lease.StateCreating, owner, h.Now().Add(time.Hour))
	l.RequestID = "9f1c2a7e-5b7d-4d39-a1c6-0a3f4a2d9e11"
	v := mustCreate(t, a, l, long)
	plain := sharedLease(t, h, lease.StateActive, owner, h.Now().Add(time.Hour))
	put(t, a, plain)

	find := func(owner, rid string) (lease.Lease, error) {
		t.Helper()
		return b.FindRequest(bg, owner, rid)
	}
	if got, err := find(owner, l.RequestID); err != nil || !reflect.DeepEqual(got, normalized(l)) {
		t.Errorf("FindRequest = %+v, %v\nwant %+v", got, err, normalized(l))
	}
	for _, tt := range []struct{ owner, rid string }{
		{other, l.RequestID},
		{owner, "another request"},
	} {
		if got, err := find(tt.owner, tt.rid); !errors.Is(err, lease.ErrNotFound) {
			t.Errorf("FindRequest(%s, %q) = %+v, %v; want ErrNotFound", tt.owner, tt.rid, got, err)
		}
	}
	// Found in whatever state, until deleted.
	l.State = lease.StateActive
	v = mustPutIf(t, a, l, v, 0)
	if got, err := find(owner, l.RequestID); err != nil || got.State != lease.StateActive {
		t.Errorf("FindRequest of the ACTIVE lease = %+v, %v", got, err)
	}
	if err := a.DeleteIfVersion(bg, l.ID, v); err != nil {
		t.Fatal(err)
	}
	if got, err := find(owner, l.RequestID); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("FindRequest after the delete = %+v, %v; want ErrNotFound", got, err)
	}
}

func testSharedOwners(t *testing.T, h SharedHarness) {
	s := replicas(t, h, "a")[0]
	if got, err := s.Owners(bg, lease.StateActive); err != nil || len(got) != 0 {
		t.Errorf("Owners of an empty store = %v, %v", got, err)
	}
	for _, l := range []struct {
		owner string
		st    lease.State
	}{
		{"spiffe://example.org/z", lease.StateActive},
		{"spiffe://example.org/B", lease.StateActive},
		{"spiffe://example.org/a", lease.StateActive},
		{"spiffe://example.org/a", lease.StateActive},
		{"spiffe://example.org/a", lease.StateRevoking},
		{"spiffe://example.org/c", lease.StateCreating},
	} {
		put(t, s, sharedLease(t, h, l.st, l.owner, h.Now().Add(time.Hour)))
	}
	for _, tt := range []struct {
		st   lease.State
		want []string
	}{
		{lease.StateActive, []string{"spiffe://example.org/B", "spiffe://example.org/a", "spiffe://example.org/z"}},
		{lease.StateRevoking, []string{"spiffe://example.org/a"}},
		{lease.StateCreating, []string{"spiffe://example.org/c"}},
		{lease.StateRevoked, nil},
	} {
		got, err := s.Owners(bg, tt.st)
		if err != nil || len(got) != len(tt.want) || (len(got) > 0 && !reflect.DeepEqual(got, tt.want)) {
			t.Errorf("Owners(%s) = %v, %v; want %v (sorted bytewise, each once)", tt.st, got, err, tt.want)
		}
	}
}

func stats(t *testing.T, s lease.SharedStore) lease.Stats {
	t.Helper()
	st, err := s.Stats(bg)
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return st
}

func testSharedStats(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	zero := lease.Stats{
		ByState: map[lease.State]int{lease.StateCreating: 0, lease.StateActive: 0, lease.StateRevoking: 0},
		ByRole:  map[string]int{},
	}
	if got := stats(t, ss[1]); !reflect.DeepEqual(got, zero) {
		t.Errorf("Stats of an empty store = %+v, want %+v", got, zero)
	}
	ls := queryLeases(t, h, ss[0])
	wantSt := lease.Stats{ByState: map[lease.State]int{}, ByRole: map[string]int{}}
	for _, l := range ls {
		wantSt.ByState[l.State]++
		wantSt.ByRole[l.Role]++
	}
	got := stats(t, ss[1])
	if !reflect.DeepEqual(got.ByState, wantSt.ByState) || !reflect.DeepEqual(got.ByRole, wantSt.ByRole) {
		t.Errorf("Stats = %v, %v; want %v, %v", got.ByState, got.ByRole, wantSt.ByState, wantSt.ByRole)
	}
	if got.OldestRevoking.IsZero() {
		t.Error("Stats.OldestRevoking is zero with REVOKING leases stored")
	}
}

// OldestRevoking is when the longest-REVOKING lease became REVOKING, on
// the store's clock: kept while the lease is rewritten REVOKING (retries,
// claims), forgotten when it leaves that state.
func testSharedOldestRevoking(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	owner := "spiffe://example.org/a"
	oldest := func() time.Time { t.Helper(); return stats(t, b).OldestRevoking }
	if got := oldest(); !got.IsZero() {
		t.Fatalf("OldestRevoking of an empty store = %v, want zero", got)
	}
	first := sharedLease(t, h, lease.StateRevoking, owner, h.Now().Add(time.Hour))
	before := h.Now()
	put(t, a, first)
	o1 := oldest()
	if d := o1.Sub(before); d < -time.Minute || d > time.Minute {
		t.Fatalf("OldestRevoking = %v, want about %v (the store's clock when it became REVOKING)", o1, before)
	}
	h.Sleep(h.Hold)
	// Retries and claims keep it.
	first.Attempts, first.LastError = 1, "drop: refused"
	put(t, a, first)
	c := claimOne(t, b, first.ID, claimReq(10))
	first.Attempts = 2
	mustPutIf(t, b, first, c.Version, long)
	if got := oldest(); !got.Equal(o1) {
		t.Errorf("OldestRevoking after a retry, a claim and a PutIfVersion = %v, want %v still", got, o1)
	}
	// A later revocation does not change the oldest.
	second := sharedLease(t, h, lease.StateActive, owner, h.Now().Add(time.Hour))
	put(t, a, second)
	second.State = lease.StateRevoking
	v2 := mustPutIf(t, a, second, mustVersion(t, a, second.ID).Version, 0)
	if got := oldest(); !got.Equal(o1) {
		t.Errorf("OldestRevoking after a second revocation = %v, want the first's %v", got, o1)
	}
	// The first leaves REVOKING: the second is the oldest.
	first.State = lease.StateActive
	put(t, a, first)
	o2 := oldest()
	if !o2.After(o1) {
		t.Errorf("OldestRevoking once the first is ACTIVE = %v, want the second's, after %v", o2, o1)
	}
	h.Sleep(h.Hold)
	first.State = lease.StateRevoking
	put(t, a, first)
	if got := oldest(); !got.Equal(o2) {
		t.Errorf("OldestRevoking after the first is REVOKING again = %v, want the second's %v (the first counts anew)", got, o2)
	}
	if err := a.DeleteIfVersion(bg, second.ID, v2); err != nil {
		t.Fatal(err)
	}
	if err := a.Delete(bg, first.ID); err != nil {
		t.Fatal(err)
	}
	if got := oldest(); !got.IsZero() {
		t.Errorf("OldestRevoking with no REVOKING lease = %v, want zero", got)
	}
}
