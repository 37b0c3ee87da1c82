package identity

import (
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	spiffeScheme = "spiffe://"
	prefixSuffix = "/*"
)

// Pattern selects SPIFFE IDs: either one exact ID, or every ID under a path
// (written with a trailing "/*"). The zero Pattern matches nothing.
type Pattern struct {
	td     spiffeid.TrustDomain
	path   string // "" or a valid SPIFFE ID path such as "/orders"
	prefix bool
}

// ParsePattern parses an exact SPIFFE ID ("spiffe://example.org/orders/api")
// or a prefix pattern ("spiffe://example.org/orders/*"). A prefix pattern
// matches IDs strictly under its path, on segment boundaries: "orders/*"
// matches ".../orders/api" and ".../orders/api/v2", but neither ".../orders"
// nor ".../orders-evil/x". "spiffe://example.org/*" matches every workload
// of the trust domain. "*" is allowed nowhere else.
func ParsePattern(s string) (Pattern, error) {
	if s == "" {
		return Pattern{}, fmt.Errorf("%w: empty", ErrInvalidPattern)
	}
	if !strings.HasPrefix(s, spiffeScheme) {
		return Pattern{}, fmt.Errorf("%w %q: must start with %s", ErrInvalidPattern, s, spiffeScheme)
	}
	if strings.ContainsAny(s, "?#") {
		return Pattern{}, fmt.Errorf("%w %q: must not have a query or fragment", ErrInvalidPattern, s)
	}
	body, prefix := strings.CutSuffix(s, prefixSuffix)
	// Checked before spiffeid parsing: with the spiffeid_charset_backcompat
	// build tag, go-spiffe would accept '*' as a path character.
	if strings.Contains(body, "*") {
		return Pattern{}, fmt.Errorf("%w %q: '*' is only allowed as the whole last segment, as in spiffe://example.org/orders/*", ErrInvalidPattern, s)
	}
	if len(body) <= len(spiffeScheme) {
		return Pattern{}, fmt.Errorf("%w %q: missing trust domain", ErrInvalidPattern, s)
	}
	id, err := spiffeid.FromString(body)
	if err != nil {
		return Pattern{}, fmt.Errorf("%w %q: %v", ErrInvalidPattern, s, err)
	}
	if !prefix && id.Path() == "" {
		return Pattern{}, fmt.Errorf("%w %q: names a trust domain, not a workload; use %s/* for every workload in it", ErrInvalidPattern, s, s)
	}
	return Pattern{td: id.TrustDomain(), path: id.Path(), prefix: prefix}, nil
}

// MustParsePattern is ParsePattern for constants in tests and examples; it
// panics on error.
func MustParsePattern(s string) Pattern {
	p, err := ParsePattern(s)
	if err != nil {
		panic(err)
	}
	return p
}

// Match reports whether id is selected by the pattern.
func (p Pattern) Match(id spiffeid.ID) bool {
	if p.td.IsZero() || id.IsZero() || !id.MemberOf(p.td) {
		return false
	}
	if !p.prefix {
		return id.Path() == p.path
	}
	// SPIFFE ID paths have no empty, "." or ".." segments and no trailing
	// slash, so a string prefix ending in "/" is a segment-boundary prefix.
	return strings.HasPrefix(id.Path(), p.path+"/")
}

// TrustDomain returns the trust domain the pattern is confined to.
func (p Pattern) TrustDomain() spiffeid.TrustDomain { return p.td }

// String returns the pattern in the form ParsePattern accepts, or "" for the
// zero Pattern.
func (p Pattern) String() string {
	if p.td.IsZero() {
		return ""
	}
	s := p.td.IDString() + p.path
	if p.prefix {
		s += prefixSuffix
	}
	return s
}

// MarshalText implements encoding.TextMarshaler.
func (p Pattern) MarshalText() ([]byte, error) { return []byte(p.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler, so patterns can be
// decoded straight from YAML or JSON configuration.
func (p *Pattern) UnmarshalText(text []byte) error {
	parsed, err := ParsePattern(string(text))
	if err != nil {
		return err
	}
	*p = parsed
	return nil
}

// Authorizer decides whether the caller id may use role. It returns nil when
// allowed, an error wrapping ErrUnknownRole or ErrNotAllowed otherwise.
type Authorizer func(id spiffeid.ID, role string) error

// NewRolePolicy returns an Authorizer granting each role to the IDs matched
// by its patterns and nothing else. The map is copied.
func NewRolePolicy(roles map[string][]Pattern) Authorizer {
	policy := make(map[string][]Pattern, len(roles))
	for role, pats := range roles {
		policy[role] = append([]Pattern(nil), pats...)
	}
	return func(id spiffeid.ID, role string) error {
		pats, ok := policy[role]
		if !ok {
			return fmt.Errorf("%w %q", ErrUnknownRole, role)
		}
		for _, p := range pats {
			if p.Match(id) {
				return nil
			}
		}
		return fmt.Errorf("%w: %q may not use role %q", ErrNotAllowed, id.String(), role)
	}
}

// AdminSet is the set of SPIFFE IDs allowed to call the admin service. The
// zero AdminSet has no admin.
type AdminSet struct {
	ids map[spiffeid.ID]struct{}
}

// NewAdminSet returns the set of the given IDs; zero IDs are ignored.
func NewAdminSet(ids []spiffeid.ID) AdminSet {
	s := AdminSet{ids: make(map[spiffeid.ID]struct{}, len(ids))}
	for _, id := range ids {
		if !id.IsZero() {
			s.ids[id] = struct{}{}
		}
	}
	return s
}

// IsAdmin reports whether id is an admin: exact match only, no patterns.
func (s AdminSet) IsAdmin(id spiffeid.ID) bool {
	if id.IsZero() {
		return false
	}
	_, ok := s.ids[id]
	return ok
}
