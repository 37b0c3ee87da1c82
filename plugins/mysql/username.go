package mysql

import "github.com/credbroker/credbroker/plugins"

// Username layout: <prefix>_<role>_<random>, within the server's limit.
const (
	// fallbackNameLimit is MySQL's limit (5.7 and 8): used before the
	// server's own limit is known, it fits every supported server.
	fallbackNameLimit = 32
	// maxNameLen bounds what checkUsername accepts before the server has
	// been asked (the largest limit of any supported server, MariaDB's).
	maxNameLen = 128
)

// usernameRules: the random part is 16 to 26 base32 characters (80 to 130
// bits); on a tight limit the role part keeps 8 characters before the
// random part gives any up.
var usernameRules = plugins.UsernameRules{
	Engine:      "mysql",
	MaxLen:      maxNameLen,
	MinRandom:   16,
	MaxRandom:   26,
	RoleReserve: 8,
}

// UsernamePattern matches every name GenerateUsername returns, whatever the
// configured prefix. A DB additionally requires its own prefix and at most
// 128 characters; names failing either are refused with
// plugins.ErrInvalidUsername before anything is sent to the server.
var UsernamePattern = usernameRules.Pattern()

// GenerateUsername implements plugins.Database. The role is reduced to
// [a-z0-9_] and shortened to fit the server's limit; the random part is
// never cut, only chosen shorter (never under 16 characters) when the limit
// is tight.
func (db *DB) GenerateUsername(role string) (string, error) {
	return db.users.Generate(role, db.knownNameLimit())
}

// checkUsername is the gate in front of every statement that names a user.
// It never asks the server: a name generated when the server's limit was
// larger stays valid, and an invalid name is refused even while the server
// is down.
func (db *DB) checkUsername(name string) error { return db.users.Check(name) }
