package boltstore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/internal/batch"
	"github.com/credbroker/credbroker/lease"
)

// Tuning of the log (wal.go); variables for tests.
var (
	// rotateBytes and rotateEvery: once the active segment holds this many
	// bytes of frames, or its oldest frame is this old, the next write
	// moves to the other segment (if free) and the active one's writes are
	// checkpointed.
	rotateBytes = 4 << 20
	rotateEvery = time.Second
	// segmentMax is how large a segment grows while the other's checkpoint
	// is still running; a write that would pass it waits for that
	// checkpoint.
	segmentMax int64 = 64 << 20
	// checkpointRetry is how long a failed checkpoint waits before it is
	// tried again (its writes are safe in the log meanwhile).
	checkpointRetry = time.Second
	// checkpointWait bounds how long a write, read or Close waits for a
	// checkpoint in progress before it fails with ErrStoreUnavailable.
	checkpointWait = 10 * time.Second
)

var errClosed = errors.New("store closed")

// bulkFill is the leases bucket's FillPercent in a PutAll: filling pages
// to 90% instead of half suits appends in key order; random writes later
// split pages as usual.
const bulkFill = 0.9

// What a request asks of the group commit.
type reqKind int

const (
	reqWrite reqKind = iota // log ops
	reqBulk                 // apply ops to the bbolt file directly (PutAll)
	reqFlush                // apply everything logged, for a read
	reqClose                // apply everything logged and mark the store clean
)

type request struct {
	kind reqKind
	ops  []op
}

// groupCommit makes concurrent writes share one frame of the log and its
// fdatasync without making a lone write wait (package internal/batch): the
// first writer commits at once; writers that arrive meanwhile queue up, and
// when that commit ends the first of them commits everything queued. Under
// load a commit carries every write that arrived during the previous one; a
// sequential caller pays one small write and one fdatasync per write.
//
// The batch's leader owns the log's write side (the fields above mu); the
// checkpoint goroutine works on what a rotation handed it (the fields
// below).
type groupCommit struct {
	db      *bolt.DB
	q       *batch.Queue[request, error]
	observe lease.CommitObserver // nil: none

	id       []byte // the log's (walID)
	segs     [2]*os.File
	active   int       // segment frames are appended to
	off      int64     // where the next frame goes in it
	seq      uint64    // of the last frame written (or applied, at open)
	cur      []op      // logged in the active segment, not yet applied
	curBytes int       // their frames' size
	curSince time.Time // when the first of them was logged
	closed   bool
	buf      []byte

	mu          sync.Mutex
	flushing    []op          // the other segment's writes, being applied
	flushingSeq uint64        // its last frame
	flushed     chan struct{} // nil: the other segment is free; closed when it becomes free
	ckErr       error         // the last checkpoint's error
	kick        chan struct{}
	stop, done  chan struct{}
}

// newGroupCommit returns the group commit of db, whose log replay left as
// log. delay, if set, is how long a committing writer waits for others to
// join before it commits (WithBatchDelay); observe, if set, is told of
// every commit.
func newGroupCommit(db *bolt.DB, log replayed, delay time.Duration, observe lease.CommitObserver) *groupCommit {
	g := &groupCommit{
		db: db, observe: observe, segs: log.segs, seq: log.seq, id: log.id,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
	}
	g.q = batch.New(g.commit, batch.Options{Delay: delay})
	go g.checkpoints()
	return g
}

// write logs ops and returns once they are durable (or failed). A writer
// whose ctx ends while it waits for the commit before its own gets ctx's
// error and has written nothing; once its commit has started it gets that
// commit's outcome.
func (g *groupCommit) write(ctx context.Context, kind reqKind, ops ...op) error {
	for _, o := range ops {
		if err := o.check(); err != nil {
			return fmt.Errorf("%w: %w", lease.ErrInvalid, err)
		}
	}
	err, qerr := g.q.Do(ctx, request{kind: kind, ops: ops})
	return cmp.Or(qerr, err)
}

// flush applies everything logged to the bbolt file, so a read of it sees
// every write that returned.
func (g *groupCommit) flush(ctx context.Context) error {
	return g.write(ctx, reqFlush)
}

// close applies everything logged, marks the store clean and stops the
// checkpoints. Later requests fail.
func (g *groupCommit) close() error {
	err := g.write(context.Background(), reqClose)
	close(g.stop)
	<-g.done
	return cmp.Or(err, closeSegs(g.segs))
}

// commit is one batch of the queue.
func (g *groupCommit) commit(_ context.Context, reqs []request) []error {
	start := time.Now()
	writes, direct, closing, fill := 0, false, false, 0.0
	var ops []op
	for _, r := range reqs {
		switch r.kind {
		case reqWrite:
			writes++
		case reqBulk:
			writes++
			direct, fill = true, bulkFill
		case reqFlush:
			direct = true
		case reqClose:
			direct, closing = true, true
		}
		ops = append(ops, r.ops...)
	}
	var err error
	switch {
	case g.closed:
		err = errClosed
	case direct:
		err = g.apply(ops, closing, fill)
		g.closed = closing
	default:
		err = g.log(ops)
	}
	if g.observe != nil && writes > 0 {
		g.observe(writes, time.Since(start), err)
	}
	out := make([]error, len(reqs))
	for i := range out {
		out[i] = err
	}
	return out
}

// log appends one frame of ops to the active segment and syncs it. A
// failed write or sync leaves off and seq as they were: the next frame
// overwrites whatever of this one reached the file.
func (g *groupCommit) log(ops []op) error {
	g.buf = appendFrame(g.buf[:0], g.id, g.seq+1, ops)
	if g.off+int64(len(g.buf)) > segmentMax {
		if err := g.waitCheckpoint(); err != nil {
			return err
		}
		g.rotate()
	}
	f := g.segs[g.active]
	if _, err := f.WriteAt(g.buf, g.off); err != nil {
		return fmt.Errorf("write-ahead log: %w", err)
	}
	if err := datasync(f); err != nil {
		return fmt.Errorf("write-ahead log: sync: %w", err)
	}
	now := time.Now()
	if len(g.cur) == 0 {
		g.curSince = now
	}
	g.off += int64(len(g.buf))
	g.seq++
	g.cur = append(g.cur, ops...)
	g.curBytes += len(g.buf)
	if g.curBytes >= rotateBytes || now.Sub(g.curSince) >= rotateEvery {
		g.mu.Lock()
		free := g.flushed == nil
		g.mu.Unlock()
		if free {
			g.rotate()
		}
	}
	return nil
}

// rotate hands the active segment's writes to the checkpoint goroutine
// and makes the other segment, which must be free, active.
func (g *groupCommit) rotate() {
	g.mu.Lock()
	g.flushing, g.flushingSeq, g.flushed = g.cur, g.seq, make(chan struct{})
	g.mu.Unlock()
	g.cur, g.curBytes = nil, 0
	g.active, g.off = 1-g.active, 0
	select {
	case g.kick <- struct{}{}:
	default:
	}
}

// apply writes everything logged, then ops, to the bbolt file in one
// fsynced transaction, with clean recorded (fill: update's). Every frame written is then
// applied: the active segment is overwritten from its start.
func (g *groupCommit) apply(ops []op, clean bool, fill float64) error {
	if err := g.waitCheckpoint(); err != nil {
		return err
	}
	if len(g.cur) == 0 && len(ops) == 0 && !clean {
		return nil
	}
	all := append(g.cur[:len(g.cur):len(g.cur)], ops...)
	if err := update(g.db, all, g.seq, clean, fill, nil); err != nil {
		return err
	}
	g.cur, g.curBytes, g.off = nil, 0, 0
	return nil
}

// waitCheckpoint waits until no checkpoint is in progress, at most
// checkpointWait.
func (g *groupCommit) waitCheckpoint() error {
	g.mu.Lock()
	done := g.flushed
	g.mu.Unlock()
	if done == nil {
		return nil
	}
	t := time.NewTimer(checkpointWait)
	defer t.Stop()
	select {
	case <-done:
		return nil
	case <-t.C:
		g.mu.Lock()
		err := cmp.Or(g.ckErr, errors.New("still running"))
		g.mu.Unlock()
		return fmt.Errorf("checkpoint of the write-ahead log not done after %s: %w", checkpointWait, err)
	}
}

// checkpoints applies each rotated segment's writes to the bbolt file, and
// retries a failed checkpoint until it succeeds or the store closes.
func (g *groupCommit) checkpoints() {
	defer close(g.done)
	for {
		select {
		case <-g.stop:
			return
		case <-g.kick:
		}
		for {
			g.mu.Lock()
			ops, seq, done := g.flushing, g.flushingSeq, g.flushed
			g.mu.Unlock()
			if done == nil {
				break
			}
			start := time.Now()
			err := update(g.db, ops, seq, false, 0, nil)
			if err != nil && g.observe != nil {
				// Its writes are safe in the log, but the log fills until
				// a checkpoint succeeds: an operator must hear of it.
				g.observe(len(ops), time.Since(start), err)
			}
			g.mu.Lock()
			g.ckErr = err
			if err == nil {
				g.flushing, g.flushed = nil, nil
			}
			g.mu.Unlock()
			if err == nil {
				close(done)
				break
			}
			select {
			case <-g.stop:
				return
			case <-time.After(checkpointRetry):
			}
		}
	}
}

// leases is the leases bucket of tx, which update has checked.
func leases(tx *bolt.Tx) *bolt.Bucket { return tx.Bucket(bucketName) }
