package plugins

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"
)

// Factory is what an engine package exports, exactly one of: everything the
// broker needs to configure, open and describe a database of that engine
// without importing the package. Model: Vault dbplugin v5's Type() and
// Initialize; SPIRE's catalog of built-in plugins.
type Factory interface {
	// Type is the engine's name in the plugin key of the config ("postgres").
	Type() string
	// OptionKeys are the config keys only this engine knows (besides the
	// common ones of Settings).
	OptionKeys() []string
	// CheckOptions validates the engine's own keys (only keys of
	// OptionKeys reach it). Errors are *OptionError naming the key.
	CheckOptions(opts map[string]any) error
	// CheckStatements checks a role's creation statements for what the
	// engine can tell without a server (placeholders are already checked).
	CheckStatements(creation []string) error
	// PrivilegedClauses lints a role's creation statements for clauses
	// that give the new user (or the statement, run as the broker's admin)
	// power over the whole server rather than over some objects:
	// SUPERUSER, ON *.*, server file access and the like. The broker
	// refuses such a role unless it says allow_privileged. The lint reads
	// the statements with the engine's lexer, so string literals, quoted
	// identifiers and comments do not count. It is a guard against
	// mistakes, not a sandbox: it does not look into function bodies.
	PrivilegedClauses(creation []string) []PrivilegedClause
	// Open builds the database from checked settings. It does not contact
	// the server: the broker must start while a server is down (see
	// Database.Ping).
	Open(ctx context.Context, s Settings) (Database, error)
	// ClientDSN is the connection string handed to a workload for its own
	// user, in the form the engine's usual driver reads.
	ClientDSN(e Endpoint, username, password string) string
}

// PrivilegedClause is one finding of Factory.PrivilegedClauses.
type PrivilegedClause struct {
	// Statement is the 1-based index of the creation statement.
	Statement int
	// What the clause does, as a verb phrase: "grants SUPERUSER",
	// "grants privileges ON *.*", "runs ALTER SYSTEM".
	What string
}

func (p PrivilegedClause) String() string {
	return fmt.Sprintf("creation statement %d %s", p.Statement, p.What)
}

// Endpoint is where clients reach a database; the broker copies it into
// every credential.
type Endpoint struct {
	Host     string
	Port     int
	Database string // server-side database (schema) name
	// SSLMode is a libpq sslmode, the broker's one TLS setting for every
	// engine; each engine maps it to its driver's.
	SSLMode string
}

// Settings is one configured database as the factory receives it: the
// common keys, typed, and the engine's own keys (Options), already checked
// by CheckOptions.
type Settings struct {
	Endpoint
	Username string // admin user
	Password string // admin password, resolved; never put it in an error
	// MaxConns bounds the pool; ConnectTimeout each new connection.
	MaxConns       int
	ConnectTimeout time.Duration
	// UsernamePrefix starts every generated username (PrefixPattern).
	UsernamePrefix string
	// Marker tells this broker's users from anyone else's
	// ("credbroker:<instance_id>").
	Marker  string
	Options map[string]any
}

// OptionError is a bad engine-specific config key. Key is relative to the
// database ("user_host"); the broker prefixes it.
type OptionError struct {
	Key string
	Msg string
}

func (e *OptionError) Error() string { return e.Key + ": " + e.Msg }

// Catalog is the set of engines a build knows, by type name.
type Catalog struct {
	byType map[string]Factory
	types  []string
}

// NewCatalog indexes factories by Type; two with one name are a
// programming error.
func NewCatalog(factories ...Factory) (*Catalog, error) {
	c := &Catalog{byType: make(map[string]Factory, len(factories))}
	for _, f := range factories {
		t := f.Type()
		if _, dup := c.byType[t]; dup {
			return nil, fmt.Errorf("plugins: two factories of type %q", t)
		}
		c.byType[t] = f
		c.types = append(c.types, t)
	}
	slices.Sort(c.types)
	return c, nil
}

// Types lists the known type names, sorted.
func (c *Catalog) Types() []string { return slices.Clone(c.types) }

// Lookup returns the factory of type typ.
func (c *Catalog) Lookup(typ string) (Factory, error) {
	f, ok := c.byType[typ]
	if !ok {
		return nil, fmt.Errorf("unknown plugin %q (known: %s)", typ, strings.Join(c.types, ", "))
	}
	return f, nil
}

// CheckOptions checks the engine-specific keys of a database of type typ:
// a key another engine knows "only applies to plugin X", a key no engine
// knows is unknown, and the engine checks its own. Keys are checked in
// sorted order; errors are *OptionError.
func (c *Catalog) CheckOptions(typ string, opts map[string]any) error {
	f, err := c.Lookup(typ)
	if err != nil {
		return err
	}
	own := f.OptionKeys()
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		if slices.Contains(own, k) {
			continue
		}
		var others []string
		for _, t := range c.types {
			if slices.Contains(c.byType[t].OptionKeys(), k) {
				others = append(others, t)
			}
		}
		if len(others) > 0 {
			return &OptionError{Key: k, Msg: "only applies to plugin " + strings.Join(others, ", ")}
		}
		return &OptionError{Key: k, Msg: fmt.Sprintf("unknown key for plugin %s", typ)}
	}
	return f.CheckOptions(opts)
}

// OptionString reads an engine key holding text (YAML scalars of any type
// read as their text). Absent or empty is "".
func OptionString(opts map[string]any, key string) (string, error) {
	v, ok := opts[key]
	if !ok || v == nil {
		return "", nil
	}
	switch v := v.(type) {
	case string:
		return v, nil
	case int, int64, uint64, float64, bool:
		return fmt.Sprint(v), nil
	}
	return "", &OptionError{Key: key, Msg: "want a string"}
}

// OptionInt reads an engine key holding an integer. Absent is 0.
func OptionInt(opts map[string]any, key string) (int, error) {
	v, ok := opts[key]
	if !ok || v == nil {
		return 0, nil
	}
	switch v := v.(type) {
	case int:
		return v, nil
	case int64:
		if v >= math.MinInt && v <= math.MaxInt {
			return int(v), nil
		}
	case uint64:
		if v <= math.MaxInt {
			return int(v), nil
		}
	}
	return 0, &OptionError{Key: key, Msg: fmt.Sprintf("want an integer, got %v", v)}
}
