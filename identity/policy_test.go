package identity

import (
	"errors"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestPatternMatch(t *testing.T) {
	tests := []struct {
		name    string
		pattern string
		id      string
		want    bool
	}{
		{"exact match", "spiffe://example.org/orders/api", "spiffe://example.org/orders/api", true},
		{"exact does not match child", "spiffe://example.org/orders/api", "spiffe://example.org/orders/api/v2", false},
		{"exact does not match parent", "spiffe://example.org/orders/api", "spiffe://example.org/orders", false},
		{"exact does not match sibling with shared prefix", "spiffe://example.org/orders/api", "spiffe://example.org/orders/apix", false},
		{"exact is case sensitive", "spiffe://example.org/orders/api", "spiffe://example.org/orders/API", false},
		{"exact in foreign trust domain", "spiffe://example.org/orders/api", "spiffe://evil.org/orders/api", false},

		{"prefix matches child", "spiffe://example.org/orders/*", "spiffe://example.org/orders/api", true},
		{"prefix matches grandchild", "spiffe://example.org/orders/*", "spiffe://example.org/orders/api/v2", true},
		{"prefix does not match itself", "spiffe://example.org/orders/*", "spiffe://example.org/orders", false},
		{"prefix confusion dash", "spiffe://example.org/orders/*", "spiffe://example.org/orders-evil/x", false},
		{"prefix confusion letter", "spiffe://example.org/orders/*", "spiffe://example.org/ordersx/y", false},
		{"prefix does not match parent", "spiffe://example.org/orders/*", "spiffe://example.org/x", false},
		{"prefix in foreign trust domain", "spiffe://example.org/orders/*", "spiffe://evil.org/orders/api", false},
		{"prefix trust domain suffix confusion", "spiffe://example.org/orders/*", "spiffe://example.org.evil/orders/api", false},
		{"deep prefix", "spiffe://example.org/ns/prod/sa/*", "spiffe://example.org/ns/prod/sa/orders", true},
		{"deep prefix other namespace", "spiffe://example.org/ns/prod/sa/*", "spiffe://example.org/ns/dev/sa/orders", false},

		{"trust domain wildcard matches workload", "spiffe://example.org/*", "spiffe://example.org/orders", true},
		{"trust domain wildcard matches deep workload", "spiffe://example.org/*", "spiffe://example.org/a/b/c", true},
		{"trust domain wildcard does not match trust domain id", "spiffe://example.org/*", "spiffe://example.org", false},
		{"trust domain wildcard foreign", "spiffe://example.org/*", "spiffe://other.org/orders", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePattern(tt.pattern)
			if err != nil {
				t.Fatalf("ParsePattern(%q): %v", tt.pattern, err)
			}
			id := spiffeid.RequireFromString(tt.id)
			if got := p.Match(id); got != tt.want {
				t.Errorf("%s.Match(%s) = %v, want %v", p, id, got, tt.want)
			}
		})
	}
}

func TestParsePatternRoundTrip(t *testing.T) {
	for _, s := range []string{
		"spiffe://example.org/orders/api",
		"spiffe://example.org/orders/*",
		"spiffe://example.org/*",
	} {
		t.Run(s, func(t *testing.T) {
			p, err := ParsePattern(s)
			if err != nil {
				t.Fatal(err)
			}
			if p.String() != s {
				t.Errorf("String() = %q, want %q", p.String(), s)
			}
			if got, want := p.TrustDomain(), spiffeid.RequireTrustDomainFromString("example.org"); got != want {
				t.Errorf("TrustDomain() = %v, want %v", got, want)
			}
			var q Pattern
			if err := q.UnmarshalText([]byte(s)); err != nil {
				t.Fatal(err)
			}
			if q != p {
				t.Errorf("UnmarshalText gave %v, want %v", q, p)
			}
		})
	}
}

func TestParsePatternRejects(t *testing.T) {
	tests := []struct {
		name, pattern, wantMsg string
	}{
		{"empty", "", "empty"},
		{"missing scheme", "example.org/orders", "must start with spiffe://"},
		{"wrong scheme", "https://example.org/orders", "must start with spiffe://"},
		{"leading space", " spiffe://example.org/orders", "must start with spiffe://"},
		{"query", "spiffe://example.org/orders?x=1", "query"},
		{"fragment", "spiffe://example.org/orders#x", "fragment"},
		{"star glued to segment", "spiffe://example.org/orders*", "'*'"},
		{"star in middle", "spiffe://example.org/*/api", "'*'"},
		{"star in trust domain", "spiffe://*.example.org/orders", "'*'"},
		{"double star", "spiffe://example.org/orders/**", "'*'"},
		{"star then slash", "spiffe://example.org/orders/*/", "'*'"},
		{"bare star", "spiffe://*", "missing trust domain"},
		{"no trust domain", "spiffe://", "missing trust domain"},
		{"no trust domain with path", "spiffe:///orders", "trust domain is missing"},
		{"trust domain only", "spiffe://example.org", "spiffe://example.org/*"},
		{"trailing slash", "spiffe://example.org/orders/", "trailing slash"},
		{"empty segment before star", "spiffe://example.org//*", "trailing slash"},
		{"empty segment", "spiffe://example.org/a//b", "empty segments"},
		{"dot segment", "spiffe://example.org/a/../b", "dot segments"},
		{"uppercase trust domain", "spiffe://Example.org/a", "trust domain characters"},
		{"port", "spiffe://example.org:443/a", "trust domain characters"},
		{"userinfo", "spiffe://u@example.org/a", "trust domain characters"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePattern(tt.pattern)
			if err == nil {
				t.Fatalf("ParsePattern(%q) = %v, want error", tt.pattern, p)
			}
			if !errors.Is(err, ErrInvalidPattern) {
				t.Errorf("error %v does not wrap ErrInvalidPattern", err)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tt.wantMsg)
			}
		})
	}
}

func TestZeroPatternMatchesNothing(t *testing.T) {
	var p Pattern
	if p.Match(spiffeid.RequireFromString("spiffe://example.org/a")) || p.Match(spiffeid.ID{}) {
		t.Error("zero Pattern matched")
	}
	if p.String() != "" {
		t.Errorf("zero Pattern String() = %q", p.String())
	}
	if MustParsePattern("spiffe://example.org/*").Match(spiffeid.ID{}) {
		t.Error("pattern matched the zero ID")
	}
}

func TestRolePolicy(t *testing.T) {
	roles := map[string][]Pattern{
		"orders-readonly": {
			MustParsePattern("spiffe://example.org/orders/*"),
			MustParsePattern("spiffe://example.org/reporting/api"),
		},
		"nobody": nil,
	}
	policy := NewRolePolicy(roles)
	// The policy keeps its own copy: later edits to the input change nothing.
	roles["orders-readonly"][0] = MustParsePattern("spiffe://example.org/*")
	roles["late"] = []Pattern{MustParsePattern("spiffe://example.org/*")}

	tests := []struct {
		name    string
		id      string
		role    string
		wantErr error
	}{
		{"allowed by prefix", "spiffe://example.org/orders/api", "orders-readonly", nil},
		{"allowed by exact", "spiffe://example.org/reporting/api", "orders-readonly", nil},
		{"not allowed", "spiffe://example.org/billing/api", "orders-readonly", ErrNotAllowed},
		{"prefix confusion not allowed", "spiffe://example.org/orders-evil/api", "orders-readonly", ErrNotAllowed},
		{"foreign trust domain not allowed", "spiffe://evil.org/orders/api", "orders-readonly", ErrNotAllowed},
		{"role without patterns denies", "spiffe://example.org/orders/api", "nobody", ErrNotAllowed},
		{"unknown role", "spiffe://example.org/orders/api", "orders-write", ErrUnknownRole},
		{"role added after construction is unknown", "spiffe://example.org/orders/api", "late", ErrUnknownRole},
		{"empty role", "spiffe://example.org/orders/api", "", ErrUnknownRole},
		{"zero id", "", "orders-readonly", ErrNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var id spiffeid.ID
			if tt.id != "" {
				id = spiffeid.RequireFromString(tt.id)
			}
			err := policy(id, tt.role)
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil) != (err == nil) {
				t.Fatalf("policy(%q, %q) = %v, want %v", tt.id, tt.role, err, tt.wantErr)
			}
			// Whatever the outcome, the message must not reveal which IDs
			// would have been allowed.
			if err != nil && (strings.Contains(err.Error(), "reporting") || strings.Contains(err.Error(), "/*")) {
				t.Errorf("error %q leaks the policy", err)
			}
		})
	}

	if err := NewRolePolicy(nil)(spiffeid.RequireFromString("spiffe://example.org/a"), "any"); !errors.Is(err, ErrUnknownRole) {
		t.Errorf("empty policy: got %v, want ErrUnknownRole", err)
	}
}

func TestAdminSet(t *testing.T) {
	admin := spiffeid.RequireFromString("spiffe://example.org/ops/admin")
	set := NewAdminSet([]spiffeid.ID{admin, {}})
	tests := []struct {
		name string
		id   spiffeid.ID
		want bool
	}{
		{"admin", admin, true},
		{"child of admin", spiffeid.RequireFromString("spiffe://example.org/ops/admin/x"), false},
		{"parent of admin", spiffeid.RequireFromString("spiffe://example.org/ops"), false},
		{"same path foreign trust domain", spiffeid.RequireFromString("spiffe://evil.org/ops/admin"), false},
		{"zero id", spiffeid.ID{}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := set.IsAdmin(tt.id); got != tt.want {
				t.Errorf("IsAdmin(%v) = %v, want %v", tt.id, got, tt.want)
			}
		})
	}
	var zero AdminSet
	if zero.IsAdmin(admin) {
		t.Error("zero AdminSet has an admin")
	}
}
