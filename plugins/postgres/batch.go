package postgres

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/internal/batch"
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
	// out is the call's outcome in a batch: nil (the user is absent) or
	// errAlone (run the one-user sequence). Set once, by deleteBatch.
	out  error
	done bool
}

// errAlone tells a call whose batch did not settle it to run the one-user
// sequence; it never reaches a caller.
var errAlone = errors.New("postgres: drop alone")

// dropQueue coalesces concurrent drops (package internal/batch: the first
// caller runs at once, those arriving meanwhile form the next batch).
type dropQueue = batch.Queue[*dropCall, error]

func (db *DB) newDropQueue() *dropQueue {
	return batch.New(db.runDrops, batch.Options{Max: maxDropBatch})
}

// runDrops runs one batch of the drop queue, in the goroutine of its first
// caller: a lone call is the one-user sequence with that caller's ctx; a
// batch runs on behalf of every caller in it, so it does not stop when the
// leading one gives up.
func (db *DB) runDrops(ctx context.Context, calls []*dropCall) []error {
	if len(calls) == 1 {
		return []error{db.deleteOne(ctx, calls[0])}
	}
	bctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), dropBatchTimeout)
	defer cancel()
	db.deleteBatch(bctx, calls)
	out := make([]error, len(calls))
	for i, c := range calls {
		out[i] = c.out
	}
	return out
}

// drop runs c alone or as part of a batch and returns its outcome. A caller
// whose ctx ends while queued leaves the queue; one whose user was taken
// into a running batch gets nil if the batch dropped it, and its ctx's error
// otherwise.
func (db *DB) drop(ctx context.Context, c *dropCall) error {
	err, qerr := db.drops.Do(ctx, c)
	if qerr != nil {
		return wrap(ctx, "delete "+c.name, qerr)
	}
	if err == errAlone {
		if ctx.Err() != nil {
			return wrap(ctx, "delete "+c.name, ctx.Err())
		}
		return db.deleteOne(ctx, c)
	}
	return err
}

// deleteBatch drops the users of calls together and sets each call's
// outcome: nil once its user is absent, errAlone otherwise.
func (db *DB) deleteBatch(ctx context.Context, calls []*dropCall) {
	finish := func(cs []*dropCall, err error) {
		for _, c := range cs {
			c.out, c.done = err, true
		}
	}
	defer func() {
		// Whatever went wrong (a panic), every call not yet settled runs
		// the one-user sequence.
		for _, c := range calls {
			if !c.done {
				c.out, c.done = errAlone, true
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
