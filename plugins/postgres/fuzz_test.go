package postgres

import (
	"errors"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/plugins"
)

// fuzzToken is one fuzzToken of the small PostgreSQL lexer below, which models just
// what the broker's quoting produces (identifiers and keywords, "quoted
// identifiers", 'standard' and E'escaped' string literals, punctuation) and
// refuses the rest, so that a fuzzed value that escapes its literal shows as
// an extra or different fuzzToken.
type fuzzToken struct {
	kind byte // 'k' keyword or bare identifier, 'i' quoted identifier, 's' string, 'p' punctuation
	text string
}

func lexPG(sql string) ([]fuzzToken, error) {
	var toks []fuzzToken
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == ' ' || c == '\n' || c == '\t' || c == '\r':
			i++
		case c == '"':
			s, n, err := lexQuoted(sql[i+1:], '"', false)
			if err != nil {
				return nil, err
			}
			toks, i = append(toks, fuzzToken{'i', s}), i+1+n
		case c == '\'':
			s, n, err := lexQuoted(sql[i+1:], '\'', false)
			if err != nil {
				return nil, err
			}
			toks, i = append(toks, fuzzToken{'s', s}), i+1+n
		case (c == 'E' || c == 'e') && i+1 < len(sql) && sql[i+1] == '\'':
			s, n, err := lexQuoted(sql[i+2:], '\'', true)
			if err != nil {
				return nil, err
			}
			toks, i = append(toks, fuzzToken{'s', s}), i+2+n
		case identChar(c) && !isDigit(c):
			j := i
			for j < len(sql) && (identChar(sql[j]) || sql[j] == '$') {
				j++
			}
			toks, i = append(toks, fuzzToken{'k', sql[i:j]}), j
		case strings.IndexByte(";,()", c) >= 0:
			toks, i = append(toks, fuzzToken{'p', string(c)}), i+1
		default:
			return nil, errors.New("unexpected character " + string(c))
		}
	}
	return toks, nil
}

// lexQuoted reads a quoted fuzzToken's body up to its closing quote q (doubled
// inside), with backslash escapes \\ and \' when escapes; it returns the
// value and how many bytes it read, the closing quote included.
func lexQuoted(s string, q byte, escapes bool) (string, int, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case escapes && c == '\\':
			if i+1 >= len(s) || (s[i+1] != '\\' && s[i+1] != '\'') {
				return "", 0, errors.New("escape other than \\\\ or \\'")
			}
			b.WriteByte(s[i+1])
			i++
		case c == q && i+1 < len(s) && s[i+1] == q:
			b.WriteByte(q)
			i++
		case c == q:
			return b.String(), i + 1, nil
		default:
			b.WriteByte(c)
		}
	}
	return "", 0, errors.New("unterminated quoted fuzzToken")
}

const fuzzTemplate = "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE r;"

// FuzzQuoting: a rendered statement with a fuzzed name and password lexes
// back to exactly the template's tokens with the same identifier and
// literal, and ends at top level (so NewUser may pipeline it): quoting
// never lets a value out of its identifier or literal.
func FuzzQuoting(f *testing.F) {
	f.Add("cb_orders_readonly_abcdefghijklmnopqrstuvwxyz", "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy")
	f.Add(`x"; DROP ROLE y; --`, `p'; DROP ROLE y; --`)
	f.Add(`a""b`, `\' OR 1=1 --`)
	f.Add(`e`, `\\'\`)
	f.Add(`$$`, `$$ ; $$`)
	f.Add("é", "/* '")
	f.Fuzz(func(t *testing.T, name, password string) {
		if strings.ContainsRune(name, 0) {
			return // names match UsernamePattern long before quoting
		}
		pw, err := quoteLiteral(password)
		if strings.ContainsRune(password, 0) {
			if err == nil {
				t.Fatalf("quoteLiteral accepted a NUL: %q", pw)
			}
			return
		}
		if err != nil {
			t.Fatalf("quoteLiteral(%q): %v", password, err)
		}
		exp, err := quoteLiteral("2030-01-01 00:00:00+00")
		if err != nil {
			t.Fatal(err)
		}
		stmt, err := plugins.Render(fuzzTemplate, map[string]string{
			plugins.PlaceholderName: quoteIdent(name), plugins.PlaceholderPassword: pw, plugins.PlaceholderExpiration: exp,
		})
		if err != nil {
			t.Fatal(err)
		}
		got, err := lexPG(stmt)
		if err != nil {
			t.Fatalf("%q does not lex: %v", stmt, err)
		}
		want := []fuzzToken{{'k', "CREATE"}, {'k', "ROLE"}, {'i', name}, {'k', "WITH"}, {'k', "LOGIN"}, {'k', "PASSWORD"},
			{'s', password}, {'k', "VALID"}, {'k', "UNTIL"}, {'s', "2030-01-01 00:00:00+00"}, {'k', "IN"}, {'k', "ROLE"}, {'k', "r"}, {'p', ";"}}
		if len(got) != len(want) {
			t.Fatalf("%q lexes to %d tokens, want %d: %q", stmt, len(got), len(want), got)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Fatalf("%q: fuzzToken %d is %q, want %q", stmt, i, got[i], want[i])
			}
		}
		if !endsAtTopLevel(stmt) {
			t.Fatalf("endsAtTopLevel(%q) = false", stmt)
		}
	})
}

// FuzzEndsAtTopLevel: the lexer never panics, and a quoted value appended
// to SQL that ends at top level leaves it at top level.
func FuzzEndsAtTopLevel(f *testing.F) {
	f.Add("CREATE ROLE x", "v")
	f.Add("SELECT $tag$ a $tag$", `\`)
	f.Add("/* /* */ */ SELECT E'\\''", "'")
	f.Add("-- c\nSELECT 1", "--")
	f.Add(`SELECT "a""b", 'c''d'`, "$$")
	f.Add("SELECT $1, a$b", "/*")
	f.Add("U&", "x")
	f.Fuzz(func(t *testing.T, sql, value string) {
		top := endsAtTopLevel(sql)
		if !top || strings.ContainsRune(value, 0) {
			return
		}
		lit, err := quoteLiteral(value)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range []string{sql + " " + lit, sql + "\n" + lit, sql + " " + quoteIdent(value)} {
			if !endsAtTopLevel(s) {
				t.Fatalf("endsAtTopLevel(%q) = true but endsAtTopLevel(%q) = false", sql, s)
			}
		}
	})
}

// FuzzGenerateUsername: every generated name matches UsernamePattern, has
// the database's prefix and fits NAMEDATALEN-1.
func FuzzGenerateUsername(f *testing.F) {
	for _, s := range []string{"orders-readonly", "", "ÄÖÜ", strings.Repeat("long_role_", 20), "__x__"} {
		f.Add("cb", s)
	}
	f.Add("abcdefgh", "r")
	f.Fuzz(func(t *testing.T, prefix, role string) {
		u, err := plugins.NewUsernames(usernameRules, prefix)
		if err != nil {
			return
		}
		name, err := u.Generate(role, maxNameLen)
		if err != nil {
			t.Fatalf("Generate(%q) with prefix %q: %v", role, prefix, err)
		}
		if len(name) > maxNameLen || !UsernamePattern.MatchString(name) || !strings.HasPrefix(name, prefix+"_") || u.Check(name) != nil {
			t.Fatalf("Generate(%q) with prefix %q = %q", role, prefix, name)
		}
	})
}
