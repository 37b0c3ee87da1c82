package mysql

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"regexp"

	"github.com/credbroker/credbroker/plugins"
)

// Username layout: <prefix>_<role>_<random>, within the server's limit.
const (
	// fallbackNameLimit is MySQL's limit (5.7 and 8): used before the
	// server's own limit is known, it fits every supported server.
	fallbackNameLimit = 32
	// maxNameLen bounds what checkUsername accepts before the server has
	// been asked (the largest limit of any supported server, MariaDB's).
	maxNameLen = 128
	// The random part is 16 to 26 base32 characters: 80 to 130 bits from
	// crypto/rand, so names never collide, even across broker replicas.
	minRandomLen = 16
	maxRandomLen = 26
	// roleReserve is how much of a tight limit the role part keeps before
	// the random part gives up characters (down to minRandomLen).
	roleReserve  = 8
	rolePartRE   = `[a-z0-9](?:[a-z0-9_]*[a-z0-9])?`
	randomPartRE = `[a-z2-7]{16,26}`
)

// UsernamePattern matches every name GenerateUsername returns, whatever the
// configured prefix. A DB additionally requires its own prefix and at most
// 128 characters; names failing either are refused with
// plugins.ErrInvalidUsername before anything is sent to the server.
var UsernamePattern = regexp.MustCompile(`^[a-z][a-z0-9]{0,15}_` + rolePartRE + `_` + randomPartRE + `$`)

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// randomLength splits limit between the role part and the random part for
// a prefix of prefixLen characters: the random part takes what it can up to
// maxRandomLen after leaving the role roleReserve characters, and never
// less than minRandomLen.
func randomLength(limit, prefixLen int) (random, role int, err error) {
	avail := limit - prefixLen - 2 // two underscores
	random = min(maxRandomLen, max(minRandomLen, avail-roleReserve))
	role = avail - random
	if role < 1 {
		return 0, 0, fmt.Errorf("user names are limited to %d characters, too few for prefix (%d) + role + %d random characters", limit, prefixLen, minRandomLen)
	}
	return random, role, nil
}

// GenerateUsername implements plugins.Database. The role is reduced to
// [a-z0-9_] and shortened to fit the server's limit; the random part is
// never cut, only chosen shorter (never under 16 characters) when the limit
// is tight.
func (db *DB) GenerateUsername(role string) (string, error) {
	random, maxRole, err := randomLength(db.knownNameLimit(), len(db.prefix))
	if err != nil {
		return "", fmt.Errorf("mysql: generate username: %w", err)
	}
	var b [17]byte // 136 bits: 28 base32 characters, more than maxRandomLen
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("mysql: generate username: %w", err)
	}
	name := db.prefix + "_" + plugins.SanitizeRole(role, maxRole) + "_" + lowerBase32.EncodeToString(b[:])[:random]
	if err := db.checkUsername(name); err != nil {
		// Unreachable unless SanitizeRole and the pattern disagree.
		return "", fmt.Errorf("mysql: generated username does not match its own pattern: %w", err)
	}
	return name, nil
}

// checkUsername is the gate in front of every statement that names a user.
// It never asks the server: a name generated when the server's limit was
// larger stays valid, and an invalid name is refused even while the server
// is down.
func (db *DB) checkUsername(name string) error {
	if len(name) > maxNameLen || !db.names.MatchString(name) {
		return fmt.Errorf("mysql: %w: %q does not match %s with prefix %q", plugins.ErrInvalidUsername, name, UsernamePattern, db.prefix)
	}
	return nil
}
