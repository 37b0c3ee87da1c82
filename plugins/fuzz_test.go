package plugins

import (
	"regexp"
	"strings"
	"testing"
)

// FuzzRender: for any statement, validation and rendering never panic; a
// statement that validates renders with every placeholder replaced by its
// value verbatim, the text between placeholders unchanged, and no
// placeholder inside a value expanded again.
func FuzzRender(f *testing.F) {
	f.Add("CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}}", "'x'", "'p''w'")
	f.Add("GRANT r TO {{ name }}; -- {{password}}", `"{{password}}"`, "{{name}}")
	f.Add("CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}", "'u'@'%'", "'*ABC'")
	f.Add("{{nam}}", "a", "b")
	f.Add("x {{ {{name}}", "a", "b")
	f.Add("{{name}}{{name}}}}", "$$", "\\")
	f.Fuzz(func(t *testing.T, stmt, name, password string) {
		values := map[string]string{PlaceholderName: name, PlaceholderPassword: password, PlaceholderExpiration: "'2030-01-01'"}
		verr := ValidateStatements([]string{stmt}, true)
		out, rerr := Render(stmt, values)
		if verr != nil {
			return
		}
		if rerr != nil {
			t.Fatalf("valid statement %q does not render: %v", stmt, rerr)
		}
		// Rebuild the expected output from the pieces around placeholders.
		var want strings.Builder
		last := 0
		for _, m := range placeholderRE.FindAllStringSubmatchIndex(stmt, -1) {
			want.WriteString(stmt[last:m[0]])
			want.WriteString(values[stmt[m[2]:m[3]]])
			last = m[1]
		}
		want.WriteString(stmt[last:])
		if out != want.String() {
			t.Fatalf("Render(%q) = %q, want %q", stmt, out, want.String())
		}
		// Revocation rendering has only {{name}}: it either renders the same
		// way or refuses, never leaves a placeholder in place.
		rev, err := RenderRevocation([]string{stmt}, name)
		if err == nil {
			if strings.Contains(stmt, "{{password}}") || strings.Contains(stmt, "{{expiration}}") {
				t.Fatalf("revocation rendered a statement asking for a secret: %q", stmt)
			}
			if !strings.Contains(name, "{{") && placeholderRE.MatchString(rev[0]) {
				t.Fatalf("revocation left a placeholder: %q", rev[0])
			}
		}
	})
}

var rolePart = regexp.MustCompile(`^` + rolePartRE + `$`)

// FuzzSanitizeRole: the middle part of a username always matches its
// pattern and fits its budget.
func FuzzSanitizeRole(f *testing.F) {
	for _, s := range []string{"orders-readonly", "", "___", "Ünïcödé", "\u212a", "a_b", "ROLE!!name", "x"} {
		f.Add(s, 20)
	}
	f.Add("abcdefghijklmnop", 3)
	f.Fuzz(func(t *testing.T, role string, max int) {
		if max < 1 || max > 200 {
			return
		}
		s := SanitizeRole(role, max)
		if len(s) > max || !rolePart.MatchString(s) {
			t.Fatalf("SanitizeRole(%q, %d) = %q", role, max, s)
		}
	})
}

// FuzzUsernames: for every valid prefix, role and limit, Generate either
// refuses the limit or returns a name within it that its own Check and the
// engine-wide pattern accept, with the prefix.
func FuzzUsernames(f *testing.F) {
	f.Add("cb", "orders-readonly", 63, 26, 26, 0, 63)
	f.Add("cb", "orders-readonly", 32, 16, 26, 8, 128)
	f.Add("abcdefgh", "x", 16, 16, 26, 8, 128)
	f.Add("Bad", "x", 64, 16, 26, 8, 128)
	f.Fuzz(func(t *testing.T, prefix, role string, limit, minR, maxR, reserve, maxLen int) {
		if minR < 1 || maxR < minR || maxR > randomBytes*8/5 || reserve < 0 || reserve > 64 || maxLen < 1 || maxLen > 256 || limit < 0 || limit > maxLen {
			return
		}
		rules := UsernameRules{Engine: "fuzz", MaxLen: maxLen, MinRandom: minR, MaxRandom: maxR, RoleReserve: reserve}
		u, err := NewUsernames(rules, prefix)
		if err != nil {
			if prefixRE.MatchString(prefix) {
				t.Fatalf("valid prefix %q refused: %v", prefix, err)
			}
			return
		}
		name, err := u.Generate(role, limit)
		if err != nil {
			if _, _, serr := rules.Split(limit, len(prefix)); serr == nil {
				t.Fatalf("Generate(%q, %d) failed though the limit fits: %v", role, limit, err)
			}
			return
		}
		if len(name) > limit || !strings.HasPrefix(name, prefix+"_") || !rules.Pattern().MatchString(name) || u.Check(name) != nil {
			t.Fatalf("Generate(%q, %d) with prefix %q = %q", role, limit, prefix, name)
		}
	})
}
