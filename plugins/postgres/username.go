package postgres

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"regexp"

	"github.com/credbroker/credbroker/plugins"
)

// Username layout: <prefix>_<role>_<random>, at most maxNameLen bytes.
const (
	// maxNameLen is NAMEDATALEN-1: PostgreSQL silently truncates longer
	// identifiers, which would break the random suffix.
	maxNameLen = 63
	// randomBytes of crypto/rand give 26 base32 characters (128 bits), so
	// names never collide, even across broker replicas.
	randomBytes  = 16
	randomLen    = 26
	rolePartRE   = `[a-z0-9](?:[a-z0-9_]*[a-z0-9])?`
	randomPartRE = `[a-z2-7]{26}`
)

// UsernamePattern matches every name GenerateUsername returns, whatever the
// configured prefix. A DB additionally requires its own prefix and at most
// 63 bytes; names failing either are refused with plugins.ErrInvalidUsername
// before anything is sent to the server.
var UsernamePattern = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}_` + rolePartRE + `_` + randomPartRE + `$`)

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// GenerateUsername implements plugins.Database. The role is reduced to
// [a-z0-9_] and shortened to fit; the random part is never shortened.
func (db *DB) GenerateUsername(role string) (string, error) {
	var b [randomBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("postgres: generate username: %w", err)
	}
	maxRole := maxNameLen - len(db.prefix) - 2 - randomLen
	name := db.prefix + "_" + plugins.SanitizeRole(role, maxRole) + "_" + lowerBase32.EncodeToString(b[:])
	if err := db.checkUsername(name); err != nil {
		// Unreachable unless SanitizeRole and the pattern disagree.
		return "", fmt.Errorf("postgres: generated username does not match its own pattern: %w", err)
	}
	return name, nil
}

// checkUsername is the gate in front of every statement that names a user.
func (db *DB) checkUsername(name string) error {
	if len(name) > maxNameLen || !db.names.MatchString(name) {
		return fmt.Errorf("postgres: %w: %q does not match %s with prefix %q", plugins.ErrInvalidUsername, name, UsernamePattern, db.prefix)
	}
	return nil
}
