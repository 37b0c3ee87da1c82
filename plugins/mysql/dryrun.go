package mysql

import (
	"context"
	"fmt"
	"time"

	"github.com/credbroker/credbroker/plugins"
)

var _ plugins.DryRunner = (*DB)(nil)

// DryRun implements plugins.DryRunner. MySQL and MariaDB have no
// transactional DDL, so the probe user really exists for a moment: it is
// created with the role's statements and marked like any user (its name has
// the broker's prefix; the marker role is granted after the template, as on
// issuance), then revoked with the plugin's revocation sequence and the
// role's revocation statements. A deferred drop, on a context of its own,
// removes it whatever failed, even when ctx has ended.
func (db *DB) DryRun(ctx context.Context, req plugins.DryRunRequest) (err error) {
	op := "dry run of role " + req.Role
	name, err := db.GenerateUsername(req.Role)
	if err != nil {
		return fmt.Errorf("mysql: %s: %w", op, err)
	}
	if err := plugins.ValidateStatements(req.Creation, true); err != nil {
		return fmt.Errorf("mysql: %s: %w: %w", op, plugins.ErrInvalidStatement, err)
	}
	info, err := db.serverInfo(ctx)
	if err != nil {
		return err
	}
	if err := checkPasswordClauses(req.Creation, &info.flavour); err != nil {
		return fmt.Errorf("mysql: %s: %w: %w", op, plugins.ErrInvalidStatement, err)
	}
	acct, err := account(name, db.host)
	if err != nil {
		return fmt.Errorf("mysql: %s: %w", op, err)
	}
	if _, err := plugins.RenderRevocation(req.Revocation, acct); err != nil {
		return fmt.Errorf("mysql: %s: %w", op, err)
	}
	password, err := plugins.GeneratePassword()
	if err != nil {
		return fmt.Errorf("mysql: %s: %w", op, err)
	}
	hash := nativeHash(password)
	exp, err := quoteTime(time.Now().Add(time.Hour))
	if err != nil {
		return fmt.Errorf("mysql: %s: %w", op, err)
	}
	values := map[string]string{
		plugins.PlaceholderName:       acct,
		plugins.PlaceholderPassword:   "'" + hash + "'",
		plugins.PlaceholderExpiration: exp,
	}
	stmts := make([]string, 0, len(req.Creation))
	for i, s := range req.Creation {
		r, err := plugins.Render(s, values)
		if err != nil {
			return fmt.Errorf("mysql: %s: creation statement %d: %w: %w", op, i+1, plugins.ErrInvalidStatement, err)
		}
		stmts = append(stmts, r)
	}

	conn, err := db.pool.Conn(ctx)
	if err != nil {
		return wrap(ctx, op, db.scrubbed(err), unavailable(err))
	}
	if err := db.ensureMarker(ctx, conn); err != nil {
		_ = conn.Close()
		err = statementFailure("creating the marker role", err)
		return wrap(ctx, op, err, unavailable(err))
	}
	// From the first statement on, the probe user may exist: drop it on
	// every path out, with a context the caller cannot cancel.
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
		defer cancel()
		if cerr := db.DeleteUser(cctx, plugins.DeleteUserRequest{Username: name}); cerr != nil && err == nil {
			err = fmt.Errorf("mysql: %s: dropping the probe user: %w", op, cerr)
		}
	}()
	failure := db.runCreation(ctx, conn, stmts, acct, hash, password)
	_ = conn.Close() // back to the pool before DeleteUser takes connections of its own
	if failure != nil {
		return wrap(ctx, op, failure, unavailable(failure))
	}
	// The real revocation sequence, with the role's statements: what every
	// lease of the role will go through.
	if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name, Statements: req.Revocation}); err != nil {
		return fmt.Errorf("mysql: %s: revocation: %w", op, err)
	}
	return nil
}
