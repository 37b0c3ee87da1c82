package mysql

import (
	"context"
	"fmt"
	"math/rand/v2"
	"regexp"
	"time"

	"github.com/credbroker/credbroker/plugins"
)

// cleanupTimeout bounds the removal of a half-made user, which runs even
// when the caller's context is done.
const cleanupTimeout = 30 * time.Second

// Where {{password}} (a mysql_native_password hash) may stand. In any other
// place the server would take the hash for a plaintext password (the user
// could not log in) or reject it; refusing early says why.
var (
	// IDENTIFIED BY PASSWORD '<hash>': MariaDB, MySQL 5.7.
	byPasswordRE = regexp.MustCompile(`(?is)\bIDENTIFIED\s+BY\s+PASSWORD\s*$`)
	// IDENTIFIED WITH mysql_native_password AS '<hash>': MySQL 5.7/8,
	// MariaDB; IDENTIFIED VIA ... USING '<hash>': MariaDB.
	nativeAsRE = regexp.MustCompile("(?is)\\bIDENTIFIED\\s+(?:WITH|VIA)\\s+['\"`]?mysql_native_password['\"`]?\\s+(?:AS|USING)\\s*$")
	// SET PASSWORD FOR {{name}} = '<hash>': MariaDB only (MySQL 8 reads the
	// literal as a plaintext password).
	setPasswordRE   = regexp.MustCompile(`(?is)^\s*SET\s+PASSWORD\b.*=\s*$`)
	passwordPlaceRE = regexp.MustCompile(`\{\{\s*password\s*\}\}`)
)

// checkPasswordClauses refuses a {{password}} the flavour (nil: any) would
// not read as a hash.
func checkPasswordClauses(stmts []string, f *flavour) error {
	mariaDB := f == nil || *f == flavourMariaDB
	for i, s := range stmts {
		for _, loc := range passwordPlaceRE.FindAllStringIndex(s, -1) {
			before := s[:loc[0]]
			switch {
			case nativeAsRE.MatchString(before):
			case mariaDB && (byPasswordRE.MatchString(before) || setPasswordRE.MatchString(before)):
			case f != nil && !mariaDB && byPasswordRE.MatchString(before):
				return fmt.Errorf("statement %d: MySQL 8 has no IDENTIFIED BY PASSWORD; write IDENTIFIED WITH mysql_native_password AS {{password}}", i+1)
			default:
				return fmt.Errorf("statement %d: {{password}} is a mysql_native_password hash and must follow IDENTIFIED BY PASSWORD (MariaDB) or IDENTIFIED WITH mysql_native_password AS", i+1)
			}
		}
	}
	return nil
}

// NewUser implements plugins.Database. Statements run one by one, each
// committing on its own (MySQL has no transactional DDL); if one fails, the
// user is dropped again before NewUser returns, and plugins.ErrNotCreated
// is reported only once that drop is confirmed.
func (db *DB) NewUser(ctx context.Context, req plugins.NewUserRequest) error {
	name := req.Username
	if err := db.checkUsername(name); err != nil {
		return err
	}
	op := "new user " + name
	// Nothing has been sent before the first statement: every early return
	// is marked not created.
	if req.Password == "" {
		return plugins.NotCreated(fmt.Errorf("mysql: %s: empty password", op))
	}
	exp, err := quoteTime(req.Expiration)
	if err != nil {
		return plugins.NotCreated(fmt.Errorf("mysql: %s: %w", op, err))
	}
	if err := plugins.ValidateStatements(req.Statements, true); err != nil {
		return plugins.NotCreated(fmt.Errorf("mysql: %s: %w: %w", op, plugins.ErrInvalidStatement, err))
	}
	info, err := db.serverInfo(ctx)
	if err != nil {
		return plugins.NotCreated(err)
	}
	if len(name) > info.nameLimit {
		return plugins.NotCreated(fmt.Errorf("mysql: %s: %w: longer than the server's limit of %d characters", op, plugins.ErrInvalidUsername, info.nameLimit))
	}
	if err := checkPasswordClauses(req.Statements, &info.flavour); err != nil {
		return plugins.NotCreated(fmt.Errorf("mysql: %s: %w: %w", op, plugins.ErrInvalidStatement, err))
	}
	acct, err := account(name, db.host)
	if err != nil {
		return plugins.NotCreated(fmt.Errorf("mysql: %s: %w", op, err))
	}
	hash := nativeHash(req.Password)
	values := map[string]string{
		plugins.PlaceholderName:       acct,
		plugins.PlaceholderPassword:   "'" + hash + "'", // [*0-9A-F], nothing to escape
		plugins.PlaceholderExpiration: exp,
	}
	stmts := make([]string, 0, len(req.Statements))
	for i, s := range req.Statements {
		r, err := plugins.Render(s, values)
		if err != nil {
			return plugins.NotCreated(fmt.Errorf("mysql: %s: creation statement %d: %w: %w", op, i+1, plugins.ErrInvalidStatement, err))
		}
		stmts = append(stmts, r)
	}

	// One connection for the whole template, so session settings a
	// statement makes hold for the next.
	conn, err := db.pool.Conn(ctx)
	if err != nil {
		return plugins.NotCreated(wrap(ctx, op, db.scrubbed(err), unavailable(err)))
	}
	failure := db.ensureMarker(ctx, conn)
	if failure != nil {
		_ = conn.Close()
		failure = statementFailure("creating the marker role", failure)
		return plugins.NotCreated(wrap(ctx, op, failure, unavailable(failure)))
	}
	// CREATE USER commits at once (DDL is not transactional here): the
	// broker's record of the user must be durable before it is sent.
	if req.Intent != nil {
		if err := req.Intent(ctx); err != nil {
			_ = conn.Close()
			return plugins.NotCreated(fmt.Errorf("mysql: %s: %w", op, err))
		}
	}
	failure = db.runCreation(ctx, conn, stmts, acct, hash, req.Password)
	// Back to the pool (a broken one is discarded) before the cleanup
	// below, which needs a connection of its own: with a pool of one it
	// would wait forever.
	_ = conn.Close()
	if failure == nil {
		return nil
	}

	// The statements before the failing one have committed. Drop whatever
	// exists of the user, whether the caller is still waiting or not.
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	cleanup := db.DeleteUser(cctx, plugins.DeleteUserRequest{Username: name})
	err2 := wrap(ctx, op, failure, unavailable(failure))
	// Only a statement the server answered has a known outcome: after a
	// broken connection or a cancelled call the server may still be
	// running the statement, and a drop that raced ahead of it proves
	// nothing. The broker then keeps revoking until the user is gone.
	if cleanup == nil && outcomeKnown(failure) {
		return plugins.NotCreated(err2)
	}
	if cleanup != nil {
		return fmt.Errorf("%w (removing the half-made user failed too, it will be retried: %v)", err2, cleanup)
	}
	return err2
}

// runCreation runs the rendered creation statements, then marks the user
// with the marker role: last, like PostgreSQL's COMMENT, so a user is only
// ever listed once the template is through.
func (db *DB) runCreation(ctx context.Context, conn querier, stmts []string, acct string, secrets ...string) error {
	for i, s := range stmts {
		if err := execRetryingDeadlocks(ctx, conn, s); err != nil {
			return statementFailure(fmt.Sprintf("creation statement %d", i+1), err, secrets...)
		}
	}
	role, err := quoteString(db.marker)
	if err != nil {
		return err
	}
	for attempt := 1; ; attempt++ {
		err := execRetryingDeadlocks(ctx, conn, "GRANT "+role+" TO "+acct)
		if n := errNumber(err); (n == erInvalidRole || n == erUnknownAuthID) && attempt == 1 {
			// The role was dropped since it was made: make it again.
			db.forgetMarker()
			if err := db.ensureMarker(ctx, conn); err != nil {
				return statementFailure("creating the marker role", err)
			}
			continue
		}
		if err != nil {
			return statementFailure("granting the marker role", err, secrets...)
		}
		return nil
	}
}

// Deadlock retries: the server rolls back only the statement it picked as
// the victim (each DDL statement commits on its own), so sending it again
// is safe. Lock wait timeouts are not retried: they have already spent the
// server's whole wait.
const (
	deadlockAttempts  = 5
	deadlockBaseDelay = 10 * time.Millisecond
)

// execRetryingDeadlocks runs one statement, again after a deadlock.
func execRetryingDeadlocks(ctx context.Context, conn querier, stmt string) error {
	delay := deadlockBaseDelay
	for attempt := 1; ; attempt++ {
		_, err := conn.ExecContext(ctx, stmt)
		if errNumber(err) != erLockDeadlock || attempt == deadlockAttempts {
			return err
		}
		if plugins.Sleep(ctx, delay+rand.N(delay)) != nil {
			return err
		}
		delay *= 2
	}
}

// statementFailure describes the failure of one statement (what). Its text
// never carries the hash or the password, which a syntax error may quote
// back.
func statementFailure(what string, err error, secrets ...string) error {
	me, ok := mysqlErr(err)
	if !ok || unavailable(err) {
		return plugins.Redacted(err, secrets...)
	}
	// The driver's error is kept, with its message scrubbed too.
	return plugins.Classify(plugins.Rejected(fmt.Sprintf("%s rejected: %s (error %d)", what, plugins.Redact(me.Message, secrets...), me.Number),
		plugins.Redacted(err, secrets...)), adminKind(err))
}

func (db *DB) scrubbed(err error) error { return plugins.Redacted(err, db.admin.Secrets()...) }

// outcomeKnown reports whether the server answered the statement, so that
// it is known to have failed as a whole. A connection lost in flight or a
// cancelled call leaves the statement's fate open.
func outcomeKnown(err error) bool {
	me, ok := mysqlErr(err)
	if !ok {
		return false
	}
	switch me.Number {
	case erServerShutdown, erAbortingConnection, erNetReadError, erNetReadInterrupted,
		erNetErrorOnWrite, erNetWriteInterrupted, erConnectionKilled, erClientInteraction:
		return false
	}
	return true
}
