package mysql

import (
	"errors"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/plugins"
)

// lexMySQL splits sql into bare words, 'string' literals (quotes doubled),
// and the punctuation @ ; , — the little the plugin's quoting produces. A
// backslash inside a literal is refused: its meaning depends on sql_mode
// (NO_BACKSLASH_ESCAPES), which is exactly why quoteString never emits one.
func lexMySQL(sql string) ([]string, error) {
	var toks []string
	for i := 0; i < len(sql); {
		c := sql[i]
		switch {
		case c == ' ':
			i++
		case c == '\'':
			var b strings.Builder
			j := i + 1
			for ; ; j++ {
				if j >= len(sql) {
					return nil, errors.New("unterminated literal")
				}
				if sql[j] == '\\' {
					return nil, errors.New("backslash in a literal")
				}
				if sql[j] == '\'' {
					if j+1 < len(sql) && sql[j+1] == '\'' {
						b.WriteByte('\'')
						j++
						continue
					}
					break
				}
				b.WriteByte(sql[j])
			}
			toks, i = append(toks, "s:"+b.String()), j+1
		case c == '@' || c == ';' || c == ',':
			toks, i = append(toks, "p:"+string(c)), i+1
		case 'A' <= c && c <= 'Z' || 'a' <= c && c <= 'z' || c == '_':
			j := i
			for j < len(sql) && ('A' <= sql[j] && sql[j] <= 'Z' || 'a' <= sql[j] && sql[j] <= 'z' || sql[j] == '_' || '0' <= sql[j] && sql[j] <= '9') {
				j++
			}
			toks, i = append(toks, "k:"+sql[i:j]), j
		default:
			return nil, errors.New("unexpected character " + string(c))
		}
	}
	return toks, nil
}

// FuzzQuoting: quoteString refuses exactly the values with a backslash or a
// NUL; every other value, rendered as the user, host and password of a
// creation statement, lexes back to the template's tokens with the same
// values, whatever the sql_mode (no backslash is ever emitted).
func FuzzQuoting(f *testing.F) {
	f.Add("cb_orders_readonly_abcdefghijklmnop", "%", "secret")
	f.Add("x'@'%'; DROP USER root; --", "h'", "p''")
	f.Add("a", `10.0.0.0/255.0.0.0`, `\'`)
	f.Add("", "", "\x00")
	f.Add("é", "::1", "' OR '1'='1")
	f.Fuzz(func(t *testing.T, user, host, password string) {
		bad := func(s string) bool { return strings.ContainsAny(s, "\\\x00") }
		q, err := quoteString(password)
		if bad(password) != (err != nil) {
			t.Fatalf("quoteString(%q) = %q, %v", password, q, err)
		}
		if err == nil && bad(q) {
			t.Fatalf("quoteString(%q) = %q emits a backslash or NUL", password, q)
		}
		acct, aerr := account(user, host)
		if (bad(user) || bad(host)) != (aerr != nil) {
			t.Fatalf("account(%q, %q) = %q, %v", user, host, acct, aerr)
		}
		if err := checkHost(host); err == nil {
			if hq, _ := quoteString(host); hq != "'"+host+"'" {
				t.Fatalf("a checked host %q needs escaping: %q", host, hq)
			}
		}
		if err != nil || aerr != nil {
			return
		}
		stmt, err := plugins.Render("CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}; GRANT r TO {{name}}",
			map[string]string{plugins.PlaceholderName: acct, plugins.PlaceholderPassword: q})
		if err != nil {
			t.Fatal(err)
		}
		got, err := lexMySQL(stmt)
		if err != nil {
			t.Fatalf("%q does not lex: %v", stmt, err)
		}
		want := []string{"k:CREATE", "k:USER", "s:" + user, "p:@", "s:" + host, "k:IDENTIFIED", "k:BY", "k:PASSWORD", "s:" + password,
			"p:;", "k:GRANT", "k:r", "k:TO", "s:" + user, "p:@", "s:" + host}
		if strings.Join(got, "\x01") != strings.Join(want, "\x01") {
			t.Fatalf("%q lexes to %q, want %q", stmt, got, want)
		}
	})
}

// FuzzGenerateUsername: for every server limit the plugin may learn (MySQL
// 32, MariaDB 80 or 128), a generated name fits it, has the prefix and
// matches UsernamePattern.
func FuzzGenerateUsername(f *testing.F) {
	for _, s := range []string{"orders-readonly", "", "ÄÖÜ", strings.Repeat("long_role_", 20), "__x__"} {
		f.Add("cb", s, 32)
	}
	f.Add("abcdefgh", "orders-readonly", 32)
	f.Add("cb", "orders", 80)
	f.Add("cb", "orders", 128)
	f.Fuzz(func(t *testing.T, prefix, role string, limit int) {
		if limit < fallbackNameLimit || limit > maxNameLen {
			return
		}
		u, err := plugins.NewUsernames(usernameRules, prefix)
		if err != nil {
			return
		}
		name, err := u.Generate(role, limit)
		if err != nil {
			t.Fatalf("Generate(%q, %d) with prefix %q: %v", role, limit, prefix, err)
		}
		if len(name) > limit || !UsernamePattern.MatchString(name) || !strings.HasPrefix(name, prefix+"_") || u.Check(name) != nil {
			t.Fatalf("Generate(%q, %d) with prefix %q = %q", role, limit, prefix, name)
		}
	})
}
