package postgres

import (
	"context"
	"errors"
	"hash/fnv"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/credbroker/credbroker/plugins"
)

// grantLockKey is the advisory lock every transaction that changes object
// ACLs holds from its first such change to its end. PostgreSQL updates an
// object's ACL in place without locking the object, so two concurrent GRANTs
// (or a GRANT and the revoke inside DROP OWNED) on one table fail with
// "tuple concurrently updated". The key is fixed so that every broker
// replica on a server shares it.
var grantLockKey = func() int64 {
	h := fnv.New64a()
	h.Write([]byte("credbroker/object-acl"))
	return int64(h.Sum64())
}()

// objectGrantRE finds GRANT/REVOKE ... ON (object privileges, including
// ALTER DEFAULT PRIVILEGES) within one statement. Membership grants
// (GRANT grp TO u, CREATE ROLE ... IN ROLE grp) write pg_auth_members rows
// only and do not conflict, so they run without the lock. A false positive
// only costs serialization.
var objectGrantRE = regexp.MustCompile(`(?is)\b(?:GRANT|REVOKE)\b[^;]*?\bON\b`)

func needsACLLock(stmts []string) bool {
	return slices.ContainsFunc(stmts, objectGrantRE.MatchString)
}

// aclLock serializes ACL changes with every other broker transaction on the
// server until tx ends. It is taken just before the first ACL change rather
// than at BEGIN: CREATE ROLE ... PASSWORD costs the server a full PBKDF2 run
// (it checks the verifier is not that of an empty password), and holding
// the lock through it would serialize that too. Locks taken before it are
// on rows of the new role only, so waiting here cannot deadlock with another
// holder.
type aclLock struct {
	tx   pgx.Tx
	held bool
}

func (l *aclLock) take(ctx context.Context) error {
	if l.held {
		return nil
	}
	if _, err := l.tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", grantLockKey); err != nil {
		return err
	}
	l.held = true
	return nil
}

const (
	txAttempts  = 5
	txBaseDelay = 20 * time.Millisecond
	// rollbackTimeout bounds the rollback of a failed transaction, which
	// runs even when the caller's context is already done.
	rollbackTimeout = 5 * time.Second
)

// transient errors are worth retrying the whole transaction for.
func transient(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return false
	}
	switch pgErr.Code {
	case codeSerialization, codeDeadlock:
		return true
	case codeInternal:
		return strings.Contains(pgErr.Message, "concurrently")
	}
	return false
}

// commitError marks a failed COMMIT whose outcome is unknown: the
// connection broke after the server may have committed.
type commitError struct{ err error }

func (e *commitError) Error() string { return "commit: " + e.err.Error() }
func (e *commitError) Unwrap() error { return e.err }

// inTx runs fn in a transaction and retries the whole transaction on
// transient errors. It returns the number of attempts made.
func (db *DB) inTx(ctx context.Context, fn func(pgx.Tx) error) (int, error) {
	return retry(ctx, func() error { return db.txOnce(ctx, fn) })
}

// retry runs one attempt of a transaction again on transient errors, with
// jittered exponential backoff. It returns the number of attempts made.
func retry(ctx context.Context, once func() error) (int, error) {
	for attempt := 1; ; attempt++ {
		err := once()
		if err == nil || !transient(err) || attempt == txAttempts {
			return attempt, err
		}
		delay := txBaseDelay << (attempt - 1)
		delay += rand.N(delay)
		if plugins.Sleep(ctx, delay) != nil {
			return attempt, err
		}
	}
}

func (db *DB) txOnce(ctx context.Context, fn func(pgx.Tx) error) (err error) {
	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
			defer cancel()
			_ = tx.Rollback(rctx) // the error that matters is err; a dead connection aborts the transaction anyway
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		var pgErr *pgconn.PgError
		if errors.As(err, &pgErr) {
			return err
		}
		return &commitError{err}
	}
	return nil
}
