package plugins

import (
	"fmt"
	"regexp"
	"strings"
)

// Placeholders an operator may use in creation and revocation statements.
// The broker fills each with a value it generated itself, quoted by the
// plugin's own rules; nothing from a request or a SPIFFE ID is ever placed in
// a statement.
const (
	PlaceholderName       = "name"
	PlaceholderPassword   = "password"
	PlaceholderExpiration = "expiration"
)

var placeholderRE = regexp.MustCompile(`\{\{\s*([A-Za-z_]*)\s*\}\}`)

// ValidateStatements checks a role's statements before they are ever used:
// only known placeholders and, for creation statements (requireName), at
// least one statement with {{name}} present. Revocation statements may be
// empty.
func ValidateStatements(stmts []string, requireName bool) error {
	if requireName && len(stmts) == 0 {
		return fmt.Errorf("no statements")
	}
	sawName := false
	for i, s := range stmts {
		if strings.TrimSpace(s) == "" {
			return fmt.Errorf("statement %d is empty", i)
		}
		for _, m := range placeholderRE.FindAllStringSubmatch(s, -1) {
			switch m[1] {
			case PlaceholderName:
				sawName = true
			case PlaceholderPassword, PlaceholderExpiration:
			default:
				return fmt.Errorf("statement %d: unknown placeholder %q (known: {{name}}, {{password}}, {{expiration}})", i, m[0])
			}
		}
		// A stray "{{" that is not a placeholder is almost always a typo.
		if strings.Count(s, "{{") != len(placeholderRE.FindAllString(s, -1)) {
			return fmt.Errorf("statement %d: malformed placeholder", i)
		}
	}
	if requireName && len(stmts) > 0 && !sawName {
		return fmt.Errorf("no statement uses {{name}}")
	}
	return nil
}

// Render fills the placeholders of stmt. values maps a placeholder name to an
// already quoted SQL fragment; a placeholder without a value is an error, so a
// revocation statement cannot accidentally ask for a password.
func Render(stmt string, values map[string]string) (string, error) {
	var missing string
	out := placeholderRE.ReplaceAllStringFunc(stmt, func(m string) string {
		name := placeholderRE.FindStringSubmatch(m)[1]
		v, ok := values[name]
		if !ok {
			missing = name
			return m
		}
		return v
	})
	if missing != "" {
		return "", fmt.Errorf("placeholder {{%s}} has no value here", missing)
	}
	return out, nil
}

// RenderRevocation checks a lease's revocation statements and renders them
// for one user, whose name the plugin has checked and quoted (name: an
// identifier on PostgreSQL, 'user'@'host' on MySQL). Only {{name}} has a
// value. Errors wrap ErrInvalidStatement; plugins call it before changing
// anything, so a bad snapshot fails without leaving the user half-revoked.
func RenderRevocation(stmts []string, name string) ([]string, error) {
	if err := ValidateStatements(stmts, false); err != nil {
		return nil, &Error{Kind: KindInvalidStatement, Err: fmt.Errorf("%w: %w", ErrInvalidStatement, err)}
	}
	values := map[string]string{PlaceholderName: name}
	out := make([]string, 0, len(stmts))
	for i, s := range stmts {
		r, err := Render(s, values)
		if err != nil {
			return nil, &Error{Kind: KindInvalidStatement, Err: fmt.Errorf("revocation statement %d: %w: %w", i+1, ErrInvalidStatement, err)}
		}
		out = append(out, r)
	}
	return out, nil
}
