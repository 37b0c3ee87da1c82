package mysql

import (
	"context"
	"fmt"

	"github.com/credbroker/credbroker/plugins"
)

// DeleteUser implements plugins.Database; see the package comment for the
// sequence. It acts on every account with the user's name, whatever its
// host part, so a user_host changed since issue strands nothing.
func (db *DB) DeleteUser(ctx context.Context, req plugins.DeleteUserRequest) error {
	name := req.Username
	if err := db.checkUsername(name); err != nil {
		return err
	}
	op := "delete " + name
	// Revocation statements are rendered before anything changes, so a bad
	// snapshot fails without leaving the user half-revoked.
	render := func(host string) ([]string, error) {
		acct, err := account(name, host)
		if err != nil {
			return nil, err
		}
		return plugins.RenderRevocation(req.Statements, acct)
	}
	if _, err := render(db.host); err != nil {
		return fmt.Errorf("mysql: %s: %w", op, err)
	}

	hosts, err := db.hosts(ctx, db.pool, name)
	if err != nil {
		return wrap(ctx, op, err, unavailable(err))
	}
	type target struct {
		acct   string
		revoke []string
	}
	targets := make([]target, 0, len(hosts))
	for _, h := range hosts {
		acct, err := account(name, h)
		if err != nil {
			// Someone made an account with the broker's name pattern and a
			// host the plugin cannot quote safely: leave it to a human.
			return fmt.Errorf("mysql: %s: %w", op, err)
		}
		revoke, err := render(h)
		if err != nil {
			return fmt.Errorf("mysql: %s: %w", op, err)
		}
		targets = append(targets, target{acct, revoke})
	}

	// No new logins from here on. A lock on an account dropped meanwhile is
	// fine: the drop below is IF EXISTS.
	for _, t := range targets {
		if _, err := db.pool.ExecContext(ctx, "ALTER USER "+t.acct+" ACCOUNT LOCK"); err != nil && !isAbsentAccount(err) {
			return wrap(ctx, op+": lock", err, unavailable(err))
		}
	}
	// Sessions are ended even when no account exists: DROP USER leaves
	// open sessions running, so a user dropped by hand may still have some.
	if err := db.endSessions(ctx, name); err != nil {
		return wrap(ctx, op+": end sessions", err, unavailable(err))
	}
	for _, t := range targets {
		for i, s := range t.revoke {
			_, err := db.pool.ExecContext(ctx, s)
			switch n := errNumber(err); {
			case err == nil:
			case n == erNonexistingGrant || n == erNonexistingTblGrant:
				// Already revoked, by an earlier attempt of this same
				// revocation (DDL here does not roll back), or never
				// granted: either way the statement's goal holds.
			case unavailable(err) || ctx.Err() != nil:
				return wrap(ctx, op, err, unavailable(err))
			default:
				return fmt.Errorf("mysql: %s: %w", op, revocationFailure(i, err))
			}
		}
		if _, err := db.pool.ExecContext(ctx, "DROP USER IF EXISTS "+t.acct); err != nil {
			return wrap(ctx, op+": drop", err, unavailable(err))
		}
	}
	// A connection that authenticated just before the lock may have joined
	// the process list after the first sweep; one more makes sure none is
	// left when DeleteUser reports success.
	if err := db.endSessions(ctx, name); err != nil {
		return wrap(ctx, op+": end sessions", err, unavailable(err))
	}
	return nil
}

func revocationFailure(i int, err error) error {
	me, _ := mysqlErr(err)
	return plugins.Classify(plugins.Rejected(fmt.Sprintf("revocation statement %d rejected: %s (error %d)", i+1, me.Message, me.Number), err), adminKind(err))
}

// endSessions kills every connection of the user and returns once the
// process list shows none. The accounts are locked or gone, so the count
// can only go down; killing again on each round catches a connection that
// was still authenticating during the previous one.
func (db *DB) endSessions(ctx context.Context, name string) error {
	return plugins.UntilNone(ctx, func(ctx context.Context) (int, error) {
		ids, err := db.sessions(ctx, name)
		if err != nil {
			return 0, err
		}
		for _, id := range ids {
			// The id is an integer from the server, not a string.
			_, err := db.pool.ExecContext(ctx, fmt.Sprintf("KILL CONNECTION %d", id))
			if err != nil && errNumber(err) != erNoSuchThread { // gone meanwhile
				return 0, err
			}
		}
		return len(ids), nil
	})
}

// sessions lists the ids of the user's connections. A killed connection
// stays listed until its thread has noticed, which is what the caller
// waits for.
func (db *DB) sessions(ctx context.Context, name string) ([]uint64, error) {
	rows, err := db.pool.QueryContext(ctx, "SELECT ID FROM information_schema.PROCESSLIST WHERE USER = ?", name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []uint64
	for rows.Next() {
		var id uint64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// isAbsentAccount reports ALTER/DROP USER on an account that is gone.
func isAbsentAccount(err error) bool { return errNumber(err) == erCannotUser }
