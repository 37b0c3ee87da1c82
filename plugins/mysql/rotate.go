package mysql

import (
	"context"
	"fmt"
	"strings"

	"github.com/credbroker/credbroker/plugins"
)

var _ plugins.AdminRotator = (*DB)(nil)

// SetAdminPassword implements plugins.AdminRotator for the account the
// admin is logged in as (CURRENT_USER()), with the password's
// mysql_native_password hash, never the plaintext (MariaDB writes
// IDENTIFIED BY '<plaintext>' to its general log verbatim):
//
//	MariaDB: ALTER USER 'u'@'h' IDENTIFIED BY PASSWORD '*<hash>'
//	MySQL:   ALTER USER 'u'@'h' IDENTIFIED WITH mysql_native_password AS '*<hash>'
//
// Both leave the admin on mysql_native_password. New connections then log
// in with the new password and the idle ones are closed; a connection in
// use at that moment finishes its call and is retired by the pool's idle
// timeout (database/sql cannot close it on release).
func (db *DB) SetAdminPassword(ctx context.Context, password string) error {
	const op = "rotate admin password"
	if password == "" {
		return fmt.Errorf("mysql: %s: empty password", op)
	}
	info, err := db.serverInfo(ctx)
	if err != nil {
		return err
	}
	var current string
	if err := db.pool.QueryRowContext(ctx, "SELECT CURRENT_USER()").Scan(&current); err != nil {
		return wrap(ctx, op, db.scrubbed(err), unavailable(err))
	}
	at := strings.LastIndexByte(current, '@')
	if at < 0 {
		return fmt.Errorf("mysql: %s: unexpected CURRENT_USER() %q", op, current)
	}
	acct, err := account(current[:at], current[at+1:])
	if err != nil {
		return fmt.Errorf("mysql: %s: %w", op, err)
	}
	hash := nativeHash(password)
	stmt := "ALTER USER " + acct + " IDENTIFIED BY PASSWORD '" + hash + "'"
	if info.flavour == flavourMySQL {
		stmt = "ALTER USER " + acct + " IDENTIFIED WITH mysql_native_password AS '" + hash + "'"
	}
	if _, err := db.pool.ExecContext(ctx, stmt); err != nil {
		failure := statementFailure("ALTER USER", err, hash, password)
		return wrap(ctx, op, failure, unavailable(err))
	}
	db.admin.Set(password)
	// Zero idle connections closes every idle one now; the size is then
	// restored for the connections that log in with the new password.
	db.pool.SetMaxIdleConns(0)
	db.pool.SetMaxIdleConns(db.maxConns)
	return nil
}
