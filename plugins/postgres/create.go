package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/credbroker/credbroker/plugins"
)

// cleanupTimeout bounds the best-effort removal of a user whose creation
// ended with an unknown commit outcome.
const cleanupTimeout = 30 * time.Second

// NewUser implements plugins.Database.
func (db *DB) NewUser(ctx context.Context, req plugins.NewUserRequest) error {
	name := req.Username
	if err := db.checkUsername(name); err != nil {
		return err
	}
	if req.Password == "" {
		return fmt.Errorf("postgres: new user %s: empty password", name)
	}
	until, err := validUntil(req.Expiration)
	if err != nil {
		return fmt.Errorf("postgres: new user %s: %w", name, err)
	}
	if err := plugins.ValidateStatements(req.Statements, true); err != nil {
		return fmt.Errorf("postgres: new user %s: %w: %w", name, plugins.ErrInvalidStatement, err)
	}
	verifier, ok := db.verifiers.take(req.Password)
	if !ok {
		if verifier, err = newScramVerifier(req.Password, db.iters); err != nil {
			return fmt.Errorf("postgres: new user %s: %w", name, err)
		}
	}
	password, err := quoteLiteral(verifier)
	if err != nil {
		return fmt.Errorf("postgres: new user %s: %w", name, err)
	}
	marker, err := quoteLiteral(db.marker)
	if err != nil {
		return fmt.Errorf("postgres: new user %s: %w", name, err)
	}
	values := map[string]string{
		plugins.PlaceholderName:       quoteIdent(name),
		plugins.PlaceholderPassword:   password,
		plugins.PlaceholderExpiration: until,
	}
	stmts := make([]string, 0, len(req.Statements)+2)
	for i, s := range req.Statements {
		r, err := plugins.Render(s, values)
		if err != nil {
			return fmt.Errorf("postgres: new user %s: creation statement %d: %w: %w", name, i+1, plugins.ErrInvalidStatement, err)
		}
		stmts = append(stmts, r)
	}
	// Whatever the template says, the server enforces the lease's expiry and
	// the role carries the marker reconciliation looks for.
	stmts = append(stmts,
		"ALTER ROLE "+quoteIdent(name)+" VALID UNTIL "+until,
		"COMMENT ON ROLE "+quoteIdent(name)+" IS "+marker,
	)

	// The role exists once the transaction commits: not before the broker's
	// record of it is durable (req.Intent). That wait overlaps the template;
	// it comes before COMMIT, or before the ACL lock if the template takes
	// it, so that no other issuance queues behind a wait for this one's
	// record.
	intentDone := req.Intent == nil
	awaitIntent := func() error {
		if intentDone {
			return nil
		}
		if err := req.Intent(ctx); err != nil {
			return intentError{err}
		}
		intentDone = true
		return nil
	}
	oneByOne := func(tx pgx.Tx) error {
		lock := aclLock{tx: tx}
		for i, s := range stmts {
			if i < len(req.Statements) && objectGrantRE.MatchString(req.Statements[i]) {
				if err := awaitIntent(); err != nil {
					return err
				}
				if err := lock.take(ctx); err != nil {
					return err
				}
			}
			if _, err := tx.Exec(ctx, s); err != nil {
				return statementFailure("creation", i, len(req.Statements), err, verifier)
			}
		}
		return awaitIntent()
	}
	var attempts int
	if pipelinable(stmts) {
		attempts, err = retry(ctx, func() error {
			return db.createPipelined(ctx, stmts, firstObjectGrant(req.Statements), awaitIntent)
		})
		if _, ok := errors.AsType[*rejectedInPipeline](err); ok && ctx.Err() == nil {
			// Nothing was committed. One statement per round trip names
			// the one the server refuses.
			more, serr := db.inTx(ctx, oneByOne)
			attempts, err = attempts+more, serr
		}
	} else {
		attempts, err = db.inTx(ctx, oneByOne)
	}
	if err == nil {
		return nil
	}
	// Without a commit nothing was created (DDL is transactional here).
	absent := true
	if _, ok := errors.AsType[*commitError](err); ok {
		// The server may have committed: remove the user rather than leave
		// one the broker will not hand out. Failing here is tolerable, the
		// broker's CREATING record drives a later cleanup.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		absent = db.DeleteUser(cctx, plugins.DeleteUserRequest{Username: name}) == nil
	}
	if absent {
		err = plugins.NotCreated(err)
	}
	op := "new user " + name
	switch {
	case ctx.Err() != nil:
		return wrap(ctx, op, err)
	case transient(err):
		return fmt.Errorf("postgres: %s: %w: still failing after %d attempts: %s", op, plugins.ErrUnavailable, attempts, err)
	case unavailable(err):
		return wrap(ctx, op, err)
	}
	return plugins.Classify(fmt.Errorf("postgres: %s: %w", op, err), adminKind(err))
}

// intentError is the broker's refusal to let the user exist
// (NewUserRequest.Intent): never retried.
type intentError struct{ error }

func (e intentError) Unwrap() error { return e.error }

// statementFailure describes the failure of stmts[i], where the first n
// statements come from the role's template (its creation or revocation
// statements: kind) and the rest are the plugin's. Its text never carries
// the verifier, which PostgreSQL may quote back in a syntax error.
func statementFailure(kind string, i, n int, err error, verifier string) error {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	if !ok || unavailable(err) || transient(err) {
		return err
	}
	what := fmt.Sprintf("%s statement %d", kind, i+1)
	if i >= n {
		what = "setting expiry and marker"
	}
	msg := plugins.Redact(pgErr.Message, verifier)
	return plugins.Classify(plugins.Rejected(fmt.Sprintf("%s rejected: %s (SQLSTATE %s)", what, msg, pgErr.Code), pgErr), adminKind(pgErr))
}
