package plugins

import (
	"context"
	"errors"
	"strings"
)

// Sanitized wraps a Database so that no error it returns can carry the
// password of the request that caused it. The returned error keeps only the
// scrubbed text and the package sentinel it matched (ErrUnavailable,
// ErrInvalidStatement, ErrInvalidUsername): the original error chain, which
// a driver may have filled with the statement text, is not reachable.
// Model: Vault's DatabaseErrorSanitizerMiddleware.
func Sanitized(db Database) Database { return sanitized{db} }

type sanitized struct{ Database }

var _ Database = sanitized{}

func (s sanitized) NewUser(ctx context.Context, req NewUserRequest) error {
	return scrub(s.Database.NewUser(ctx, req), req.Password)
}

func (s sanitized) UpdateUser(ctx context.Context, req UpdateUserRequest) error {
	return scrub(s.Database.UpdateUser(ctx, req))
}

func (s sanitized) DeleteUser(ctx context.Context, req DeleteUserRequest) error {
	return scrub(s.Database.DeleteUser(ctx, req))
}

func (s sanitized) ListUsers(ctx context.Context) ([]string, error) {
	u, err := s.Database.ListUsers(ctx)
	return u, scrub(err)
}

// Unwrap exposes the wrapped plugin (tests, capability checks).
func (s sanitized) Unwrap() Database { return s.Database }

type scrubbedError struct {
	msg   string
	kinds []error
}

func (e *scrubbedError) Error() string   { return e.msg }
func (e *scrubbedError) Unwrap() []error { return e.kinds }

// scrub replaces every secret in err's text and cuts the chain down to the
// sentinels it matched. Context errors are kept so callers can tell a
// cancelled call from a failed one.
func scrub(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	msg = redactSCRAM(msg)
	var kinds []error
	for _, k := range []error{ErrUnavailable, ErrInvalidStatement, ErrInvalidUsername, ErrNotCreated, context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, k) {
			kinds = append(kinds, k)
		}
	}
	return &scrubbedError{msg: msg, kinds: kinds}
}

// redactSCRAM removes anything that looks like a SCRAM verifier, in case a
// driver echoes a statement back.
func redactSCRAM(msg string) string {
	if i := strings.Index(msg, "SCRAM-SHA-256$"); i >= 0 {
		j := i + len("SCRAM-SHA-256$")
		for j < len(msg) && msg[j] != '\'' && msg[j] != ' ' && msg[j] != '"' {
			j++
		}
		msg = msg[:i] + "[redacted]" + redactSCRAM(msg[j:])
	}
	return msg
}
