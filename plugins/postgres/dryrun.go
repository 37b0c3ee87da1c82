package postgres

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/credbroker/credbroker/plugins"
)

var _ plugins.DryRunner = (*DB)(nil)

// dryRunExpiry is the VALID UNTIL of the probe role: it never commits, so
// any future time does.
const dryRunExpiry = time.Hour

// DryRun implements plugins.DryRunner: the role's creation statements for a
// probe role, the plugin's own expiry and marker, then the revocation
// sequence (NOLOGIN, the revocation statements, the admin taking the role's
// privileges, REASSIGN/DROP OWNED, DROP ROLE) in one transaction that is
// always rolled back, so nothing is ever committed. It also checks that the
// admin may end other users' sessions (pg_signal_backend), which revocation
// needs once a workload is connected.
func (db *DB) DryRun(ctx context.Context, req plugins.DryRunRequest) error {
	op := "dry run of role " + req.Role
	name, err := db.GenerateUsername(req.Role)
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	if err := plugins.ValidateStatements(req.Creation, true); err != nil {
		return fmt.Errorf("postgres: %s: %w: %w", op, plugins.ErrInvalidStatement, err)
	}
	password, err := plugins.GeneratePassword()
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	verifier, err := newScramVerifier(password, db.iters)
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	pwLit, err := quoteLiteral(verifier)
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	until, err := validUntil(time.Now().Add(dryRunExpiry))
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	marker, err := quoteLiteral(db.marker)
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	ident := quoteIdent(name)
	values := map[string]string{
		plugins.PlaceholderName:       ident,
		plugins.PlaceholderPassword:   pwLit,
		plugins.PlaceholderExpiration: until,
	}
	type step struct {
		what string
		sql  string
	}
	var steps []step
	for i, s := range req.Creation {
		r, err := plugins.Render(s, values)
		if err != nil {
			return fmt.Errorf("postgres: %s: creation statement %d: %w: %w", op, i+1, plugins.ErrInvalidStatement, err)
		}
		steps = append(steps, step{fmt.Sprintf("creation statement %d", i+1), r})
	}
	revoke, err := plugins.RenderRevocation(req.Revocation, ident)
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	steps = append(steps,
		step{"setting expiry", "ALTER ROLE " + ident + " VALID UNTIL " + until},
		step{"setting the marker", "COMMENT ON ROLE " + ident + " IS " + marker},
		step{"revocation: NOLOGIN", "ALTER ROLE " + ident + " NOLOGIN"},
	)
	for i, s := range revoke {
		steps = append(steps, step{fmt.Sprintf("revocation statement %d", i+1), s})
	}
	steps = append(steps,
		step{"revocation: taking the user's privileges", "GRANT " + ident + " TO CURRENT_USER"},
		step{"revocation: REASSIGN OWNED", "REASSIGN OWNED BY " + ident + " TO CURRENT_USER"},
		step{"revocation: DROP OWNED", "DROP OWNED BY " + ident},
		step{"revocation: DROP ROLE", "DROP ROLE " + ident},
	)

	tx, err := db.pool.Begin(ctx)
	if err != nil {
		return wrap(ctx, op, err)
	}
	defer func() {
		// Always rolled back: the dry run commits nothing, whatever happened.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		_ = tx.Rollback(rctx) // a dead connection aborts the transaction anyway
	}()
	if needsACLLock(req.Creation) || needsACLLock(req.Revocation) {
		// Object grants conflict with concurrent issuance's (tx.go).
		lock := aclLock{tx: tx}
		if err := lock.take(ctx); err != nil {
			return wrap(ctx, op, err)
		}
	}
	for _, s := range steps {
		if _, err := tx.Exec(ctx, s.sql); err != nil {
			return dryRunFailure(ctx, op, s.what, err, verifier)
		}
	}
	var signal bool
	if err := tx.QueryRow(ctx, `SELECT rolsuper OR pg_has_role(current_user, 'pg_signal_backend', 'MEMBER')
		FROM pg_roles WHERE rolname = current_user`).Scan(&signal); err != nil {
		return wrap(ctx, op, err)
	}
	if !signal {
		return plugins.Classify(fmt.Errorf("postgres: %s: the admin is not a member of pg_signal_backend, which ending a revoked user's sessions needs", op), plugins.KindAdminPrivilege)
	}
	return nil
}

// dryRunFailure describes the failed step with the server's message (free
// of the verifier, which a syntax error may quote).
func dryRunFailure(ctx context.Context, op, what string, err error, verifier string) error {
	pgErr, ok := errors.AsType[*pgconn.PgError](err)
	if !ok || unavailable(err) {
		return wrap(ctx, op+": "+what, err)
	}
	msg := plugins.Redact(pgErr.Message, verifier)
	return fmt.Errorf("postgres: %s: %w", op, plugins.Classify(
		plugins.Rejected(fmt.Sprintf("%s rejected: %s (SQLSTATE %s)", what, msg, pgErr.Code), pgErr), adminKind(pgErr)))
}
