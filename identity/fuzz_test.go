package identity

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// FuzzPattern: parsing and matching never panic; a parsed pattern prints
// back to one that parses equal; an exact pattern matches only its own ID;
// a prefix pattern matches only IDs of its trust domain strictly under its
// path on a segment boundary.
func FuzzPattern(f *testing.F) {
	for _, s := range [][2]string{
		{"spiffe://example.org/orders/*", "spiffe://example.org/orders/api"},
		{"spiffe://example.org/orders/*", "spiffe://example.org/orders"},
		{"spiffe://example.org/orders/*", "spiffe://example.org/orders-evil/x"},
		{"spiffe://example.org/*", "spiffe://evil.org/orders/api"},
		{"spiffe://example.org/*", "spiffe://example.org.evil.org/x"},
		{"spiffe://example.org/orders/api", "spiffe://example.org/orders/api"},
		{"spiffe://example.org/orders/api", "spiffe://example.org/orders/api/v2"},
		{"spiffe://example.org/a/*/b", "spiffe://example.org/a/x/b"},
		{"spiffe://example.org", "spiffe://example.org"},
		{"spiffe://Example.org/x", "spiffe://example.org/x"},
		{"spiffe://example.org/x?y", "spiffe://example.org/x"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, idText string) {
		p, err := ParsePattern(pattern)
		if err != nil {
			return
		}
		again, err := ParsePattern(p.String())
		if err != nil || again != p {
			t.Fatalf("ParsePattern(%q).String() = %q parses to %+v, %v", pattern, p.String(), again, err)
		}
		id, err := spiffeid.FromString(idText)
		if err != nil {
			return
		}
		m := p.Match(id)
		exact := !strings.HasSuffix(pattern, prefixSuffix)
		switch {
		case exact && m != (id.String() == p.String()):
			t.Fatalf("exact pattern %q: Match(%q) = %v", p, id, m)
		case m && id.TrustDomain() != p.TrustDomain():
			t.Fatalf("pattern %q matched %q of another trust domain", p, id)
		case !exact && m != strings.HasPrefix(id.String(), strings.TrimSuffix(p.String(), "*")):
			t.Fatalf("prefix pattern %q: Match(%q) = %v", p, id, m)
		}
		// The same ID in another trust domain never matches.
		other, err := spiffeid.TrustDomainFromString("other-" + p.TrustDomain().Name())
		if err == nil {
			if oid, err := spiffeid.FromPath(other, id.Path()); err == nil && p.Match(oid) {
				t.Fatalf("pattern %q matched %q", p, oid)
			}
		}
	})
}
