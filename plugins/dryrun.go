package plugins

import (
	"context"
	"errors"
)

// DryRunner is an optional ability of a Database: it proves, against the
// real server, that the broker's admin can run a role's statements, and
// leaves nothing behind. `credbroker check-config --dry-run` uses it, so an
// operator learns of a missing privilege before the first workload asks.
//
// The plugin runs the creation statements for a probe user (a name from
// GenerateUsername for the role, a throwaway random password that is never
// returned or logged), then its own revocation sequence with the revocation
// statements. Where DDL is transactional (PostgreSQL) all of it runs in one
// transaction that is rolled back; elsewhere (MySQL) the probe user really
// exists for a moment and is always dropped, even when a statement fails or
// the context ends.
type DryRunner interface {
	DryRun(ctx context.Context, req DryRunRequest) error
}

// DryRunRequest is one role's statements, as in the config.
type DryRunRequest struct {
	Role       string // the role's name, for the probe's username
	Creation   []string
	Revocation []string
}

// ErrDryRunUnsupported: the engine cannot dry-run statements.
var ErrDryRunUnsupported = errors.New("this engine cannot dry-run statements")

// DryRun runs req on db if it (or the plugin it wraps, see Sanitized) is a
// DryRunner. The error is scrubbed like every plugin error.
func DryRun(ctx context.Context, db Database, req DryRunRequest) error {
	for db != nil {
		if d, ok := db.(DryRunner); ok {
			return scrub(d.DryRun(ctx, req))
		}
		u, ok := db.(interface{ Unwrap() Database })
		if !ok {
			break
		}
		db = u.Unwrap()
	}
	return ErrDryRunUnsupported
}
