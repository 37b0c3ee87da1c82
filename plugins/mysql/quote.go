package mysql

import (
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// maxHostLen is the width of mysql.user.Host (MariaDB, MySQL 8.0.17+).
const maxHostLen = 255

// hostRE is what a host part may hold: names, IPv4/IPv6 addresses, the
// wildcards % and _, and netmasks (10.0.0.0/255.0.0.0). No quote, no
// backslash, no space, no @.
var hostRE = regexp.MustCompile(`^[A-Za-z0-9._%:/-]+$`)

// checkHost validates the host part of the accounts the broker creates
// (the user_host setting). It is deliberately narrower than what the server
// accepts: a value that needs no escaping at all cannot be mis-escaped
// under any sql_mode.
func checkHost(h string) error {
	switch {
	case h == "":
		return errors.New("host is empty")
	case len(h) > maxHostLen:
		return fmt.Errorf("host is %d characters, at most %d", len(h), maxHostLen)
	case !hostRE.MatchString(h):
		return fmt.Errorf("host %q may only hold letters, digits and . _ %% : / -", h)
	}
	return nil
}

// quoteString renders s as a single-quoted string literal. A quote is
// doubled, which means the same whatever the sql_mode. A backslash is
// refused rather than escaped: it is an escape character unless
// NO_BACKSLASH_ESCAPES is set, and literal otherwise, so no single
// rendering is right for both. NUL is refused too. Every value the plugin
// quotes (generated names, checked hosts, hashes, timestamps) is free of
// both; the checks make that an invariant rather than an assumption.
func quoteString(s string) (string, error) {
	if strings.ContainsAny(s, "\\\x00") {
		return "", errors.New("value contains a backslash or NUL byte")
	}
	return "'" + strings.ReplaceAll(s, "'", "''") + "'", nil
}

// account renders 'user'@'host' for the user and host as given.
func account(user, host string) (string, error) {
	u, err := quoteString(user)
	if err != nil {
		return "", fmt.Errorf("user name: %w", err)
	}
	h, err := quoteString(host)
	if err != nil {
		return "", fmt.Errorf("host of %s: %w", u, err)
	}
	return u + "@" + h, nil
}

// nativeHash is the mysql_native_password hash of password as the server
// stores it: '*' and the upper-case hex of SHA1(SHA1(password)). Sending it
// instead of the password keeps the plaintext off the wire (even without
// TLS), out of the general and slow query logs, the binary log and
// SHOW PROCESSLIST. The user still logs in with the plaintext.
func nativeHash(password string) string {
	first := sha1.Sum([]byte(password))
	second := sha1.Sum(first[:])
	return "*" + strings.ToUpper(hex.EncodeToString(second[:]))
}

// quoteTime renders t as a DATETIME literal in UTC, the value of
// {{expiration}}.
func quoteTime(t time.Time) (string, error) {
	if t.IsZero() {
		return "", errors.New("expiration is required")
	}
	return quoteString(t.UTC().Format("2006-01-02 15:04:05"))
}

// tlsFromSSLMode maps a libpq sslmode (the broker's one setting for both
// engines) to go-sql-driver's tls parameter. verify-ca is mapped to full
// verification ("true"), which also checks the host name: go-sql-driver has
// no CA-only mode, and the stricter reading is the safe one.
func tlsFromSSLMode(sslmode string) (string, error) {
	switch sslmode {
	case "disable":
		return "false", nil
	case "", "allow", "prefer":
		return "preferred", nil
	case "require":
		return "skip-verify", nil
	case "verify-ca", "verify-full":
		return "true", nil
	}
	return "", fmt.Errorf("unknown sslmode %q", sslmode)
}
