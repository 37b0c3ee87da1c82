// Package batch is a leader/follower batching queue (group commit): callers
// that arrive while a batch runs wait in a queue, and when it ends the first
// of them runs the next batch for everyone queued. A lone caller never
// waits: it runs a batch of one at once. Under load each batch carries what
// arrived during the previous one, so the cost of a batch (an fsync, a round
// trip) is shared without a timer adding latency.
//
// lease/boltstore commits concurrent writes this way, and plugins/postgres
// drops concurrently revoked users this way.
//
// # Contexts
//
// A caller whose ctx ends while it is queued leaves the queue: Do returns
// ctx.Err() and its item is in no batch. Once a batch has taken the item,
// the caller waits for that batch to end and gets the item's result whatever
// happens to ctx, because the batch may already have acted on it (written
// it, dropped the user): reporting a cancellation then would lie. The batch
// runs in the goroutine of the caller that leads it, with that caller's
// ctx; a Run that acts on behalf of others should not stop when that one
// caller gives up (context.WithoutCancel).
//
// # Panics
//
// If Run panics, every other caller of that batch gets an error wrapping
// ErrPanicked, the next queued caller leads the next batch, and the panic
// continues in the leading caller's goroutine, as if it had called Run
// itself. Nobody is left waiting.
package batch

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"
)

// ErrPanicked is returned to the callers of a batch whose Run panicked in
// another caller's goroutine.
var ErrPanicked = errors.New("batch: the batch function panicked")

// Run executes one batch: items in arrival order, the leading caller's
// first. It returns one result per item, in the same order.
type Run[T, R any] func(ctx context.Context, items []T) []R

// Options tune a Queue. The zero value is a queue without bound or delay.
type Options struct {
	// Max bounds the items of one batch (0: no bound). Callers beyond it
	// stay queued for the next batch.
	Max int
	// Delay is how long a leading caller waits for others to join before
	// it takes the batch: more latency for one call, bigger batches.
	Delay time.Duration
}

// Queue batches calls of Do. It must be made with New; it is safe for
// concurrent use.
type Queue[T, R any] struct {
	run  Run[T, R]
	opts Options

	mu      sync.Mutex
	pending []*call[T, R]
	busy    bool // a caller is leading a batch, or has been asked to
}

type call[T, R any] struct {
	item T
	res  R
	err  error
	// ready (capacity 1) receives true when the call must lead the next
	// batch, false when res and err are its outcome.
	ready chan bool
}

// New returns a Queue whose batches run is.
func New[T, R any](run Run[T, R], opts Options) *Queue[T, R] {
	return &Queue[T, R]{run: run, opts: opts}
}

// Do queues item, runs it in a batch (led by this caller or another) and
// returns its result. The error is ctx.Err() if ctx ended while the item
// was queued (it was then in no batch), or wraps ErrPanicked; otherwise nil.
func (q *Queue[T, R]) Do(ctx context.Context, item T) (R, error) {
	c := &call[T, R]{item: item, ready: make(chan bool, 1)}
	q.mu.Lock()
	q.pending = append(q.pending, c)
	lead := !q.busy
	q.busy = true
	q.mu.Unlock()

	if !lead {
		select {
		case lead = <-c.ready:
		case <-ctx.Done():
			if q.abandon(c) {
				var zero R
				return zero, ctx.Err()
			}
			// Taken into a running batch: its outcome is on its way, and
			// a taken call is never asked to lead.
			lead = <-c.ready
		}
		if !lead {
			return c.res, c.err
		}
	}

	if q.opts.Delay > 0 {
		time.Sleep(q.opts.Delay)
	}
	q.runBatch(ctx, q.take())
	q.handOff()
	return c.res, c.err
}

// take removes the next batch (up to Max calls) from the front of the
// queue, where the leading caller is.
func (q *Queue[T, R]) take() []*call[T, R] {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := len(q.pending)
	if q.opts.Max > 0 {
		n = min(n, q.opts.Max)
	}
	batch := slices.Clone(q.pending[:n])
	q.pending = slices.Delete(q.pending, 0, n)
	return batch
}

// runBatch runs batch and delivers each result. If Run panics, the others
// are told, the queue moves on, and the panic goes on in this goroutine.
func (q *Queue[T, R]) runBatch(ctx context.Context, batch []*call[T, R]) {
	delivered := false
	defer func() {
		if delivered {
			return
		}
		p := recover()
		for _, c := range batch[1:] {
			c.err = fmt.Errorf("%w: %v", ErrPanicked, p)
			c.ready <- false
		}
		q.handOff()
		panic(p)
	}()
	items := make([]T, len(batch))
	for i, c := range batch {
		items[i] = c.item
	}
	res := q.run(ctx, items)
	if len(res) != len(items) {
		panic(fmt.Sprintf("batch: run returned %d results for %d items", len(res), len(items)))
	}
	for i, c := range batch {
		c.res = res[i]
		if i > 0 { // the leader reads its own without a signal
			c.ready <- false
		}
	}
	delivered = true
}

// handOff asks the first queued caller to lead the next batch, or ends the
// busy period. The request is sent under mu so that abandon sees it.
func (q *Queue[T, R]) handOff() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) > 0 {
		q.pending[0].ready <- true // queued calls receive nothing else
		return
	}
	q.busy = false
}

// abandon removes c, whose caller gave up, from the queue and reports
// whether it was still queued. If c had just been asked to lead, the next
// queued call is asked instead.
func (q *Queue[T, R]) abandon(c *call[T, R]) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := slices.Index(q.pending, c)
	if i < 0 {
		return false
	}
	q.pending = slices.Delete(q.pending, i, i+1)
	select {
	case <-c.ready: // asked to lead
		if len(q.pending) > 0 {
			q.pending[0].ready <- true
		} else {
			q.busy = false
		}
	default:
	}
	return true
}
