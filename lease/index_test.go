package lease

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// checkIndex fails t unless m.index holds exactly m.leases, each entry in
// its origin's group at its gpos, and the id list is in order.
func checkIndex(t testing.TB, m *Manager) {
	t.Helper()
	m.mu.Lock()
	defer m.mu.Unlock()
	x := m.index
	n := 0
	for k, g := range x.groups {
		if g.key != k || len(g.members) == 0 {
			t.Fatalf("group %v: key %v, %d members", k.Value(), g.key.Value(), len(g.members))
		}
		o := k.Value()
		if !slices.Contains(x.byOwner[o.owner], g) || !slices.Contains(x.byRole[o.role], g) {
			t.Fatalf("group %v missing from byOwner or byRole", o)
		}
		for i, e := range g.members {
			if int(e.gpos) != i || e.origin != k || m.leases[e.id] != e {
				t.Fatalf("entry %s: gpos %d at %d, in map %v", e.id, e.gpos, i, m.leases[e.id] == e)
			}
		}
		n += len(g.members)
	}
	for _, by := range []map[string][]*group{x.byOwner, x.byRole} {
		for k, gs := range by {
			if len(gs) == 0 {
				t.Fatalf("empty group list for %q", k)
			}
			for _, g := range gs {
				if x.groups[g.key] != g {
					t.Fatalf("%q lists a group not indexed", k)
				}
			}
		}
	}
	if n != len(m.leases) {
		t.Fatalf("groups hold %d entries, map %d", n, len(m.leases))
	}
	checkIDList(t, &x.ids)
	if x.ids.n != len(m.leases) {
		t.Fatalf("id list holds %d entries, map %d", x.ids.n, len(m.leases))
	}
	for _, c := range x.ids.chunks {
		for _, e := range c {
			if m.leases[e.id] != e {
				t.Fatalf("id list holds %s, not in the map", e.id)
			}
		}
	}
}

func checkIDList(t testing.TB, l *idList) []string {
	t.Helper()
	var ids []string
	for i, c := range l.chunks {
		if len(c) == 0 || cap(c) != chunkMax {
			t.Fatalf("chunk %d: len %d cap %d", i, len(c), cap(c))
		}
		for _, e := range c {
			ids = append(ids, e.id)
		}
	}
	if len(ids) != l.n {
		t.Fatalf("id list: n = %d, holds %d", l.n, len(ids))
	}
	if !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != len(ids) {
		t.Fatal("id list out of order or with duplicates")
	}
	return ids
}

// TestIDList drives the chunked id list with random inserts and deletes,
// from empty and from a bulk build, against a sorted slice.
func TestIDList(t *testing.T) {
	for _, bulk := range []int{0, 1, chunkBulk, 5000} {
		t.Run(fmt.Sprintf("bulk%d", bulk), func(t *testing.T) {
			r := rand.New(rand.NewPCG(uint64(bulk), 7))
			newE := func() *entry { return &entry{id: fmt.Sprintf("%032x", r.Uint64()>>r.IntN(64))} }
			live := map[string]*entry{}
			var es []*entry
			for range bulk {
				e := newE()
				if live[e.id] == nil {
					live[e.id] = e
					es = append(es, e)
				}
			}
			l := buildIDList(es)
			for step := range 20000 {
				if r.IntN(3) > 0 || len(live) == 0 { // grow, mostly
					e := newE()
					if live[e.id] != nil {
						continue
					}
					live[e.id] = e
					l.insert(e)
				} else {
					for id, e := range live {
						delete(live, id)
						l.remove(e)
						break
					}
				}
				if step%997 == 0 || step == 19999 {
					ids := checkIDList(t, &l)
					want := make([]string, 0, len(live))
					for id := range live {
						want = append(want, id)
					}
					slices.Sort(want)
					if !slices.Equal(ids, want) {
						t.Fatalf("step %d: id list differs from the reference", step)
					}
					// seek lands on the first id at or after any key.
					key := fmt.Sprintf("%032x", r.Uint64())
					var got []string
					l.ascend(key, func(e *entry) bool { got = append(got, e.id); return len(got) < 3 })
					i, _ := slices.BinarySearch(want, key)
					if w := want[i:min(i+3, len(want))]; !slices.Equal(got, w) {
						t.Fatalf("ascend(%s) = %v, want %v", key, got, w)
					}
				}
			}
			for _, e := range live { // down to empty: merges, then no chunk
				l.remove(e)
			}
			if len(l.chunks) != 0 || l.n != 0 {
				t.Fatalf("empty list keeps %d chunks, n %d", len(l.chunks), l.n)
			}
		})
	}
}

// queryFixture returns leases over several owners, roles, databases and
// states, with unpackable ones among them.
func queryFixture(t *testing.T, n int, now time.Time) []Lease {
	t.Helper()
	r := rand.New(rand.NewPCG(3, 4))
	var out []Lease
	for i := range n {
		l := makeLease(t, now, time.Hour, 2*time.Hour)
		l.Owner = fmt.Sprintf("spiffe://example.org/w%d", r.IntN(7))
		l.Role = []string{"ro", "rw", "admin"}[r.IntN(3)]
		l.Database = []string{"pg1", "my1"}[r.IntN(2)]
		l.State = []State{StateActive, StateActive, StateActive, StateRevoking, StateCreating}[r.IntN(5)]
		if l.State == StateRevoking && i%2 == 0 {
			l.LastError, l.Attempts = "refused", 2 // kept whole
		}
		out = append(out, l)
	}
	return out
}

// matches is Query's meaning, written plainly.
func (q Query) matches(l Lease) bool {
	return (q.Owner == "" || l.Owner == q.Owner) && (q.Role == "" || l.Role == q.Role) &&
		(q.Database == "" || l.Database == q.Database) &&
		(len(q.States) == 0 || slices.Contains(q.States, l.State)) &&
		strings.HasPrefix(l.ID, q.IDPrefix) && l.ID > q.After &&
		(len(q.IDs) == 0 || slices.Contains(q.IDs, l.ID))
}

// TestListQuery compares List with every Query against a plain filter of
// all leases, and pages through with After and Limit.
func TestListQuery(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	fixture := queryFixture(t, 600, clock.Now())
	store := NewMemStore(fixture...)
	m, err := NewManager(Config{Store: store, Backend: newFakeBackend(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Load(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.wg.Wait)
	checkIndex(t, m)
	all, err := m.List(ctx, Query{})
	if err != nil {
		t.Fatal(err)
	}
	// Load dropped the CREATING ones; every other fixture lease is here.
	if len(all) == 0 || !slices.IsSortedFunc(all, func(a, b Lease) int { return strings.Compare(a.ID, b.ID) }) {
		t.Fatalf("List(Query{}): %d leases, sorted %v", len(all), false)
	}
	active := []State{StateActive}
	visible := []State{StateActive, StateRevoking}
	queries := []Query{
		{},
		{Owner: "spiffe://example.org/w1"},
		{Owner: "spiffe://example.org/w1", States: visible},
		{Owner: "spiffe://example.org/nobody"},
		{Role: "rw"},
		{Role: "rw", Owner: "spiffe://example.org/w3", Database: "my1"},
		{Database: "pg1"},
		{States: active},
		{States: []State{StateRevoking}, Role: "admin"},
		{IDPrefix: all[len(all)/2].ID[:2]},
		{IDPrefix: all[len(all)/2].ID[:1], Role: "ro"},
		{IDPrefix: "zz"},
		{After: all[len(all)/3].ID},
		{After: all[len(all)/3].ID, Owner: "spiffe://example.org/w2"},
		{IDs: []string{all[9].ID, all[3].ID, "no-such-lease", all[3].ID, all[len(all)-1].ID}},
		{IDs: []string{all[1].ID, all[2].ID, all[40].ID, all[41].ID, all[300].ID}, States: active},
		{IDs: []string{all[5].ID, all[6].ID, all[7].ID, all[200].ID}, Owner: "spiffe://example.org/w1"},
	}
	for _, base := range queries {
		var want []Lease
		for _, l := range all {
			if base.matches(l) {
				want = append(want, l)
			}
		}
		got, err := m.List(ctx, base)
		if err != nil {
			t.Fatal(err)
		}
		if !sameIDs(got, want) {
			t.Errorf("List(%+v): %d leases, want %d", base, len(got), len(want))
		}
		// Pages of every size give the same leases in the same order,
		// whichever plan (groups or id walk) each page takes.
		for _, size := range []int{1, 7, 100, 1000} {
			q := base
			q.Limit = size
			var paged []Lease
			for range len(want) + 2 {
				page, err := m.List(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				if len(page) > size {
					t.Fatalf("page of %d with Limit %d", len(page), size)
				}
				paged = append(paged, page...)
				if len(page) < size {
					break
				}
				q.After = page[len(page)-1].ID
			}
			if !sameIDs(paged, want) {
				t.Errorf("List(%+v) by pages of %d: %d leases, want %d", base, size, len(paged), len(want))
			}
		}
	}
	owners, err := m.Owners(ctx, StateActive)
	if err != nil {
		t.Fatal(err)
	}
	var wantOwners []string
	for _, l := range all {
		if l.State == StateActive && !slices.Contains(wantOwners, l.Owner) {
			wantOwners = append(wantOwners, l.Owner)
		}
	}
	slices.Sort(wantOwners)
	if !slices.Equal(owners, wantOwners) {
		t.Errorf("Owners(ACTIVE) = %v, want %v", owners, wantOwners)
	}
}

func sameIDs(a, b []Lease) bool {
	return slices.EqualFunc(a, b, func(x, y Lease) bool { return x.ID == y.ID && x.State == y.State })
}

// TestListCostsItsOwnLeases: a workload's List looks at its own leases
// only, and a page at about its size, however many leases others hold.
func TestListCostsItsOwnLeases(t *testing.T) {
	ctx := context.Background()
	clock := newFakeClock()
	var leases []Lease
	for i := range 20_000 {
		l := makeLease(t, clock.Now(), time.Hour, time.Hour)
		l.Owner = fmt.Sprintf("spiffe://example.org/other-%d", i%100)
		l.State = StateActive
		leases = append(leases, l)
	}
	const mine = 12
	for range mine {
		l := makeLease(t, clock.Now(), time.Hour, time.Hour)
		l.Owner = "spiffe://example.org/me"
		l.State = StateActive
		leases = append(leases, l)
	}
	m, err := NewManager(Config{Store: NewMemStore(leases...), Backend: newFakeBackend(), Now: clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Load(ctx); err != nil {
		t.Fatal(err)
	}
	cost := func(q Query) (int, int) {
		t.Helper()
		m.mu.Lock()
		before := m.index.touched
		m.mu.Unlock()
		ls, err := m.List(ctx, q)
		if err != nil {
			t.Fatal(err)
		}
		m.mu.Lock()
		defer m.mu.Unlock()
		return m.index.touched - before, len(ls)
	}
	if touched, n := cost(Query{Owner: "spiffe://example.org/me", States: []State{StateActive, StateRevoking}}); n != mine || touched != mine {
		t.Errorf("owner List: %d leases, touched %d; want %d and %d", n, touched, mine, mine)
	}
	if touched, n := cost(Query{Limit: 50, After: leases[0].ID}); n != 50 || touched > 51 { // 51: the entry of After itself
		t.Errorf("page of 50: %d leases, touched %d", n, touched)
	}
	if touched, n := cost(Query{Owner: "spiffe://example.org/other-7", Limit: 10}); n != 10 || touched > 200 {
		t.Errorf("owner page of 10: %d leases, touched %d (the owner has 200)", n, touched)
	}
	m.mu.Lock()
	before := m.index.touched
	m.mu.Unlock()
	owners, err := m.Owners(ctx, StateActive)
	if err != nil || len(owners) != 101 {
		t.Fatalf("Owners: %d, %v", len(owners), err)
	}
	m.mu.Lock()
	if touched := m.index.touched - before; touched != 101 {
		t.Errorf("Owners touched %d leases, want one per owner (101)", touched)
	}
	m.mu.Unlock()
}

// TestIndexUnderConcurrency issues, revokes, expires, lists and pages at
// once (run with -race) and checks the index against the map after.
func TestIndexUnderConcurrency(t *testing.T) {
	env := newEnv(t, nil)
	ctx := context.Background()
	var wg sync.WaitGroup
	ids := make(chan string, 1000)
	for w := range 4 {
		wg.Go(func() {
			for i := range 150 {
				l := env.newLease(t, time.Duration(1+i%5)*time.Minute, time.Hour)
				l.Owner = fmt.Sprintf("spiffe://example.org/w%d", (w+i)%3)
				create := waitIntent
				if i%7 == 0 { // a failed issuance: cleaned up
					create = func(ctx context.Context, intent func(context.Context) error) error {
						if err := intent(ctx); err != nil {
							return err
						}
						return NotCreated(errDB)
					}
				}
				if _, err := env.m.Issue(ctx, l, create); err == nil {
					ids <- l.ID
				}
			}
		})
	}
	var revoker sync.WaitGroup
	revoker.Go(func() {
		for id := range ids {
			if id[0] < '8' {
				// The expiry loop may have got there first.
				if _, err := env.m.Revoke(ctx, id); err != nil && !errors.Is(err, ErrNotFound) {
					t.Errorf("Revoke: %v", err)
				}
			}
		}
	})
	stop := make(chan struct{})
	var readers sync.WaitGroup
	for r := range 2 {
		readers.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				q := Query{Owner: fmt.Sprintf("spiffe://example.org/w%d", r), Limit: 20}
				for range 10 {
					page, err := env.m.List(ctx, q)
					if err != nil {
						t.Errorf("List: %v", err)
						return
					}
					if len(page) == 0 {
						break
					}
					q.After = page[len(page)-1].ID
				}
				if _, err := env.m.Owners(ctx, StateActive); err != nil {
					t.Errorf("Owners: %v", err)
				}
				env.clock.Advance(time.Second)
				env.m.ProcessDue(ctx)
			}
		})
	}
	wg.Wait()
	close(ids)
	revoker.Wait()
	close(stop)
	readers.Wait()
	env.m.wg.Wait()
	checkIndex(t, env.m)
	env.clock.Advance(2 * time.Hour)
	for range 100 { // RevokeRate: 50 a second of the fake clock
		env.drain()
		env.clock.Advance(time.Second)
	}
	checkIndex(t, env.m)
	if ls := list(t, env.m, nil); len(ls) != 0 {
		t.Errorf("%d leases left after every expiry", len(ls))
	}
}

// BenchmarkList is the cost of the broker's lists as the leases held grow:
// a workload's own 10 leases, an admin page of 100, and the owners with an
// ACTIVE lease (the registry sweep). Each should stay flat in n (but the
// Owners row, which grows with the number of owners, 1,000 here).
//
//	go test -run '^$' -bench 'List' -benchmem ./lease/
func BenchmarkList(b *testing.B) {
	for _, n := range []int{10_000, 100_000, 1_000_000} {
		now := time.Now().UTC()
		r := rand.New(rand.NewPCG(1, 2))
		leases := make([]Lease, 0, n+10)
		for i := range n {
			l := benchLease(i, r, now)
			l.Owner = fmt.Sprintf("spiffe://example.org/orders/api-%d", i%1000)
			leases = append(leases, l)
		}
		for i := range 10 {
			l := benchLease(n+i, r, now)
			l.Owner = "spiffe://example.org/me"
			leases = append(leases, l)
		}
		m, err := NewManager(Config{Store: NewMemStore(leases...), Backend: nopBackend{}})
		if err != nil {
			b.Fatal(err)
		}
		if err := m.Load(context.Background()); err != nil {
			b.Fatal(err)
		}
		leases = nil
		ctx := context.Background()
		b.Run(fmt.Sprintf("owner/%dk", n/1000), func(b *testing.B) {
			for b.Loop() {
				if ls, err := m.List(ctx, Query{Owner: "spiffe://example.org/me", States: []State{StateActive, StateRevoking}}); err != nil || len(ls) != 10 {
					b.Fatal(len(ls), err)
				}
			}
		})
		b.Run(fmt.Sprintf("page100/%dk", n/1000), func(b *testing.B) {
			after := "8"
			for b.Loop() {
				if ls, err := m.List(ctx, Query{After: after, Limit: 100}); err != nil || len(ls) != 100 {
					b.Fatal(len(ls), err)
				}
			}
		})
		b.Run(fmt.Sprintf("owners/%dk", n/1000), func(b *testing.B) {
			for b.Loop() {
				if os, err := m.Owners(ctx, StateActive); err != nil || len(os) != 1001 {
					b.Fatal(len(os), err)
				}
			}
		})
	}
}
