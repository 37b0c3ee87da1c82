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

func ids(qs []queued) []string {
	out := make([]string, len(qs))
	for i, q := range qs {
		out[i] = q.id
	}
	return out
}

// checkHeap verifies the heap property and that every item knows its index.
func checkHeap(t *testing.T, q *expiryQueue) {
	t.Helper()
	if len(q.h) != len(q.byID) {
		t.Fatalf("heap has %d items, map %d", len(q.h), len(q.byID))
	}
	for i, it := range q.h {
		if it.index != i {
			t.Fatalf("item %s at %d has index %d", it.id, i, it.index)
		}
		if q.byID[it.id] != it {
			t.Fatalf("item %s not in map", it.id)
		}
		if p := (i - 1) / 2; i > 0 && q.h.Less(i, p) {
			t.Fatalf("item %d (%s) sorts before its parent %d", i, it.id, p)
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
			q := newExpiryQueue()
			for _, p := range tt.push {
				q.Push(p.id, p.at)
				checkHeap(t, q)
			}
			if first, ok := q.Peek(); ok != (len(tt.want) > 0) || (ok && first.id != tt.want[0]) {
				t.Errorf("Peek = %v, %v; want first %v", first, ok, tt.want)
			}
			got := ids(q.PopDue(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC), 1000))
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
			q := newExpiryQueue()
			for i, id := range []string{"a", "b", "c", "d"} {
				q.Push(id, at(i+1))
			}
			before := len(q.h)
			if ok := q.Update(tt.id, tt.to); ok != tt.wantOK {
				t.Fatalf("Update = %v, want %v", ok, tt.wantOK)
			}
			checkHeap(t, q)
			if len(q.h) != before {
				t.Fatalf("Update changed Len from %d to %d", before, len(q.h))
			}
			if got, ok := q.At(tt.id); tt.wantOK && (!ok || !got.Equal(tt.to)) {
				t.Errorf("At(%s) = %v, %v; want %v", tt.id, got, ok, tt.to)
			}
			if got := ids(q.PopDue(at(1000), 10)); !slices.Equal(got, tt.want) {
				t.Errorf("order = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestQueuePushExistingUpdates(t *testing.T) {
	q := newExpiryQueue()
	q.Push("a", at(1))
	q.Push("b", at(2))
	q.Push("a", at(3))
	checkHeap(t, q)
	if q.Len() != 2 {
		t.Fatalf("Len = %d, want 2", q.Len())
	}
	if got := ids(q.PopDue(at(10), 10)); !slices.Equal(got, []string{"b", "a"}) {
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
			q := newExpiryQueue()
			for _, id := range []string{"e", "c", "a", "d", "b"} {
				q.Push(id, at(int(id[0]-'a')))
			}
			for _, id := range tt.remove {
				q.Remove(id)
				checkHeap(t, q)
				if _, ok := q.At(id); ok {
					t.Fatalf("%s still queued after Remove", id)
				}
			}
			if got := ids(q.PopDue(at(1000), 10)); !slices.Equal(got, tt.want) {
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
			q := newExpiryQueue()
			for i, id := range []string{"a", "b", "c", "d", "e"} {
				q.Push(id, at(i+1))
			}
			if got := ids(q.PopDue(tt.now, tt.max)); !slices.Equal(got, tt.want) {
				t.Errorf("PopDue = %v, want %v", got, tt.want)
			}
			checkHeap(t, q)
			if q.Len() != tt.left {
				t.Errorf("Len = %d, want %d", q.Len(), tt.left)
			}
			for _, id := range tt.want {
				if _, ok := q.At(id); ok {
					t.Errorf("%s still queued after PopDue", id)
				}
			}
		})
	}
}

// TestQueueRandom checks the queue against a plain map under random
// operations.
func TestQueueRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	q := newExpiryQueue()
	ref := map[string]time.Time{}
	for step := 0; step < 5000; step++ {
		id := strconv.Itoa(r.IntN(200))
		switch op := r.IntN(10); {
		case op < 5:
			ts := at(r.IntN(1000))
			q.Push(id, ts)
			ref[id] = ts
		case op < 7:
			q.Remove(id)
			delete(ref, id)
		default:
			now := at(r.IntN(1000))
			for _, p := range q.PopDue(now, r.IntN(5)) {
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
		if first, ok := q.Peek(); ok {
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
// day, and their ids.
func benchQueue(b *testing.B) (*expiryQueue, []string) {
	b.Helper()
	r := rand.New(rand.NewPCG(3, 4))
	q := newExpiryQueue()
	keys := make([]string, benchSize)
	for i := range keys {
		keys[i] = fmt.Sprintf("%032x", i)
		q.Push(keys[i], t0.Add(time.Duration(r.Int64N(int64(24*time.Hour)))))
	}
	return q, keys
}

func BenchmarkQueuePush(b *testing.B) {
	q, _ := benchQueue(b)
	r := rand.New(rand.NewPCG(5, 6))
	keys := make([]string, b.N)
	times := make([]time.Time, b.N)
	for i := range keys {
		keys[i] = fmt.Sprintf("n%031x", i)
		times[i] = t0.Add(time.Duration(r.Int64N(int64(24 * time.Hour))))
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		q.Push(keys[i], times[i])
	}
}

func BenchmarkQueuePop(b *testing.B) {
	q, _ := benchQueue(b)
	// Add b.N more so the queue holds at least benchSize throughout.
	r := rand.New(rand.NewPCG(7, 8))
	for i := 0; i < b.N; i++ {
		q.Push(fmt.Sprintf("n%031x", i), t0.Add(time.Duration(r.Int64N(int64(24*time.Hour)))))
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
	q, keys := benchQueue(b)
	r := rand.New(rand.NewPCG(9, 10))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// A renewal: some lease moves later by up to an hour.
		id := keys[r.IntN(len(keys))]
		cur, _ := q.At(id)
		q.Update(id, cur.Add(time.Duration(r.Int64N(int64(time.Hour)))))
	}
}
