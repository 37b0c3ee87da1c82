// Package pluginstest is the conformance suite every plugins.Database must
// pass, always against a real server (no mocks): a plugin's test supplies a
// Harness that knows how to reach that server as an ordinary client, and
// calls Run.
//
// The suite only states engine-neutral behaviour. Where engines genuinely
// differ it asks the plugin's Capabilities and checks that instead of
// skipping: a plugin without server-side expiry must say so.
package pluginstest

import (
	"context"
	"testing"
	"time"

	"github.com/credbroker/credbroker/plugins"
)

// Session is one client connection logged in as a generated user.
type Session interface {
	// Exec runs one statement and discards any rows.
	Exec(ctx context.Context, sql string) error
	// Ping checks the connection is alive.
	Ping(ctx context.Context) error
	// Close ends the session; the suite may call it more than once.
	Close()
}

// Harness adapts the suite to one engine and one test server. Every field
// is required unless marked optional.
type Harness struct {
	// New returns a fresh plugin connected to the test server, with
	// everything CreationStatements refer to already set up. The suite
	// closes each plugin it gets.
	New func(t *testing.T) plugins.Database

	// CreationStatements create a user that may run AllowedQuery and not
	// ForbiddenQuery, and may create an object it owns (CreateOwnedObject).
	// Typically a membership in a group role.
	CreationStatements []string
	// PerUserGrantStatements create a user and GRANT it a privilege on the
	// same object AllowedQuery reads, per user: the concurrent issuance test
	// uses them to catch catalog races between grants.
	PerUserGrantStatements []string

	// Login connects as username with password.
	Login func(ctx context.Context, username, password string) (Session, error)
	// AllowedQuery must succeed for a created user; ForbiddenQuery must fail.
	AllowedQuery   string
	ForbiddenQuery string

	// ServerExpiry reads the user's expiry as the server stores it. Used
	// only when the plugin reports Capabilities().ServerExpiry; may be nil
	// otherwise.
	ServerExpiry func(ctx context.Context, username string) (time.Time, error)
	// CreateOwnedObject makes the session's user create an object (a table)
	// it owns, the classic blocker of DROP USER/ROLE.
	CreateOwnedObject func(ctx context.Context, s Session) error
	// UserExists asks the server, as an admin, whether the user exists.
	UserExists func(ctx context.Context, username string) (bool, error)
	// SessionCount asks the server, as an admin, how many sessions the user
	// has open (pg_stat_activity, information_schema.processlist).
	SessionCount func(ctx context.Context, username string) (int, error)

	// Workers and UsersPerWorker size the concurrent issuance test
	// (optional, default 8 × 25).
	Workers        int
	UsersPerWorker int
}

func (h *Harness) check(t *testing.T) {
	t.Helper()
	missing := func(name string) { t.Fatalf("pluginstest: Harness.%s is required", name) }
	switch {
	case h.New == nil:
		missing("New")
	case len(h.CreationStatements) == 0:
		missing("CreationStatements")
	case len(h.PerUserGrantStatements) == 0:
		missing("PerUserGrantStatements")
	case h.Login == nil:
		missing("Login")
	case h.AllowedQuery == "":
		missing("AllowedQuery")
	case h.ForbiddenQuery == "":
		missing("ForbiddenQuery")
	case h.CreateOwnedObject == nil:
		missing("CreateOwnedObject")
	case h.UserExists == nil:
		missing("UserExists")
	case h.SessionCount == nil:
		missing("SessionCount")
	}
	if h.Workers == 0 {
		h.Workers = 8
	}
	if h.UsersPerWorker == 0 {
		h.UsersPerWorker = 25
	}
}
