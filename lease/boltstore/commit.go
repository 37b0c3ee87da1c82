package boltstore

import (
	"context"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/internal/batch"
	"github.com/credbroker/credbroker/lease"
)

// groupCommit makes concurrent writes share one bbolt transaction and its
// fsync without making a lone write wait (package internal/batch): the
// first writer commits at once; writers that arrive meanwhile queue up, and
// when that commit ends the first of them commits everything queued. Under
// load a commit carries every write that arrived during the previous one; a
// sequential caller pays one commit per write and nothing more.
//
// bbolt's own Batch instead waits MaxBatchDelay (10ms) before every commit,
// which the broker paid twice per credential (profiled in
// docs/performance.md).
type groupCommit struct {
	db      *bolt.DB
	q       *batch.Queue[func(*bolt.Tx) error, error]
	observe lease.CommitObserver // nil: none
}

// newGroupCommit returns the group commit of db. delay, if set, is how long
// a committing writer waits for others to join before it commits
// (WithBatchDelay); observe, if set, is told of every commit.
func newGroupCommit(db *bolt.DB, delay time.Duration, observe lease.CommitObserver) *groupCommit {
	g := &groupCommit{db: db, observe: observe}
	g.q = batch.New(g.commit, batch.Options{Delay: delay})
	return g
}

// write runs fn in a read-write transaction and returns once that
// transaction is durable (or failed). fn may run twice: if a shared
// transaction fails, each of its writes is retried alone, so one bad write
// cannot fail the others. A writer whose ctx ends while it waits for the
// commit before its own gets ctx's error and has written nothing; once its
// commit has started it gets that commit's outcome.
func (g *groupCommit) write(ctx context.Context, fn func(*bolt.Tx) error) error {
	err, qerr := g.q.Do(ctx, fn)
	if qerr != nil {
		return qerr
	}
	return err
}

// commit is one batch of the queue.
func (g *groupCommit) commit(_ context.Context, writes []func(*bolt.Tx) error) []error {
	out := make([]error, len(writes))
	start := time.Now()
	err := g.update(writes...)
	if g.observe != nil {
		defer func() { g.observe(len(writes), time.Since(start), err) }()
	}
	if err != nil && len(writes) > 1 {
		for i, w := range writes {
			out[i] = g.update(w)
		}
		return out
	}
	for i := range out {
		out[i] = err
	}
	return out
}

// update commits writes in one transaction. A panic inside bbolt (a corrupt
// page) becomes an error instead of leaving the queued writers waiting.
func (g *groupCommit) update(writes ...func(*bolt.Tx) error) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bbolt: %v: %w", r, errCorrupt)
		}
	}()
	return g.db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketName) == nil {
			return fmt.Errorf("no %q bucket", bucketName)
		}
		for _, w := range writes {
			if err := w(tx); err != nil {
				return err
			}
		}
		return nil
	})
}

// leases is the leases bucket of tx, which update has checked.
func leases(tx *bolt.Tx) *bolt.Bucket { return tx.Bucket(bucketName) }
