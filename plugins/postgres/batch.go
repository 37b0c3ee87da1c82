package postgres

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/plugins"
)

// Concurrent DeleteUser calls are coalesced: while one revocation runs,
// the calls that arrive queue up, and the next batch drops all of them with
// the same sequence as for one user, each step naming every user at once:
//
//	SELECT rolname, marker FROM pg_roles WHERE rolname = ANY($1)
//	ALTER ROLE a NOLOGIN; ALTER ROLE b NOLOGIN; …        (one round trip)
//	terminate backends WHERE usename = ANY($1), polled until none
//	BEGIN; [advisory lock]; revocation statements of each;
//	GRANT a, b, … TO CURRENT_USER; REASSIGN OWNED BY a, b, … TO CURRENT_USER;
//	DROP OWNED BY a, b, …;
//	DROP ROLE IF EXISTS a, b, …; COMMIT
//
// A lone call never waits: it runs the one-user sequence (deleteOne) at
// once, exactly as before batching. A batch that fails for any reason (one
// user owns objects in another database, a revocation statement is
// rejected, a role was dropped concurrently) settles nothing it has not
// finished: each of its callers then runs the one-user sequence itself,
// which reports that user's own error. Bulk revocations and expiry storms
// therefore cost a few round trips and one transaction per batch instead
// of nine round trips per user (docs/performance.md).
const (
	// maxDropBatch bounds the users of one batch (statement size, lock
	// hold time).
	maxDropBatch = 128
	// dropBatchTimeout bounds a batch, which runs on behalf of callers
	// other than the one whose goroutine runs it, so it does not stop when
	// that caller gives up.
	dropBatchTimeout = 30 * time.Second
)

// dropCall is one DeleteUser waiting for, or taking part in, a batch.
type dropCall struct {
	name    string
	revoke  []string // rendered revocation statements
	aclLock bool     // the revocation statements change object ACLs
	// done (capacity 1) receives nil (the user is absent), errAlone (run
	// the one-user sequence) or, while queued, errLead (run the next batch).
	done chan error
}

var (
	errLead  = errors.New("postgres: lead the next drop batch")
	errAlone = errors.New("postgres: drop alone")
)

// dropQueue holds the calls waiting for the batch in progress.
type dropQueue struct {
	mu      sync.Mutex
	pending []*dropCall
	busy    bool // a caller is running a batch (or a lone deleteOne)
}

// drop runs c alone or as part of a batch and returns its outcome.
func (db *DB) drop(ctx context.Context, c *dropCall) error {
	c.done = make(chan error, 1)
	q := &db.drops
	q.mu.Lock()
	q.pending = append(q.pending, c)
	lead := !q.busy
	q.busy = true
	q.mu.Unlock()

	if !lead {
		select {
		case err := <-c.done:
			if err != errLead {
				return db.settle(ctx, c, err)
			}
		case <-ctx.Done():
			if q.abandon(c) {
				return wrap(ctx, "delete "+c.name, ctx.Err())
			}
			// Taken into a running batch: its outcome is on its way.
			if err := <-c.done; err == nil {
				return nil
			}
			return wrap(ctx, "delete "+c.name, ctx.Err())
		}
	}

	// Leading: everything queued so far, c first.
	batch := q.take()
	if len(batch) == 1 {
		err := db.deleteOne(ctx, c)
		q.handOff()
		return err
	}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropBatchTimeout)
	db.deleteBatch(bctx, batch)
	cancel()
	q.handOff()
	return db.settle(ctx, c, <-c.done)
}

func (db *DB) settle(ctx context.Context, c *dropCall, err error) error {
	if err == errAlone {
		return db.deleteOne(ctx, c)
	}
	return err
}

// take removes up to maxDropBatch calls from the front of the queue.
func (q *dropQueue) take() []*dropCall {
	q.mu.Lock()
	defer q.mu.Unlock()
	n := min(len(q.pending), maxDropBatch)
	batch := slices.Clone(q.pending[:n])
	q.pending = slices.Delete(q.pending, 0, n)
	return batch
}

// handOff makes the first queued call lead the next batch, or ends the
// busy period. The wake-up is sent under mu so that abandon sees it.
func (q *dropQueue) handOff() {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) > 0 {
		q.pending[0].done <- errLead // queued calls receive nothing else
		return
	}
	q.busy = false
}

// abandon removes c, whose caller gave up, from the queue and reports
// whether it was still queued. If c had just been asked to lead, the next
// queued call is asked instead.
func (q *dropQueue) abandon(c *dropCall) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	i := slices.Index(q.pending, c)
	if i < 0 {
		return false
	}
	q.pending = slices.Delete(q.pending, i, i+1)
	select {
	case <-c.done: // errLead
		if len(q.pending) > 0 {
			q.pending[0].done <- errLead
		} else {
			q.busy = false
		}
	default:
	}
	return true
}

// deleteBatch drops the users of calls together and sends each call its
// outcome: nil once its user is absent, errAlone otherwise.
func (db *DB) deleteBatch(ctx context.Context, calls []*dropCall) {
	finish := func(cs []*dropCall, err error) {
		for _, c := range cs {
			c.done <- err
		}
	}
	defer func() {
		// Whatever went wrong (a panic), no caller is left waiting; the
		// ones already answered have a full channel.
		for _, c := range calls {
			select {
			case c.done <- errAlone:
			default:
			}
		}
	}()

	names := make([]string, len(calls))
	for i, c := range calls {
		names[i] = c.name
	}
	rows, err := db.pool.Query(ctx,
		"SELECT rolname, shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = ANY($1)", names)
	if err != nil {
		finish(calls, errAlone)
		return
	}
	markers := map[string]*string{}
	var name string
	var marker *string
	_, err = pgx.ForEachRow(rows, []any{&name, &marker}, func() error {
		markers[name] = marker
		return nil
	})
	if err != nil {
		finish(calls, errAlone)
		return
	}
	var todo []*dropCall
	for _, c := range calls {
		m, exists := markers[c.name]
		switch {
		case !exists:
			finish([]*dropCall{c}, nil)
		case m == nil || *m != db.marker:
			finish([]*dropCall{c}, errAlone) // refused, with its own message
		default:
			todo = append(todo, c)
		}
	}
	if len(todo) == 0 {
		return
	}

	names = names[:0]
	idents := make([]string, len(todo))
	var nologin strings.Builder
	needLock := false
	for i, c := range todo {
		names = append(names, c.name)
		idents[i] = quoteIdent(c.name)
		nologin.WriteString("ALTER ROLE " + idents[i] + " NOLOGIN;")
		needLock = needLock || c.aclLock
	}
	list := strings.Join(idents, ", ")
	// One simple-protocol query: the statements run in one implicit
	// transaction, so they all take effect or none does.
	if _, err := db.pool.Exec(ctx, nologin.String()); err != nil {
		finish(todo, errAlone)
		return
	}
	if err := db.endSessionsOf(ctx, names); err != nil {
		finish(todo, errAlone)
		return
	}
	_, err = db.inTx(ctx, func(tx pgx.Tx) error {
		need := needLock
		if !need {
			if err := tx.QueryRow(ctx, `
				SELECT EXISTS (SELECT 1 FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
				WHERE d.refclassid = 'pg_authid'::regclass AND d.deptype = 'a' AND r.rolname = ANY($1))`,
				names).Scan(&need); err != nil {
				return err
			}
		}
		if need {
			lock := aclLock{tx: tx}
			if err := lock.take(ctx); err != nil {
				return err
			}
		}
		for _, c := range todo {
			for _, s := range c.revoke {
				if _, err := tx.Exec(ctx, s); err != nil {
					return err
				}
			}
		}
		for _, s := range []string{
			"GRANT " + list + " TO CURRENT_USER", // see DeleteUser
			"REASSIGN OWNED BY " + list + " TO CURRENT_USER",
			"DROP OWNED BY " + list,
			"DROP ROLE IF EXISTS " + list,
		} {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		finish(todo, errAlone)
		return
	}
	finish(todo, nil)
}

// endSessionsOf terminates every backend of the users and returns once
// pg_stat_activity shows none. NOLOGIN is already committed, so the count
// can only go down; terminating again on each round catches a backend that
// was still authenticating during the previous one.
func (db *DB) endSessionsOf(ctx context.Context, names []string) error {
	return plugins.UntilNone(ctx, func(ctx context.Context) (int, error) {
		// The count is of backends present in this round's snapshot, each
		// of which has just been signalled.
		var seen int
		err := db.pool.QueryRow(ctx,
			"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = ANY($1)", names).Scan(&seen)
		return seen, err
	})
}
