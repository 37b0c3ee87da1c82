package plugins_test

import (
	"strings"
	"testing"

	"github.com/credbroker/credbroker/plugins"
)

func TestValidateStatements(t *testing.T) {
	tests := []struct {
		name        string
		stmts       []string
		requireName bool
		wantErr     string // substring; "" means valid
	}{
		{"group template", []string{"CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE readers;"}, true, ""},
		{"spaces inside braces", []string{"CREATE ROLE {{ name }} PASSWORD {{  password }}"}, true, ""},
		{"name in a later statement", []string{"SELECT 1", "GRANT readers TO {{name}}"}, true, ""},
		{"no statements, creation", nil, true, "no statements"},
		{"no statements, revocation", nil, false, ""},
		{"revocation without name", []string{"SELECT 1"}, false, ""},
		{"empty statement", []string{"CREATE ROLE {{name}}", "  \n\t"}, true, "statement 1 is empty"},
		{"name missing", []string{"CREATE ROLE bob PASSWORD {{password}}"}, true, "no statement uses {{name}}"},
		{"unknown placeholder", []string{"CREATE ROLE {{name}} IN ROLE {{group}}"}, true, "unknown placeholder"},
		{"wrong case", []string{"CREATE ROLE {{NAME}}"}, true, "unknown placeholder"},
		{"empty placeholder", []string{"CREATE ROLE {{name}} {{}}"}, true, "unknown placeholder"},
		{"unclosed", []string{"CREATE ROLE {{name}} PASSWORD {{password"}, true, "malformed placeholder"},
		{"digits in placeholder", []string{"CREATE ROLE {{name}} {{pass1}}"}, true, "malformed placeholder"},
		{"hostile name with newline", []string{"CREATE ROLE {{name\n}}"}, true, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := plugins.ValidateStatements(tc.stmts, tc.requireName)
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("ValidateStatements = %v, want nil", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("ValidateStatements = nil, want error containing %q", tc.wantErr)
			case tc.wantErr != "" && !strings.Contains(err.Error(), tc.wantErr):
				t.Errorf("ValidateStatements = %v, want error containing %q", err, tc.wantErr)
			}
		})
	}
}

func TestRender(t *testing.T) {
	// Values arrive already quoted by the plugin; Render must place them
	// verbatim and never read placeholders inside them.
	values := map[string]string{
		plugins.PlaceholderName:       `"cb_role_abc"`,
		plugins.PlaceholderPassword:   `'{{name}}'`,
		plugins.PlaceholderExpiration: `'2030-01-01 00:00:00+00'`,
	}
	tests := []struct {
		name    string
		stmt    string
		values  map[string]string
		want    string
		wantErr string
	}{
		{
			name:   "all placeholders",
			stmt:   "CREATE ROLE {{name}} PASSWORD {{password}} VALID UNTIL {{expiration}}",
			values: values,
			want:   `CREATE ROLE "cb_role_abc" PASSWORD '{{name}}' VALID UNTIL '2030-01-01 00:00:00+00'`,
		},
		{
			name:   "value containing a placeholder is not expanded again",
			stmt:   "{{password}}",
			values: map[string]string{plugins.PlaceholderName: "X", plugins.PlaceholderPassword: "{{name}}"},
			want:   "{{name}}",
		},
		{
			name:   "value containing braces and quotes",
			stmt:   "COMMENT ON ROLE {{name}} IS {{password}}",
			values: map[string]string{plugins.PlaceholderName: `"a""b"`, plugins.PlaceholderPassword: `'}}{{ '';--'`},
			want:   `COMMENT ON ROLE "a""b" IS '}}{{ '';--'`,
		},
		{
			name:   "repeated placeholder",
			stmt:   "GRANT r TO {{name}}; ALTER ROLE {{ name }} NOLOGIN",
			values: values,
			want:   `GRANT r TO "cb_role_abc"; ALTER ROLE "cb_role_abc" NOLOGIN`,
		},
		{
			name:   "dollar signs in values are literal",
			stmt:   "ALTER ROLE {{name}} PASSWORD {{password}}",
			values: map[string]string{plugins.PlaceholderName: "n", plugins.PlaceholderPassword: "'SCRAM-SHA-256$4096:a$1:b'"},
			want:   "ALTER ROLE n PASSWORD 'SCRAM-SHA-256$4096:a$1:b'",
		},
		{
			name:    "revocation cannot ask for the password",
			stmt:    "ALTER ROLE {{name}} PASSWORD {{password}}",
			values:  map[string]string{plugins.PlaceholderName: `"x"`},
			wantErr: "{{password}} has no value",
		},
		{
			name:   "no placeholders",
			stmt:   "SELECT 1",
			values: nil,
			want:   "SELECT 1",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := plugins.Render(tc.stmt, tc.values)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Render = %q, %v; want error containing %q", got, err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Render: %v", err)
			}
			if got != tc.want {
				t.Errorf("Render =\n  %s\nwant\n  %s", got, tc.want)
			}
		})
	}
}
