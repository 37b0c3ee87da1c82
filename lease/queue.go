package lease

import (
	"container/heap"
	"math"
	"time"
)

// queued is one entry of the expiry queue: lease id and the time it is due.
type queued struct {
	id string
	at time.Time
}

// qitem is a queued entry plus its position in the heap, kept up to date by
// Swap so that Update and Remove find it in O(1) and fix it in O(log n).
// The time is kept as Unix nanoseconds: comparing int64s is what the heap
// does most (valid for the years 1678 to 2262).
type qitem struct {
	id    string
	at    int64
	index int
}

func (it *qitem) queued() queued {
	return queued{id: it.id, at: time.Unix(0, it.at).UTC()}
}

// expiryQueue orders leases by the time they are next due (expiry for ACTIVE
// leases, next retry for REVOKING ones). A map finds an item by id; the heap
// finds the earliest. It is not safe for concurrent use: the Manager locks.
//
// Modelled on etcd's server/lease/lease_queue.go and the PriorityQueue
// example of container/heap.
type expiryQueue struct {
	h    itemHeap
	byID map[string]*qitem
}

func newExpiryQueue() *expiryQueue {
	return &expiryQueue{byID: make(map[string]*qitem)}
}

// Len is the number of queued ids.
func (q *expiryQueue) Len() int { return len(q.h) }

// Push queues id at at, or moves it there if it is already queued.
func (q *expiryQueue) Push(id string, at time.Time) {
	if q.Update(id, at) {
		return
	}
	it := &qitem{id: id, at: nanos(at)}
	q.byID[id] = it
	heap.Push(&q.h, it)
}

// pushItems queues the ids of items, whose id and at are set, in O(n)
// (heap.Init) instead of n pushes of O(log n) each. The queue keeps
// pointers into items, one allocation instead of one per lease: what Load
// does with a million restored leases. An id already queued is moved to
// its new time instead, as Push would.
func (q *expiryQueue) pushItems(items []qitem) {
	if len(q.h) == 0 {
		q.h = make(itemHeap, 0, len(items))
		q.byID = make(map[string]*qitem, len(items))
	}
	for i := range items {
		it := &items[i]
		if old, ok := q.byID[it.id]; ok {
			old.at = it.at
			continue
		}
		it.index = len(q.h)
		q.byID[it.id] = it
		q.h = append(q.h, it)
	}
	heap.Init(&q.h)
}

// Update moves an already queued id to at with heap.Fix and reports whether
// the id was queued.
func (q *expiryQueue) Update(id string, at time.Time) bool {
	it, ok := q.byID[id]
	if !ok {
		return false
	}
	it.at = nanos(at)
	heap.Fix(&q.h, it.index)
	return true
}

// Remove unqueues id and reports whether it was queued.
func (q *expiryQueue) Remove(id string) bool {
	it, ok := q.byID[id]
	if !ok {
		return false
	}
	heap.Remove(&q.h, it.index)
	delete(q.byID, id)
	return true
}

// Peek returns the earliest entry without removing it.
func (q *expiryQueue) Peek() (queued, bool) {
	if len(q.h) == 0 {
		return queued{}, false
	}
	return q.h[0].queued(), true
}

// At returns when id is due, if it is queued.
func (q *expiryQueue) At(id string) (time.Time, bool) {
	it, ok := q.byID[id]
	if !ok {
		return time.Time{}, false
	}
	return time.Unix(0, it.at).UTC(), true
}

// PopDue removes and returns, earliest first, up to max entries due at or
// before now.
func (q *expiryQueue) PopDue(now time.Time, max int) []queued {
	var out []queued
	n := nanos(now)
	for len(out) < max && len(q.h) > 0 && q.h[0].at <= n {
		it := heap.Pop(&q.h).(*qitem)
		delete(q.byID, it.id)
		out = append(out, it.queued())
	}
	return out
}

// itemHeap implements heap.Interface. Ties are broken by id so that the
// order is deterministic.
type itemHeap []*qitem

func (h itemHeap) Len() int { return len(h) }

func (h itemHeap) Less(i, j int) bool {
	if h[i].at == h[j].at {
		return h[i].id < h[j].id
	}
	return h[i].at < h[j].at
}

func (h itemHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}

func (h *itemHeap) Push(x any) {
	it := x.(*qitem)
	it.index = len(*h)
	*h = append(*h, it)
}

func (h *itemHeap) Pop() any {
	old := *h
	n := len(old)
	it := old[n-1]
	old[n-1] = nil // let the item be collected
	it.index = -1
	*h = old[:n-1]
	return it
}

var (
	minNanos = time.Unix(0, math.MinInt64)
	maxNanos = time.Unix(0, math.MaxInt64)
)

// nanos is t.UnixNano clamped to what an int64 holds, so that an absurd
// time sorts first or last instead of wrapping around.
func nanos(t time.Time) int64 {
	switch {
	case t.Before(minNanos):
		return math.MinInt64
	case t.After(maxNanos):
		return math.MaxInt64
	}
	return t.UnixNano()
}
