package postgres

import (
	"context"
	"fmt"

	"github.com/credbroker/credbroker/plugins"
)

var _ plugins.AdminRotator = (*DB)(nil)

// SetAdminPassword implements plugins.AdminRotator: ALTER ROLE
// CURRENT_USER PASSWORD '<SCRAM-SHA-256 verifier>', computed here as for
// every user, so the plaintext never reaches the server or its statement
// log. Then new connections log in with the new password, and the pool is
// reset: idle connections are closed at once, connections in use when
// they are released (pgxpool.Pool.Reset), so no call is cut short.
func (db *DB) SetAdminPassword(ctx context.Context, password string) error {
	if password == "" {
		return fmt.Errorf("postgres: rotate admin password: empty password")
	}
	verifier, err := newScramVerifier(password, db.iters)
	if err != nil {
		return fmt.Errorf("postgres: rotate admin password: %w", err)
	}
	lit, err := quoteLiteral(verifier)
	if err != nil {
		return fmt.Errorf("postgres: rotate admin password: %w", err)
	}
	if _, err := db.pool.Exec(ctx, "ALTER ROLE CURRENT_USER PASSWORD "+lit); err != nil {
		return wrap(ctx, "rotate admin password", plugins.Redacted(err, verifier))
	}
	db.admin.Set(password)
	db.pool.Reset()
	return nil
}
