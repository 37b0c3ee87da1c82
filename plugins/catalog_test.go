package plugins_test

import (
	"context"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/builtin"
)

// fakeFactory is an engine that knows one key of its own.
type fakeFactory struct {
	typ string
	key string
}

func (f fakeFactory) Type() string                                          { return f.typ }
func (f fakeFactory) OptionKeys() []string                                  { return []string{f.key} }
func (f fakeFactory) CheckOptions(map[string]any) error                     { return nil }
func (f fakeFactory) CheckStatements([]string) error                        { return nil }
func (f fakeFactory) PrivilegedClauses([]string) []plugins.PrivilegedClause { return nil }
func (f fakeFactory) ClientDSN(plugins.Endpoint, string, string) string     { return f.typ }
func (f fakeFactory) Open(context.Context, plugins.Settings) (plugins.Database, error) {
	return fakeDB{}, nil
}

func TestNewCatalog(t *testing.T) {
	c, err := plugins.NewCatalog(fakeFactory{"zeta", "z"}, fakeFactory{"alpha", "a"})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.Types(); !slices.Equal(got, []string{"alpha", "zeta"}) {
		t.Errorf("Types = %v, want sorted [alpha zeta]", got)
	}
	if f, err := c.Lookup("zeta"); err != nil || f.Type() != "zeta" {
		t.Errorf("Lookup(zeta) = %v, %v", f, err)
	}
	if _, err := plugins.NewCatalog(fakeFactory{"x", "a"}, fakeFactory{"x", "b"}); err == nil {
		t.Error("two factories of one type accepted")
	}
}

func TestBuiltIns(t *testing.T) {
	c := builtin.Catalog()
	if got := c.Types(); !slices.Equal(got, []string{"mysql", "postgres"}) {
		t.Errorf("built-in types = %v, want [mysql postgres]", got)
	}
	for _, f := range builtin.BuiltIns() {
		for _, k := range f.OptionKeys() {
			if slices.Contains([]string{"plugin", "host", "port", "database", "username", "password", "password_env", "password_file",
				"sslmode", "max_connections", "connect_timeout", "username_prefix"}, k) {
				t.Errorf("plugin %s claims the common key %s", f.Type(), k)
			}
		}
	}
}

// TestCatalogOptions: the messages an operator sees (the broker prefixes
// the key with databases.<name>.).
func TestCatalogOptions(t *testing.T) {
	c := builtin.Catalog()
	tests := []struct {
		name    string
		plugin  string
		opts    map[string]any
		wantKey string // "" when accepted
		wantMsg string
	}{
		{name: "no options", plugin: "postgres"},
		{name: "own key postgres", plugin: "postgres", opts: map[string]any{"scram_iterations": 16}},
		{name: "own key mysql", plugin: "mysql", opts: map[string]any{"user_host": "10.0.%"}},
		{name: "empty user_host is the default", plugin: "mysql", opts: map[string]any{"user_host": ""}},
		{name: "numeric user_host reads as text", plugin: "mysql", opts: map[string]any{"user_host": 10}},
		{name: "unknown plugin", plugin: "oracle",
			wantMsg: `unknown plugin "oracle" (known: mysql, postgres)`},
		{name: "mysql key on postgres", plugin: "postgres", opts: map[string]any{"user_host": "%"},
			wantKey: "user_host", wantMsg: "user_host: only applies to plugin mysql"},
		{name: "postgres key on mysql", plugin: "mysql", opts: map[string]any{"scram_iterations": 16},
			wantKey: "scram_iterations", wantMsg: "scram_iterations: only applies to plugin postgres"},
		{name: "unknown key", plugin: "postgres", opts: map[string]any{"scram_iteratons": 16},
			wantKey: "scram_iteratons", wantMsg: "scram_iteratons: unknown key for plugin postgres"},
		{name: "negative iterations", plugin: "postgres", opts: map[string]any{"scram_iterations": -1},
			wantKey: "scram_iterations", wantMsg: "scram_iterations: must be between 1 and 1048576"},
		{name: "huge iterations", plugin: "postgres", opts: map[string]any{"scram_iterations": 100000000},
			wantKey: "scram_iterations", wantMsg: "scram_iterations: must be between 1 and 1048576"},
		{name: "iterations not a number", plugin: "postgres", opts: map[string]any{"scram_iterations": "many"},
			wantKey: "scram_iterations", wantMsg: "scram_iterations: want an integer, got many"},
		{name: "quote in user_host", plugin: "mysql", opts: map[string]any{"user_host": "a'b"},
			wantKey: "user_host", wantMsg: `user_host: host "a'b" may only hold letters, digits and . _ % : / -`},
		{name: "long user_host", plugin: "mysql", opts: map[string]any{"user_host": strings.Repeat("h", 256)},
			wantKey: "user_host", wantMsg: "user_host: host is 256 characters, at most 255"},
		{name: "user_host not a scalar", plugin: "mysql", opts: map[string]any{"user_host": []any{"a"}},
			wantKey: "user_host", wantMsg: "user_host: want a string"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := c.CheckOptions(tc.plugin, tc.opts)
			if tc.wantMsg == "" {
				if err != nil {
					t.Fatalf("CheckOptions = %v, want nil", err)
				}
				return
			}
			if err == nil || err.Error() != tc.wantMsg {
				t.Fatalf("CheckOptions = %v, want %q", err, tc.wantMsg)
			}
			oe, ok := errors.AsType[*plugins.OptionError](err)
			if got := ""; ok {
				got = oe.Key
				if got != tc.wantKey {
					t.Errorf("OptionError.Key = %q, want %q", got, tc.wantKey)
				}
			} else if tc.wantKey != "" {
				t.Errorf("error %T is not an *OptionError", err)
			}
		})
	}
}

func TestCheckStatements(t *testing.T) {
	c := builtin.Catalog()
	plaintext := []string{"CREATE USER {{name}} IDENTIFIED BY {{password}}"}
	my, _ := c.Lookup("mysql")
	if err := my.CheckStatements(plaintext); err == nil || !strings.Contains(err.Error(), "mysql_native_password hash") {
		t.Errorf("mysql CheckStatements(plaintext password) = %v", err)
	}
	pg, _ := c.Lookup("postgres")
	if err := pg.CheckStatements([]string{"CREATE ROLE {{name}} PASSWORD {{password}}"}); err != nil {
		t.Errorf("postgres CheckStatements = %v", err)
	}
}

func TestClientDSN(t *testing.T) {
	c := builtin.Catalog()
	ep := plugins.Endpoint{Host: "db.example", Port: 5432, Database: "orders", SSLMode: "verify-full"}
	for typ, want := range map[string]string{
		"postgres": "postgres://u:p@db.example:5432/orders?sslmode=verify-full",
		"mysql":    "u:p@tcp(db.example:5432)/orders?parseTime=true&tls=true",
	} {
		f, _ := c.Lookup(typ)
		if got := f.ClientDSN(ep, "u", "p"); got != want {
			t.Errorf("%s ClientDSN = %q, want %q", typ, got, want)
		}
	}
}
