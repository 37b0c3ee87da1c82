package postgres

import "github.com/credbroker/credbroker/plugins"

// usernameRules: <prefix>_<role>_<random>, at most 63 bytes, NAMEDATALEN-1
// (PostgreSQL silently truncates longer identifiers, which would break the
// random part), with a random part of 26 base32 characters (130 bits).
var usernameRules = plugins.UsernameRules{
	Engine:    "postgres",
	MaxLen:    maxNameLen,
	MinRandom: 26,
	MaxRandom: 26,
}

const maxNameLen = 63

// UsernamePattern matches every name GenerateUsername returns, whatever the
// configured prefix. A DB additionally requires its own prefix and at most
// 63 bytes; names failing either are refused with plugins.ErrInvalidUsername
// before anything is sent to the server.
var UsernamePattern = usernameRules.Pattern()

// GenerateUsername implements plugins.Database. The role is reduced to
// [a-z0-9_] and shortened to fit; the random part is never shortened.
func (db *DB) GenerateUsername(role string) (string, error) {
	return db.users.Generate(role, maxNameLen)
}

// checkUsername is the gate in front of every statement that names a user.
func (db *DB) checkUsername(name string) error { return db.users.Check(name) }
