package lease

import (
	"container/heap"
	"math"
	"time"
)

// expiryQueue orders entries by the time they are next due (expiry for
// ACTIVE leases, next retry for REVOKING ones). It is a heap of the
// Manager's entries, each holding its due time and its position in the heap
// (kept up to date by Swap), so that Update and Remove find an entry in O(1)
// and fix it in O(log n) without a map of their own: the Manager's map finds
// the entry. It is not safe for concurrent use: the Manager locks.
//
// Modelled on etcd's server/lease/lease_queue.go and the PriorityQueue
// example of container/heap.
type expiryQueue struct {
	h entryHeap
}

func newExpiryQueue() *expiryQueue { return &expiryQueue{} }

// Len is the number of queued entries.
func (q *expiryQueue) Len() int { return len(q.h) }

// Push queues e at at, or moves it there if it is already queued.
func (q *expiryQueue) Push(e *entry, at time.Time) {
	if q.Update(e, at) {
		return
	}
	e.due = nanos(at)
	heap.Push(&q.h, e)
}

// pushAll queues es, which are not queued and whose due times are set, in
// O(n) (heap.Init) instead of n pushes of O(log n) each: what Load does
// with a million restored leases. The queue may keep es as its heap.
func (q *expiryQueue) pushAll(es []*entry) {
	if len(q.h) == 0 {
		q.h = es
	} else {
		q.h = append(q.h, es...)
	}
	for i, e := range q.h {
		e.index = int32(i)
	}
	heap.Init(&q.h)
}

// Update moves an already queued e to at with heap.Fix and reports whether
// e was queued.
func (q *expiryQueue) Update(e *entry, at time.Time) bool {
	if e.index < 0 {
		return false
	}
	e.due = nanos(at)
	heap.Fix(&q.h, int(e.index))
	return true
}

// Remove unqueues e and reports whether it was queued.
func (q *expiryQueue) Remove(e *entry) bool {
	if e.index < 0 {
		return false
	}
	heap.Remove(&q.h, int(e.index))
	return true
}

// Peek returns the earliest entry without removing it.
func (q *expiryQueue) Peek() (*entry, bool) {
	if len(q.h) == 0 {
		return nil, false
	}
	return q.h[0], true
}

// At returns when e is due, if it is queued.
func (q *expiryQueue) At(e *entry) (time.Time, bool) {
	if e.index < 0 {
		return time.Time{}, false
	}
	return e.dueTime(), true
}

// PopDue removes and returns, earliest first, up to max entries due at or
// before now.
func (q *expiryQueue) PopDue(now time.Time, max int) []*entry {
	var out []*entry
	n := nanos(now)
	for len(out) < max && len(q.h) > 0 && q.h[0].due <= n {
		out = append(out, heap.Pop(&q.h).(*entry))
	}
	return out
}

// dueTime is when e is next due in the queue.
func (e *entry) dueTime() time.Time { return time.Unix(0, e.due).UTC() }

// entryHeap implements heap.Interface. Ties are broken by id so that the
// order is deterministic.
type entryHeap []*entry

func (h entryHeap) Len() int { return len(h) }

func (h entryHeap) Less(i, j int) bool {
	if h[i].due == h[j].due {
		return h[i].id < h[j].id
	}
	return h[i].due < h[j].due
}

func (h entryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = int32(i)
	h[j].index = int32(j)
}

func (h *entryHeap) Push(x any) {
	e := x.(*entry)
	e.index = int32(len(*h))
	*h = append(*h, e)
}

func (h *entryHeap) Pop() any {
	old := *h
	n := len(old)
	e := old[n-1]
	old[n-1] = nil // let the entry be collected
	e.index = -1
	*h = old[:n-1]
	return e
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
