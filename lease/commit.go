package lease

import (
	"errors"
	"fmt"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// groupCommit makes concurrent writes share one bbolt transaction and its
// fsync without making a lone write wait. The first writer commits at once;
// writers that arrive meanwhile queue up, and when that commit ends the
// first of them commits everything queued. Under load a commit carries every
// write that arrived during the previous one; a sequential caller pays one
// commit per write and nothing more.
//
// bbolt's own Batch instead waits MaxBatchDelay (10ms) before every commit,
// which the broker paid twice per credential (profiled in
// docs/performance.md).
type groupCommit struct {
	db *bolt.DB
	// delay, if set, is how long a committing writer waits for others to
	// join before it commits (WithBatchDelay).
	delay time.Duration

	mu         sync.Mutex
	pending    []*pendingWrite
	committing bool // a writer is committing or about to
}

type pendingWrite struct {
	fn   func(*bolt.Bucket) error
	done chan error // capacity 1: the write's outcome, or errLead
}

// errLead tells a queued writer to commit the queue; it never reaches a
// caller.
var errLead = errors.New("lease: commit the queued writes")

// write runs fn in a read-write transaction on the leases bucket and
// returns once that transaction is durable (or failed). fn may run twice:
// if a shared transaction fails, each of its writes is retried alone, so
// one bad write cannot fail the others.
func (g *groupCommit) write(fn func(*bolt.Bucket) error) error {
	w := &pendingWrite{fn: fn, done: make(chan error, 1)}
	g.mu.Lock()
	g.pending = append(g.pending, w)
	lead := !g.committing
	g.committing = true
	g.mu.Unlock()
	if !lead {
		if err := <-w.done; err != errLead {
			return err
		}
	}
	if g.delay > 0 {
		time.Sleep(g.delay)
	}
	g.mu.Lock()
	batch := g.pending
	g.pending = nil
	g.mu.Unlock()

	g.commit(batch) // includes w

	g.mu.Lock()
	if len(g.pending) > 0 {
		next := g.pending[0]
		g.mu.Unlock()
		next.done <- errLead
	} else {
		g.committing = false
		g.mu.Unlock()
	}
	return <-w.done
}

func (g *groupCommit) commit(batch []*pendingWrite) {
	err := g.update(batch...)
	if err != nil && len(batch) > 1 {
		for _, w := range batch {
			w.done <- g.update(w)
		}
		return
	}
	for _, w := range batch {
		w.done <- err
	}
}

// update commits writes in one transaction. A panic inside bbolt (a corrupt
// page) becomes an error instead of leaving the queued writers waiting
// forever.
func (g *groupCommit) update(writes ...*pendingWrite) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bbolt: %v: %w", r, ErrStoreCorrupt)
		}
	}()
	return g.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		if b == nil {
			return fmt.Errorf("no %q bucket", bucketName)
		}
		for _, w := range writes {
			if err := w.fn(b); err != nil {
				return err
			}
		}
		return nil
	})
}
