package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A creation sent one statement per round trip costs BEGIN, each template
// statement, ALTER ROLE … VALID UNTIL, COMMENT ON ROLE and COMMIT: five
// round trips for a one-statement template, each waking the server and the
// plugin once more, on a machine where the server's SCRAM check already
// takes most of the CPU (docs/performance.md §8). createPipelined sends the
// same statements, in the same order and the same transaction, as few
// simple queries as the guarantees allow:
//
//   - other creations in flight: once NewUserRequest.Intent returned nil,
//     "BEGIN; <template, with the ACL lock before its first object grant>;
//     ALTER ROLE …; COMMENT ON ROLE …; COMMIT" (one round trip);
//   - alone, no object grant in the template: "BEGIN; <template>; ALTER
//     ROLE …; COMMENT ON ROLE …", then, once Intent returned nil, "COMMIT"
//     (two round trips, the first overlapping the wait for the intent);
//   - an object grant at template statement k: "BEGIN; <statements before
//     k>", then Intent, then "SELECT pg_advisory_xact_lock(…); <statements
//     from k>; ALTER ROLE …; COMMENT ON ROLE …; COMMIT" (two round trips;
//     the ACL lock is held for one server-side run of the tail instead of
//     several round trips).
//
// The simple query protocol is kept (a template statement may hold several
// SQL statements, as it always could); the server runs a multi-statement
// query's statements in order and stops at the first error, so a failure
// leaves nothing committed. Which statement failed is not known from the
// reply alone: the plugin then rolls back and runs the creation again one
// statement per round trip (create.go), which reports "creation statement N
// rejected" exactly as before. Failures are a misconfigured template, not
// the common path.

// pipelinable reports whether stmts may share a query: each must end
// outside any quote or comment (endsAtTopLevel), so that none can swallow
// the statements after it.
func pipelinable(stmts []string) bool {
	for _, s := range stmts {
		if !endsAtTopLevel(s) {
			return false
		}
	}
	return true
}

// rejectedInPipeline marks a statement the server refused during
// createPipelined; create.go reruns one statement at a time to name it.
type rejectedInPipeline struct{ err *pgconn.PgError }

func (e *rejectedInPipeline) Error() string { return "statement rejected: " + e.err.Code }

// createPipelined is one attempt of a creation. stmts are the rendered
// template followed by the plugin's own statements; firstGrant is the index
// of the first template statement that changes object ACLs, or -1.
func (db *DB) createPipelined(ctx context.Context, stmts []string, firstGrant int, awaitIntent func() error) (err error) {
	busy := db.creating.Add(1) > 1 // counted before the pool wait, which is load too
	defer db.creating.Add(-1)
	conn, err := db.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release() // a connection left inside a transaction is destroyed, not reused
	pg := conn.Conn().PgConn()
	// pgconn watches a cancellable context with one goroutine per query,
	// and ending the watch waits until that goroutine has run: on a busy
	// two-core machine that was ~1.5 ms of scheduling delay per credential,
	// nearly all of this function's (runtime/trace, docs/performance.md
	// §8). The queries run unwatched instead, and ctx ending sets a past
	// deadline on the connection, which is what pgconn's default handler
	// does: the read in progress fails and the connection is closed.
	if err := ctx.Err(); err != nil {
		return err
	}
	qctx := context.WithoutCancel(ctx)
	stop := context.AfterFunc(ctx, func() { _ = pg.Conn().SetDeadline(time.Now()) })
	defer func() {
		if !stop() {
			// ctx ended while the connection was ours: its deadline may be
			// set, so it must not go back to the pool. The server rolls
			// back what it has not committed.
			cctx, cancel := context.WithTimeout(qctx, time.Second)
			defer cancel()
			_ = pg.Close(cctx)
		}
	}()
	defer func() {
		if err != nil && !pg.IsClosed() && pg.TxStatus() != 'I' {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			_ = pg.Exec(rctx, "ROLLBACK").Close() // a dead connection aborts the transaction anyway
		}
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) && !transient(err) && !unavailable(err) {
			err = &rejectedInPipeline{pgErr}
		}
	}()

	// Alone, the template overlaps the wait for the intent: the caller
	// gets its credential one round trip sooner. With other creations in
	// flight the server's CPU is the limit, and a transaction left open
	// across that wait costs it a second wake-up and a longer-lived
	// backend state per credential (~0.7 ms of server time at c8,
	// docs/performance.md §8): then, or when nothing may run before the
	// intent, the intent is awaited first and the whole transaction goes
	// in one round trip.
	first, second := pipelineQueries(stmts, firstGrant)
	if !busy && len(first) > 1 {
		if err := simpleQuery(qctx, pg, first, false); err != nil {
			return err
		}
		if err := awaitIntent(); err != nil {
			return err
		}
		return simpleQuery(qctx, pg, second, true)
	}
	if err := awaitIntent(); err != nil {
		return err
	}
	return simpleQuery(qctx, pg, append(first, second...), true)
}

// pipelineQueries splits a creation into what may run before the intent
// is durable, "BEGIN; <statements before the first object grant>", and
// the rest, "[<ACL lock>; <statements from it>;] COMMIT".
func pipelineQueries(stmts []string, firstGrant int) (first, second []string) {
	head, tail := stmts, []string(nil)
	if firstGrant >= 0 {
		head, tail = stmts[:firstGrant], stmts[firstGrant:]
	}
	first = append([]string{"BEGIN"}, head...)
	if len(tail) > 0 {
		second = append([]string{aclLockSQL}, tail...)
	}
	return first, append(second, "COMMIT")
}

// aclLockSQL is aclLock.take as a literal, for a simple query.
var aclLockSQL = fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", grantLockKey)

// simpleQuery sends stmts as one simple query. If it ends with COMMIT
// (commits), a broken connection leaves the outcome unknown (commitError),
// and a transaction the server rolled back instead of committing is an
// error.
func simpleQuery(ctx context.Context, pg *pgconn.PgConn, stmts []string, commits bool) error {
	results, err := pg.Exec(ctx, strings.Join(stmts, ";\n")).ReadAll()
	if err != nil {
		var pgErr *pgconn.PgError
		if commits && !errors.As(err, &pgErr) {
			return &commitError{err}
		}
		return err
	}
	if len(results) == 0 {
		return errors.New("no reply to the creation statements")
	}
	if commits {
		if tag := results[len(results)-1].CommandTag.String(); tag != "COMMIT" {
			return fmt.Errorf("commit: the server answered %s", tag)
		}
	}
	return nil
}

// firstObjectGrant is the index of the first template statement that
// changes object ACLs (it takes the ACL lock first), or -1.
func firstObjectGrant(template []string) int {
	for i, s := range template {
		if objectGrantRE.MatchString(s) {
			return i
		}
	}
	return -1
}
