// Package plugins defines the contract between the broker and a database
// engine. Each engine lives in its own subpackage (plugins/postgres,
// plugins/mysql), exports one Factory (its type name, its own config keys,
// Open, the client DSN) and must pass the conformance suite in
// plugins/pluginstest. The broker finds engines through a Catalog built from
// those factories (plugins/builtin lists the built-in ones) and never
// imports an engine package.
//
// The method set follows Vault's dbplugin v5 (NewUser / UpdateUser /
// DeleteUser with request structs), narrowed to what a lease needs. A plugin
// owns its connection pool, its identifier quoting, its username rules and its
// revocation sequence; the broker never builds SQL itself.
package plugins

import (
	"context"
	"time"
)

// Database is one configured database server the broker creates users in.
type Database interface {
	// GenerateUsername returns a new, unique, marked username for role. It
	// does not touch the server: the broker records the name durably before
	// NewUser creates it, so a crash in between can be cleaned up.
	GenerateUsername(role string) (string, error)

	// NewUser creates the user with the request's statements and sets its
	// server-side expiry where the engine has one. On any error the plugin
	// has already tried to remove whatever it created.
	NewUser(ctx context.Context, req NewUserRequest) error

	// UpdateUser moves the user's server-side expiry (no-op where the engine
	// has none, see Capabilities).
	UpdateUser(ctx context.Context, req UpdateUserRequest) error

	// DeleteUser stops new logins, ends the user's open sessions, drops what
	// it owns and drops it. It is idempotent: an absent user is success. A nil
	// return means no session of the user remains.
	DeleteUser(ctx context.Context, req DeleteUserRequest) error

	// ListUsers returns every user on the server that carries this broker's
	// marker (used by reconciliation and tests).
	ListUsers(ctx context.Context) ([]string, error)

	// Ping checks that the server answers and the admin credentials work.
	// The broker calls it at startup; a failure is reported, not fatal.
	Ping(ctx context.Context) error

	// Capabilities tells callers what the engine supports, instead of
	// silently skipping behaviour: the broker warns at startup about a
	// database without server-side expiry, and the conformance suite checks
	// the expiry only where the engine claims it.
	Capabilities() Capabilities

	// Close releases the pool.
	Close()
}

// Capabilities describes engine features that genuinely differ.
type Capabilities struct {
	// ServerExpiry is true when the server itself refuses logins after the
	// expiry (PostgreSQL VALID UNTIL). MySQL has no such thing.
	ServerExpiry bool
}

// NewUserRequest asks for one user.
type NewUserRequest struct {
	Username   string    // from GenerateUsername
	Password   string    // plaintext; plugins send a verifier/hash where the server allows
	Expiration time.Time // the lease's expiry; applied server-side where the engine supports it
	// Statements are the role's creation statements with {{name}},
	// {{password}} and {{expiration}} placeholders (see Template).
	Statements []string
	// Intent, if set, waits until the broker's record of this user is
	// durable (and may be called more than once). The plugin must call it,
	// and get nil, before the user can exist: before COMMIT where DDL is
	// transactional (PostgreSQL), before the first statement where it is
	// not (MySQL). If it returns an error the plugin creates nothing and
	// returns an error wrapping ErrNotCreated. The broker writes the record
	// while the plugin works, so the two overlap instead of adding up.
	Intent func(ctx context.Context) error
}

// UpdateUserRequest moves a user's expiry.
type UpdateUserRequest struct {
	Username   string
	Expiration time.Time
}

// DeleteUserRequest removes a user. Statements are the role's optional
// revocation statements as snapshotted into the lease at issue time; they run
// inside the plugin's fixed revocation sequence, never instead of it.
type DeleteUserRequest struct {
	Username   string
	Statements []string
}
