package lease

import (
	"slices"
	"strings"
	"time"
	"unique"
)

// index finds the Manager's entries by owner and role, and in id order,
// so that a List costs the leases it returns (a workload's own, a page),
// not every lease held. It is guarded by Manager.mu and holds every entry
// of Manager.leases, stored or not (a lease being begun is in both; List
// skips it).
//
// A broker holds up to a million leases packed at ~280 B each
// (docs/performance.md §4), so the index adds no map entry per lease:
//
//   - Entries already share an interned origin (role, owner, database,
//     statements). A group is the set of entries of one origin, a slice of
//     pointers with each entry's position in it (entry.gpos), so adding and
//     removing are O(1) and cost one pointer per lease. Owners and roles
//     map to their few groups.
//   - The id order is a list of sorted chunks of at most chunkMax entries
//     (a B+tree of height two): a seek is two binary searches, an insert
//     or a delete moves at most chunkMax pointers. Built in O(n) from the
//     leases a restore yields in id order (bbolt's key order), packed
//     7/8 full: about 9 B per lease.
type index struct {
	groups  map[unique.Handle[origin]]*group
	byOwner map[string][]*group
	byRole  map[string][]*group
	// requests finds the lease of an owner's request id (FindRequest):
	// one map entry per lease issued with a request id, none for the rest.
	requests map[requestKey]*entry
	ids      idList
	// states counts the indexed entries by state, so metrics read them in
	// O(states).
	states [StateExpired + 1]int
	// revoking is the REVOKING entries in the order they became REVOKING,
	// for the age of the oldest one (metrics).
	revoking revokingQueue

	// touched counts the entries queries looked at, for tests that prove
	// a query's cost.
	touched int
}

// requestKey is an owner and one of its request ids.
type requestKey struct{ owner, requestID string }

// requestKeyOf is e's key in index.requests, and false if e has none.
func requestKeyOf(e *entry) (requestKey, bool) {
	rid := e.requestID()
	if rid == "" {
		return requestKey{}, false
	}
	return requestKey{owner: e.origin.Value().owner, requestID: rid}, true
}

// group is the entries of one origin, in no order.
type group struct {
	key     unique.Handle[origin]
	members []*entry
}

func newIndex() *index {
	return &index{
		groups:  map[unique.Handle[origin]]*group{},
		byOwner: map[string][]*group{},
		byRole:  map[string][]*group{},

		requests: map[requestKey]*entry{},
	}
}

// add indexes e, which must not be indexed yet.
func (x *index) add(e *entry) {
	x.addGroup(e)
	x.ids.insert(e)
}

// addGroup puts e in its origin's group only (a restore builds the id list
// in bulk).
func (x *index) addGroup(e *entry) {
	g := x.groups[e.origin]
	if g == nil {
		g = &group{key: e.origin}
		x.groups[e.origin] = g
		o := e.origin.Value()
		x.byOwner[o.owner] = append(x.byOwner[o.owner], g)
		x.byRole[o.role] = append(x.byRole[o.role], g)
	}
	e.gpos = int32(len(g.members))
	g.members = append(g.members, e)
	x.states[e.st]++
	if k, ok := requestKeyOf(e); ok {
		x.requests[k] = e
	}
}

// remove forgets e, which must be indexed.
func (x *index) remove(e *entry) {
	g := x.groups[e.origin]
	last := g.members[len(g.members)-1]
	g.members[e.gpos] = last
	last.gpos = e.gpos
	g.members[len(g.members)-1] = nil
	g.members = g.members[:len(g.members)-1]
	e.gpos = -1
	x.states[e.st]--
	if k, ok := requestKeyOf(e); ok && x.requests[k] == e {
		delete(x.requests, k)
	}
	switch n := len(g.members); {
	case n == 0:
		delete(x.groups, g.key)
		o := g.key.Value()
		dropGroup(x.byOwner, o.owner, g)
		dropGroup(x.byRole, o.role, g)
	case cap(g.members) > 64 && n < cap(g.members)/4:
		// A mass expiry must not keep the slices of the peak.
		g.members = slices.Clone(g.members)
	}
	x.ids.remove(e)
}

// set replaces the lease of e, which must be indexed, with l (same
// origin), keeping the state counts; a lease that becomes REVOKING is
// noted with now.
func (x *index) set(e *entry, l Lease, now time.Time) {
	old := e.state()
	x.states[old]--
	e.set(l)
	x.states[e.st]++
	if old != StateRevoking && e.state() == StateRevoking {
		x.revoking.push(e, now, x.states[StateRevoking])
	}
}

// dropGroup removes g from m[k], deleting the key when it was the last.
func dropGroup(m map[string][]*group, k string, g *group) {
	gs := m[k]
	i := slices.Index(gs, g)
	gs[i] = gs[len(gs)-1]
	gs[len(gs)-1] = nil
	if gs = gs[:len(gs)-1]; len(gs) == 0 {
		delete(m, k)
		return
	}
	m[k] = gs
}

// query returns the stored entries q selects, in id order.
func (x *index) query(q Query) []*entry {
	keep := func(e *entry) bool {
		x.touched++
		return e.stored && e.id > q.After && strings.HasPrefix(e.id, q.IDPrefix) &&
			(len(q.States) == 0 || slices.Contains(q.States, e.state()))
	}
	if len(q.IDs) > 0 {
		return x.byIDs(q, keep)
	}
	// Owner or role: the groups hold the candidates, unless they are so
	// many that walking the id order to the page's end costs less
	// (a page of a role that most leases have).
	var gs []*group
	switch {
	case q.Owner != "":
		gs = x.byOwner[q.Owner]
	case q.Role != "":
		gs = x.byRole[q.Role]
	default:
		return x.walk(q, keep)
	}
	n := 0
	cands := gs[:0:0]
	for _, g := range gs {
		if q.matchOrigin(g.key) {
			cands = append(cands, g)
			n += len(g.members)
		}
	}
	if q.Limit > 0 && q.Limit*x.ids.n < n*n {
		return x.walk(q, keep)
	}
	var out []*entry
	for _, g := range cands {
		for _, e := range g.members {
			if keep(e) {
				out = append(out, e)
			}
		}
	}
	slices.SortFunc(out, func(a, b *entry) int { return strings.Compare(a.id, b.id) })
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out
}

// byIDs selects among q.IDs, each looked up in the id order.
func (x *index) byIDs(q Query, keep func(*entry) bool) []*entry {
	ids := slices.Clone(q.IDs)
	slices.Sort(ids)
	var out []*entry
	for _, id := range slices.Compact(ids) {
		c, i := x.ids.seek(id)
		if c == len(x.ids.chunks) || i == len(x.ids.chunks[c]) {
			continue
		}
		if e := x.ids.chunks[c][i]; e.id == id && q.matchOrigin(e.origin) && keep(e) {
			out = append(out, e)
			if q.Limit > 0 && len(out) == q.Limit {
				break
			}
		}
	}
	return out
}

// walk selects along the id order, from q's After or IDPrefix on.
func (x *index) walk(q Query, keep func(*entry) bool) []*entry {
	var out []*entry
	origins := map[unique.Handle[origin]]bool{} // few: each checked once
	from := max(q.After, q.IDPrefix)
	x.ids.ascend(from, func(e *entry) bool {
		if !strings.HasPrefix(e.id, q.IDPrefix) {
			return false // past the prefix's range
		}
		ok, seen := origins[e.origin]
		if !seen {
			ok = q.matchOrigin(e.origin)
			origins[e.origin] = ok
		}
		if ok && keep(e) {
			out = append(out, e)
		} else if !ok {
			x.touched++
		}
		return q.Limit <= 0 || len(out) < q.Limit
	})
	return out
}

// matchOrigin reports whether leases of origin o can match q.
func (q Query) matchOrigin(h unique.Handle[origin]) bool {
	o := h.Value()
	return (q.Owner == "" || o.owner == q.Owner) && (q.Role == "" || o.role == q.Role) &&
		(q.Database == "" || o.database == q.Database)
}

// owners returns the owners with at least one stored lease in state s.
func (x *index) owners(s State) []string {
	var out []string
	for owner, gs := range x.byOwner {
	found:
		for _, g := range gs {
			for _, e := range g.members {
				x.touched++
				if e.stored && e.state() == s {
					out = append(out, owner)
					break found
				}
			}
		}
	}
	slices.Sort(out)
	return out
}

// chunkMax bounds an idList chunk: inserting or deleting moves at most
// this many pointers (4 KB), and a million leases make ~2,300 chunks.
const (
	chunkMax  = 512
	chunkBulk = chunkMax * 7 / 8 // fill of a chunk built in bulk
)

// idList is entries in id order: a list of sorted, non-empty chunks, every
// id of a chunk below every id of the next. Each chunk has capacity
// chunkMax.
type idList struct {
	chunks [][]*entry
	n      int
}

// buildIDList returns the idList of es, sorting es first if needed (a
// boltstore yields them in id order already; a check is O(n)).
func buildIDList(es []*entry) idList {
	byID := func(a, b *entry) int { return strings.Compare(a.id, b.id) }
	if !slices.IsSortedFunc(es, byID) {
		slices.SortFunc(es, byID)
	}
	l := idList{n: len(es), chunks: make([][]*entry, 0, (len(es)+chunkBulk-1)/chunkBulk)}
	for len(es) > 0 {
		k := min(len(es), chunkBulk)
		c := make([]*entry, k, chunkMax)
		copy(c, es[:k])
		l.chunks = append(l.chunks, c)
		es = es[k:]
	}
	return l
}

// seek returns the position of the first entry whose id is id or after:
// chunk c, index i; c is len(chunks) if there is none.
func (l *idList) seek(id string) (c, i int) {
	c, _ = slices.BinarySearchFunc(l.chunks, id, func(ch []*entry, id string) int {
		return strings.Compare(ch[len(ch)-1].id, id)
	})
	if c < len(l.chunks) {
		i, _ = slices.BinarySearchFunc(l.chunks[c], id, func(e *entry, id string) int {
			return strings.Compare(e.id, id)
		})
	}
	return c, i
}

func (l *idList) insert(e *entry) {
	l.n++
	if len(l.chunks) == 0 {
		c := make([]*entry, 1, chunkMax)
		c[0] = e
		l.chunks = append(l.chunks, c)
		return
	}
	c, i := l.seek(e.id)
	if c == len(l.chunks) { // after the last
		c--
		i = len(l.chunks[c])
	}
	ch := l.chunks[c]
	if len(ch) == chunkMax {
		const half = chunkMax / 2
		right := make([]*entry, chunkMax-half, chunkMax)
		copy(right, ch[half:])
		clear(ch[half:])
		ch = ch[:half]
		l.chunks[c] = ch
		l.chunks = slices.Insert(l.chunks, c+1, right)
		if i > half {
			c, i, ch = c+1, i-half, right
		}
	}
	l.chunks[c] = slices.Insert(ch, i, e) // within capacity
}

func (l *idList) remove(e *entry) {
	c, i := l.seek(e.id)
	if c == len(l.chunks) || l.chunks[c][i] != e {
		panic("lease: index: removing an entry that is not indexed")
	}
	l.n--
	ch := slices.Delete(l.chunks[c], i, i+1)
	switch {
	case len(ch) == 0:
		l.chunks = slices.Delete(l.chunks, c, c+1)
	case c+1 < len(l.chunks) && len(ch)+len(l.chunks[c+1]) <= chunkMax/2:
		// Merge sparse neighbours, so deletions do not leave a chunk
		// (4 KB) per few leases.
		l.chunks[c] = append(ch, l.chunks[c+1]...)
		l.chunks = slices.Delete(l.chunks, c+1, c+2)
	default:
		l.chunks[c] = ch
	}
}

// ascend calls fn for each entry whose id is from or after, in order,
// until fn returns false.
func (l *idList) ascend(from string, fn func(*entry) bool) {
	c, i := l.seek(from)
	for ; c < len(l.chunks); c, i = c+1, 0 {
		for _, e := range l.chunks[c][i:] {
			if !fn(e) {
				return
			}
		}
	}
}
