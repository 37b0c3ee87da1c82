package plugins

import (
	"context"
	"errors"
	"strings"
)

// Sanitized wraps a Database so that no error it returns can carry the
// password of the request that caused it. The returned error keeps only the
// scrubbed text and the kinds it matched (ErrUnavailable,
// ErrInvalidStatement, ErrInvalidUsername, ErrNotCreated, see Kind): the
// original error chain, which a driver may have filled with the statement
// text, is not reachable. Model: Vault's DatabaseErrorSanitizerMiddleware.
func Sanitized(db Database) Database { return sanitized{db: db} }

// sanitized forwards each method explicitly, never by embedding: a method
// added to Database does not compile until it is added here, so nothing
// passes through unscrubbed.
type sanitized struct{ db Database }

var _ Database = sanitized{}

func (s sanitized) GenerateUsername(role string) (string, error) {
	name, err := s.db.GenerateUsername(role)
	return name, scrub(err)
}

func (s sanitized) NewUser(ctx context.Context, req NewUserRequest) error {
	return scrub(s.db.NewUser(ctx, req), req.Password)
}

func (s sanitized) UpdateUser(ctx context.Context, req UpdateUserRequest) error {
	return scrub(s.db.UpdateUser(ctx, req))
}

func (s sanitized) DeleteUser(ctx context.Context, req DeleteUserRequest) error {
	return scrub(s.db.DeleteUser(ctx, req))
}

func (s sanitized) ListUsers(ctx context.Context) ([]string, error) {
	u, err := s.db.ListUsers(ctx)
	return u, scrub(err)
}

func (s sanitized) Ping(ctx context.Context) error { return scrub(s.db.Ping(ctx)) }

func (s sanitized) Capabilities() Capabilities { return s.db.Capabilities() }

func (s sanitized) Close() { s.db.Close() }

// Unwrap exposes the wrapped plugin (tests, capability checks).
func (s sanitized) Unwrap() Database { return s.db }

// scrubbedText is the scrubbed message, with the context error of the
// original (if any) so callers can tell a cancelled call from a failed one.
type scrubbedText struct {
	msg string
	ctx error
}

func (e *scrubbedText) Error() string { return e.msg }
func (e *scrubbedText) Unwrap() error { return e.ctx }

// scrub replaces every secret in err's text and cuts the chain down to the
// kinds it matched and its context error.
func scrub(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	msg := redactSCRAM(Redact(err.Error(), secrets...))
	text := &scrubbedText{msg: msg}
	for _, c := range []error{context.Canceled, context.DeadlineExceeded} {
		if errors.Is(err, c) {
			text.ctx = c
		}
	}
	return &Error{Kind: KindOf(err), Err: text}
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
