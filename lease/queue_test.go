package lease

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"testing"
	"time"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(sec int) time.Time { return t0.Add(time.Duration(sec) * time.Second) }

// queued is an entry of the queue as the tests name it.
type queued struct {
	id string
	at time.Time
}

// testQueue is an expiryQueue with the map that the Manager keeps beside
// it, so that tests can name entries by id.
type testQueue struct {
	*expiryQueue
	byID map[string]*entry
}

func newTestQueue() *testQueue {
	return &testQueue{expiryQueue: newExpiryQueue(), byID: map[string]*entry{}}
}

// entry returns the entry of id, made on first use (not queued).
func (q *testQueue) entry(id string) *entry {
	e, ok := q.byID[id]
	if !ok {
		e = newEntry(Lease{ID: id})
		q.byID[id] = e
	}
	return e
}

func (q *testQueue) push(id string, at time.Time)        { q.Push(q.entry(id), at) }
func (q *testQueue) update(id string, at time.Time) bool { return q.Update(q.entry(id), at) }
func (q *testQueue) remove(id string) bool               { return q.Remove(q.entry(id)) }
func (q *testQueue) at(id string) (time.Time, bool)      { return q.At(q.entry(id)) }

func (q *testQueue) peek() (queued, bool) {
	e, ok := q.Peek()
	if !ok {
		return queued{}, false
	}
	return queued{e.id, e.dueTime()}, true
}

func (q *testQueue) popDue(now time.Time, max int) []queued {
	var out []queued
	for _, e := range q.PopDue(now, max) {
		out = append(out, queued{e.id, e.dueTime()})
	}
	return out
}

func ids(qs []queued) []string {
	out := make([]string, len(qs))
	for i, q := range qs {
		out[i] = q.id
	}
	return out
}

// checkHeap verifies the heap property, that every queued entry knows its
// index and that every other entry knows it is not queued.
func checkHeap(t *testing.T, q *testQueue) {
	t.Helper()
	queued := 0
	for id, e := range q.byID {
		if e.index < 0 {
			continue
		}
		queued++
		if int(e.index) >= len(q.h) || q.h[e.index] != e {
			t.Fatalf("entry %s has index %d, not its place in the heap", id, e.index)
		}
	}
	if len(q.h) != queued {
		t.Fatalf("heap has %d entries, %d know they are queued", len(q.h), queued)
	}
	for i, e := range q.h {
		if int(e.index) != i {
			t.Fatalf("entry %s at %d has index %d", e.id, i, e.index)
		}
		if p := (i - 1) / 2; i > 0 && q.h.Less(i, p) {
			t.Fatalf("entry %d (%s) sorts before its parent %d", i, e.id, p)
		}
	}
}

func TestQueueOrdering(t *testing.T) {
	tests := []struct {
		name string
		push []queued
		want []string
	}{
		{name: "empty", want: nil},
		{name: "ascending", push: []queued{{"a", at(1)}, {"b", at(2)}, {"c", at(3)}}, want: []string{"a", "b", "c"}},
		{name: "descending", push: []queued{{"c", at(3)}, {"b", at(2)}, {"a", at(1)}}, want: []string{"a", "b", "c"}},
		{name: "mixed", push: []queued{{"x", at(5)}, {"y", at(-1)}, {"z", at(3)}, {"w", at(0)}}, want: []string{"y", "w", "z", "x"}},
		{name: "ties by id", push: []queued{{"b", at(1)}, {"c", at(1)}, {"a", at(1)}}, want: []string{"a", "b", "c"}},
		{name: "nanoseconds", push: []queued{{"late", t0.Add(2)}, {"early", t0.Add(1)}}, want: []string{"early", "late"}},
		{name: "beyond int64 nanoseconds", push: []queued{{"y3000", time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}, {"now", t0}, {"y1000", time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC)}}, want: []string{"y1000", "now", "y3000"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newTestQueue()
			for _, p := range tt.push {
				q.push(p.id, p.at)
				checkHeap(t, q)
			}
			if first, ok := q.peek(); ok != (len(tt.want) > 0) || (ok && first.id != tt.want[0]) {
				t.Errorf("Peek = %v, %v; want first %v", first, ok, tt.want)
			}
			got := ids(q.popDue(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), 1000))
			if !slices.Equal(got, tt.want) {
				t.Errorf("PopDue order = %v, want %v", got, tt.want)
			}
			if q.Len() != 0 {
				t.Errorf("Len after popping all = %d", q.Len())
			}
		})
	}
}

func TestQueueUpdate(t *testing.T) {
	tests := []struct {
		name   string
		id     string
		to     time.Time
		want   []string
		wantOK bool
	}{
		{name: "renew moves first to last", id: "a", to: at(10), want: []string{"b", "c", "d", "a"}, wantOK: true},
		{name: "move last to first", id: "d", to: at(0), want: []string{"d", "a", "b", "c"}, wantOK: true},
		{name: "move middle later", id: "b", to: at(3).Add(time.Millisecond), want: []string{"a", "c", "b", "d"}, wantOK: true},
		{name: "same time", id: "c", to: at(3), want: []string{"a", "b", "c", "d"}, wantOK: true},
		{name: "absent", id: "zz", to: at(0), want: []string{"a", "b", "c", "d"}, wantOK: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newTestQueue()
			for i, id := range []string{"a", "b", "c", "d"} {
				q.push(id, at(i+1))
			}
			before := len(q.h)
			if ok := q.update(tt.id, tt.to); ok != tt.wantOK {
				t.Fatalf("Update = %v, want %v", ok, tt.wantOK)
			}
			checkHeap(t, q)
			if len(q.h) != before {
				t.Fatalf("Update changed Len from %d to %d", before, len(q.h))
			}
			if got, ok := q.at(tt.id); tt.wantOK && (!ok || !got.Equal(tt.to)) {
				t.Errorf("At(%s) = %v, %v; want %v", tt.id, got, ok, tt.to)
			}
			if got := ids(q.popDue(at(1000), 10)); !slices.Equal(got, tt.want) {
				t.Errorf("order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestQueuePushExistingUpdates(t *testing.T) {
	q := newTestQueue()
	q.push("a", at(1))
	q.push("b", at(2))
	q.push("a", at(3))
	checkHeap(t, q)
	if q.Len() != 2 {
		t.Fatalf("Len = %d, want 2", q.Len())
	}
	if got := ids(q.popDue(at(10), 10)); !slices.Equal(got, []string{"b", "a"}) {
		t.Errorf("order = %v", got)
	}
}

func TestQueueRemove(t *testing.T) {
	tests := []struct {
		name   string
		remove []string
		want   []string
	}{
		{name: "first", remove: []string{"a"}, want: []string{"b", "c", "d", "e"}},
		{name: "middle", remove: []string{"c"}, want: []string{"a", "b", "d", "e"}},
		{name: "last", remove: []string{"e"}, want: []string{"a", "b", "c", "d"}},
		{name: "absent", remove: []string{"x"}, want: []string{"a", "b", "c", "d", "e"}},
		{name: "twice", remove: []string{"b", "b"}, want: []string{"a", "c", "d", "e"}},
		{name: "all", remove: []string{"d", "a", "e", "b", "c"}, want: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newTestQueue()
			for _, id := range []string{"e", "c", "a", "d", "b"} {
				q.push(id, at(int(id[0]-'a')))
			}
			for _, id := range tt.remove {
				q.remove(id)
				checkHeap(t, q)
				if _, ok := q.at(id); ok {
					t.Fatalf("%s still queued after Remove", id)
				}
			}
			if got := ids(q.popDue(at(1000), 10)); !slices.Equal(got, tt.want) {
				t.Errorf("order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestQueuePopDue(t *testing.T) {
	tests := []struct {
		name string
		now  time.Time
		max  int
		want []string
		left int
	}{
		{name: "nothing due", now: at(0), max: 10, want: nil, left: 5},
		{name: "due is inclusive", now: at(1), max: 10, want: []string{"a"}, left: 4},
		{name: "only due ones", now: at(3).Add(time.Millisecond), max: 10, want: []string{"a", "b", "c"}, left: 2},
		{name: "bounded by max", now: at(100), max: 2, want: []string{"a", "b"}, left: 3},
		{name: "max zero", now: at(100), max: 0, want: nil, left: 5},
		{name: "all", now: at(100), max: 100, want: []string{"a", "b", "c", "d", "e"}, left: 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newTestQueue()
			for i, id := range []string{"a", "b", "c", "d", "e"} {
				q.push(id, at(i+1))
			}
			if got := ids(q.popDue(tt.now, tt.max)); !slices.Equal(got, tt.want) {
				t.Errorf("PopDue = %v, want %v", got, tt.want)
			}
			checkHeap(t, q)
			if q.Len() != tt.left {
				t.Errorf("Len = %d, want %d", q.Len(), tt.left)
			}
			for _, id := range tt.want {
				if _, ok := q.at(id); ok {
					t.Errorf("%s still queued after PopDue", id)
				}
			}
		})
	}
}

// TestQueuePushAll is Load's path: restored entries queued at once, into
// an empty queue or beside leases queued meanwhile (DeferLoad).
func TestQueuePushAll(t *testing.T) {
	tests := []struct {
		name     string
		queued   []queued // pushed one by one first
		restored []queued
		want     []string
	}{
		{name: "empty", want: nil},
		{name: "into empty", restored: []queued{{"c", at(3)}, {"a", at(1)}, {"b", at(2)}}, want: []string{"a", "b", "c"}},
		{name: "nothing restored", queued: []queued{{"b", at(2)}, {"a", at(1)}}, want: []string{"a", "b"}},
		{
			name:     "beside queued",
			queued:   []queued{{"x", at(2)}, {"y", at(5)}},
			restored: []queued{{"c", at(3)}, {"a", at(1)}, {"b", at(6)}, {"d", at(5)}},
			want:     []string{"a", "x", "c", "d", "y", "b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newTestQueue()
			for _, p := range tt.queued {
				q.push(p.id, p.at)
			}
			var es []*entry
			for _, p := range tt.restored {
				e := q.entry(p.id)
				e.due = nanos(p.at)
				es = append(es, e)
			}
			q.pushAll(es)
			checkHeap(t, q)
			for _, p := range tt.restored {
				if got, ok := q.at(p.id); !ok || !got.Equal(p.at) {
					t.Errorf("At(%s) = %v, %v; want %v", p.id, got, ok, p.at)
				}
			}
			if got := ids(q.popDue(at(1000), 100)); !slices.Equal(got, tt.want) {
				t.Errorf("order = %v, want %v", got, tt.want)
			}
		})
	}
}

// TestQueueRandom checks the queue against a plain map under random
// operations.
func TestQueueRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	q := newTestQueue()
	ref := map[string]time.Time{}
	for step := 0; step < 5000; step++ {
		id := strconv.Itoa(r.IntN(200))
		switch op := r.IntN(10); {
		case op < 5:
			ts := at(r.IntN(1000))
			q.push(id, ts)
			ref[id] = ts
		case op < 7:
			q.remove(id)
			delete(ref, id)
		default:
			now := at(r.IntN(1000))
			for _, p := range q.popDue(now, r.IntN(5)) {
				want, ok := ref[p.id]
				if !ok || !want.Equal(p.at) || p.at.After(now) {
					t.Fatalf("step %d: popped %v, ref %v %v, now %v", step, p, want, ok, now)
				}
				delete(ref, p.id)
			}
		}
		if step%100 == 0 {
			checkHeap(t, q)
		}
		if q.Len() != len(ref) {
			t.Fatalf("step %d: Len %d, ref %d", step, q.Len(), len(ref))
		}
		if first, ok := q.peek(); ok {
			for id, ts := range ref {
				if ts.Before(first.at) {
					t.Fatalf("step %d: Peek %v but %s is due at %v", step, first, id, ts)
				}
			}
		}
	}
}

const benchSize = 1_000_000

// benchQueue returns a queue of benchSize entries at random times within a
// day, and the entries.
func benchQueue(b *testing.B) (*expiryQueue, []*entry) {
	b.Helper()
	r := rand.New(rand.NewPCG(3, 4))
	q := newExpiryQueue()
	es := make([]*entry, benchSize)
	for i := range es {
		es[i] = newEntry(Lease{ID: fmt.Sprintf("%032x", i)})
		q.Push(es[i], t0.Add(time.Duration(r.Int64N(int64(24*time.Hour)))))
	}
	return q, es
}

func BenchmarkQueuePush(b *testing.B) {
	q, _ := benchQueue(b)
	r := rand.New(rand.NewPCG(5, 6))
	es := make([]*entry, b.N)
	times := make([]time.Time, b.N)
	for i := range es {
		es[i] = newEntry(Lease{ID: fmt.Sprintf("n%031x", i)})
		times[i] = t0.Add(time.Duration(r.Int64N(int64(24 * time.Hour))))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		q.Push(es[i], times[i])
	}
}

func BenchmarkQueuePop(b *testing.B) {
	q, _ := benchQueue(b)
	// Add b.N more so the queue holds at least benchSize throughout.
	r := rand.New(rand.NewPCG(7, 8))
	for i := 0; i < b.N; i++ {
		q.Push(newEntry(Lease{ID: fmt.Sprintf("n%031x", i)}), t0.Add(time.Duration(r.Int64N(int64(24*time.Hour)))))
	}
	end := t0.Add(48 * time.Hour)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if len(q.PopDue(end, 1)) != 1 {
			b.Fatal("queue ran dry")
		}
	}
}

func BenchmarkQueueFix(b *testing.B) {
	q, es := benchQueue(b)
	r := rand.New(rand.NewPCG(9, 10))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// A renewal: some lease moves later by up to an hour.
		e := es[r.IntN(len(es))]
		cur, _ := q.At(e)
		q.Update(e, cur.Add(time.Duration(r.Int64N(int64(time.Hour)))))
	}
}
