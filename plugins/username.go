package plugins

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"regexp"
	"strconv"
	"strings"
)

// PrefixPattern is what a username prefix (the username_prefix setting) may
// be, for every engine: a lowercase letter then up to 7 lowercase letters or
// digits. Eight characters is the longest prefix that still leaves a name on
// MySQL 5.7/8 (32 characters) room for the separators, the 16-character
// random floor and 6 characters of the role.
const PrefixPattern = `[a-z][a-z0-9]{0,7}`

var prefixRE = regexp.MustCompile(`^` + PrefixPattern + `$`)

// CheckPrefix reports whether p matches PrefixPattern.
func CheckPrefix(p string) error {
	if !prefixRE.MatchString(p) {
		return fmt.Errorf("prefix %q must match %s", p, prefixRE)
	}
	return nil
}

// Parts of every generated username: <prefix>_<role>_<random>.
const (
	rolePartRE = `[a-z0-9](?:[a-z0-9_]*[a-z0-9])?`
	// randomBytes of crypto/rand give 28 base32 characters, more than any
	// engine's random part; it is cut, never padded.
	randomBytes = 17
)

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// UsernameRules are one engine's limits on generated usernames. The random
// part is MinRandom to MaxRandom base32 characters from crypto/rand (80 bits
// at 16), so names never collide, even across broker replicas.
type UsernameRules struct {
	// Engine starts error messages ("postgres").
	Engine string
	// MaxLen is the longest name Check accepts, whatever limit Generate was
	// given (the largest limit of any server of the engine).
	MaxLen int
	// MinRandom and MaxRandom bound the random part's length.
	MinRandom, MaxRandom int
	// RoleReserve is how much of a tight limit the role part keeps before
	// the random part gives up characters (down to MinRandom).
	RoleReserve int
}

// Pattern matches every name of these rules, whatever the prefix.
func (r UsernameRules) Pattern() *regexp.Regexp {
	return regexp.MustCompile(`^` + PrefixPattern + `_` + rolePartRE + `_` + r.randomPartRE() + `$`)
}

func (r UsernameRules) randomPartRE() string {
	if r.MinRandom == r.MaxRandom {
		return `[a-z2-7]{` + strconv.Itoa(r.MinRandom) + `}`
	}
	return fmt.Sprintf(`[a-z2-7]{%d,%d}`, r.MinRandom, r.MaxRandom)
}

// Split divides limit between the random part and the role part for a
// prefix of prefixLen characters: the random part takes what it can up to
// MaxRandom after leaving the role RoleReserve characters, and never less
// than MinRandom.
func (r UsernameRules) Split(limit, prefixLen int) (random, role int, err error) {
	avail := limit - prefixLen - 2 // two underscores
	random = min(r.MaxRandom, max(r.MinRandom, avail-r.RoleReserve))
	role = avail - random
	if role < 1 {
		return 0, 0, fmt.Errorf("user names are limited to %d characters, too few for prefix (%d) + role + %d random characters", limit, prefixLen, r.MinRandom)
	}
	return random, role, nil
}

// Usernames generates and checks the names of one database: the rules of
// its engine and its prefix.
type Usernames struct {
	rules   UsernameRules
	prefix  string
	names   *regexp.Regexp // with this prefix
	pattern *regexp.Regexp // any prefix, for messages
}

// NewUsernames checks prefix against PrefixPattern.
func NewUsernames(rules UsernameRules, prefix string) (*Usernames, error) {
	if err := CheckPrefix(prefix); err != nil {
		return nil, fmt.Errorf("%s: %w", rules.Engine, err)
	}
	return &Usernames{
		rules:   rules,
		prefix:  prefix,
		names:   regexp.MustCompile(`^` + prefix + `_` + rolePartRE + `_` + rules.randomPartRE() + `$`),
		pattern: rules.Pattern(),
	}, nil
}

// Prefix is the prefix every name starts with (before its underscore).
func (u *Usernames) Prefix() string { return u.prefix }

// Generate returns a new name for role within limit characters. The role
// is reduced to [a-z0-9_] and shortened to fit; the random part is never
// cut, only chosen shorter (never under MinRandom) when the limit is tight.
func (u *Usernames) Generate(role string, limit int) (string, error) {
	random, maxRole, err := u.rules.Split(limit, len(u.prefix))
	if err != nil {
		return "", fmt.Errorf("%s: generate username: %w", u.rules.Engine, err)
	}
	var b [randomBytes]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("%s: generate username: %w", u.rules.Engine, err)
	}
	name := u.prefix + "_" + SanitizeRole(role, maxRole) + "_" + lowerBase32.EncodeToString(b[:])[:random]
	if err := u.Check(name); err != nil {
		// Unreachable unless SanitizeRole and the pattern disagree.
		return "", fmt.Errorf("%s: generated username does not match its own pattern: %w", u.rules.Engine, err)
	}
	return name, nil
}

// Match reports whether name is one of this database's names.
func (u *Usernames) Match(name string) bool {
	return len(name) <= u.rules.MaxLen && u.names.MatchString(name)
}

// Check is the gate in front of every statement that names a user: a name
// that does not Match is refused with ErrInvalidUsername before anything
// is sent to the server.
func (u *Usernames) Check(name string) error {
	if !u.Match(name) {
		return &Error{Kind: KindInvalidUsername, Err: fmt.Errorf("%s: %w: %q does not match %s with prefix %q",
			u.rules.Engine, ErrInvalidUsername, name, u.pattern, u.prefix)}
	}
	return nil
}

// SanitizeRole turns a role name into the middle part of a generated
// username: it keeps [a-z0-9], turns every other run of characters into one
// underscore, trims underscores at both ends and shortens the result to max
// bytes. An empty result becomes "role" (or its first max characters) so the
// name layout stays parseable. Plugins shorten only this part to fit their
// length limits, never the random part that makes a name unique.
func SanitizeRole(role string, max int) string {
	var sb strings.Builder
	underscore := false
	for _, r := range strings.ToLower(role) {
		if (r >= 'a' && r <= 'z') || (r >= '0' && r <= '9') {
			sb.WriteRune(r)
			underscore = false
			continue
		}
		if !underscore {
			sb.WriteByte('_')
			underscore = true
		}
	}
	s := strings.Trim(sb.String(), "_")
	if len(s) > max {
		s = strings.TrimRight(s[:max], "_")
	}
	if s == "" {
		s = "role"[:min(4, max)]
	}
	return s
}
