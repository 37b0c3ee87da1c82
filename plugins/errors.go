package plugins

import (
	"context"
	"errors"
	"fmt"
	"strings"
)

// Sentinel errors. Plugins return them inside an *Error (or wrap them with
// %w) so the broker can map them to gRPC codes without knowing the engine.
var (
	// ErrUnavailable: the server could not be reached or the connection broke.
	ErrUnavailable = errors.New("database unavailable")
	// ErrInvalidStatement: the server rejected a template statement (syntax,
	// unknown object, permission). Nothing is left behind.
	ErrInvalidStatement = errors.New("database rejected statement")
	// ErrInvalidUsername: a username that does not match the plugin's
	// strict pattern (never sent to the server).
	ErrInvalidUsername = errors.New("invalid username")
	// ErrNotCreated marks a NewUser error after which the plugin knows the
	// user does not exist on the server (the transaction never committed,
	// or its cleanup succeeded). Without it the broker must assume the user
	// may exist and keep revoking it until the server confirms.
	ErrNotCreated = errors.New("user not created")
	// ErrAdminLogin: the server refused the broker's own admin login (wrong
	// password, unknown or locked user). Comes with ErrUnavailable: the call
	// may succeed once an operator fixes the credentials.
	ErrAdminLogin = errors.New("the broker's admin login was refused")
	// ErrAdminPrivilege: the server refused a statement (or the admin's
	// connection to the configured database) because the broker's admin
	// user lacks a privilege. An operator must grant it.
	ErrAdminPrivilege = errors.New("the broker's admin user lacks a privilege")
)

// Kind classifies a plugin error; one error may have several kinds
// (unavailable and not created, say). Each kind matches its sentinel with
// errors.Is.
type Kind uint8

// The kinds, one per sentinel.
const (
	KindUnavailable      Kind = 1 << iota // ErrUnavailable
	KindInvalidStatement                  // ErrInvalidStatement
	KindInvalidUsername                   // ErrInvalidUsername
	KindNotCreated                        // ErrNotCreated
	KindAdminLogin                        // ErrAdminLogin
	KindAdminPrivilege                    // ErrAdminPrivilege
)

var kindSentinels = [...]struct {
	kind Kind
	err  error
}{
	{KindUnavailable, ErrUnavailable},
	{KindInvalidStatement, ErrInvalidStatement},
	{KindInvalidUsername, ErrInvalidUsername},
	{KindNotCreated, ErrNotCreated},
	{KindAdminLogin, ErrAdminLogin},
	{KindAdminPrivilege, ErrAdminPrivilege},
}

// KindOf returns every kind err matches, whatever wraps it.
func KindOf(err error) Kind {
	var k Kind
	if err == nil {
		return k
	}
	for _, s := range kindSentinels {
		if errors.Is(err, s.err) {
			k |= s.kind
		}
	}
	return k
}

// Unavailable reports a server that could not be reached, or a connection
// that broke: the same call may succeed later.
func (k Kind) Unavailable() bool { return k&KindUnavailable != 0 }

// InvalidStatement reports a statement the server (or the plugin's own
// checks) rejected: retrying will not help until the template changes.
func (k Kind) InvalidStatement() bool { return k&KindInvalidStatement != 0 }

// InvalidUsername reports a name the plugin refused before sending it.
func (k Kind) InvalidUsername() bool { return k&KindInvalidUsername != 0 }

// NotCreated reports a NewUser failure after which the user is known not to
// exist, so nothing needs revoking.
func (k Kind) NotCreated() bool { return k&KindNotCreated != 0 }

// AdminLogin reports that the server refused the broker's admin login.
func (k Kind) AdminLogin() bool { return k&KindAdminLogin != 0 }

// AdminPrivilege reports that the broker's admin user lacks a privilege.
func (k Kind) AdminPrivilege() bool { return k&KindAdminPrivilege != 0 }

// Retryable reports whether the same call may succeed later without anyone
// changing the configuration (model: pgconn's SafeToRetry). Only an
// unavailable server qualifies; an unclassified error does not.
func (k Kind) Retryable() bool { return k.Unavailable() }

func (k Kind) sentinels() []error {
	var out []error
	for _, s := range kindSentinels {
		if k&s.kind != 0 {
			out = append(out, s.err)
		}
	}
	return out
}

// Error is a classified plugin error (model: pgconn.PgError's SafeToRetry).
// Its text is Err's, which the plugin has already scrubbed of secrets;
// errors.Is matches the sentinel of each of its kinds as well as anything in
// Err's chain, so callers that test sentinels keep working.
type Error struct {
	Kind Kind
	Err  error
}

func (e *Error) Error() string {
	if e.Err == nil {
		return errors.Join(e.Kind.sentinels()...).Error()
	}
	return e.Err.Error()
}

func (e *Error) Unwrap() []error { return append(e.Kind.sentinels(), e.Err) }

// Unavailable, InvalidStatement, InvalidUsername, NotCreated, Retryable,
// AdminLogin and AdminPrivilege report the error's kind (see Kind), including kinds of errors it wraps.
func (e *Error) Unavailable() bool      { return KindOf(e).Unavailable() }
func (e *Error) InvalidStatement() bool { return KindOf(e).InvalidStatement() }
func (e *Error) InvalidUsername() bool  { return KindOf(e).InvalidUsername() }
func (e *Error) NotCreated() bool       { return KindOf(e).NotCreated() }
func (e *Error) Retryable() bool        { return KindOf(e).Retryable() }
func (e *Error) AdminLogin() bool       { return KindOf(e).AdminLogin() }
func (e *Error) AdminPrivilege() bool   { return KindOf(e).AdminPrivilege() }

// Classify adds kind to err, keeping its text and chain. A nil err stays
// nil, and a zero kind leaves err as it is.
func Classify(err error, kind Kind) error {
	if err == nil || kind == 0 {
		return err
	}
	if e, ok := err.(*Error); ok {
		return &Error{Kind: e.Kind | kind, Err: e.Err}
	}
	return &Error{Kind: kind, Err: err}
}

// NotCreated marks err: the user it is about does not exist on the server.
func NotCreated(err error) error { return Classify(err, KindNotCreated) }

// Wrap names the failed operation (op starts with the engine, "postgres:
// update cb_x_y") and, when the engine judged the cause a connection
// problem (unavailable), classifies it KindUnavailable. A done context wins,
// so a cancelled call is never reported as an outage.
func Wrap(ctx context.Context, op string, err error, unavailable bool) error {
	if ctxErr := ctx.Err(); ctxErr != nil {
		if errors.Is(err, ctxErr) {
			return fmt.Errorf("%s: %w", op, err)
		}
		return fmt.Errorf("%s: %w: %w", op, ctxErr, err)
	}
	if unavailable {
		return &Error{Kind: KindUnavailable, Err: fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)}
	}
	return fmt.Errorf("%s: %w", op, err)
}

// Rejected is a statement the server rejected (KindInvalidStatement). msg
// is the whole text, already free of secrets; cause is kept for errors.As
// only (a driver error may quote the statement, so its text is not used).
func Rejected(msg string, cause error) error {
	return &Error{Kind: KindInvalidStatement, Err: &redactedError{msg: msg, err: cause}}
}

// Redact replaces every non-empty secret in msg.
func Redact(msg string, secrets ...string) string {
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[redacted]")
		}
	}
	return msg
}

// Redacted returns err with its text scrubbed of secrets; its chain is kept,
// so errors.Is/As still see the driver's error.
func Redacted(err error, secrets ...string) error {
	if err == nil {
		return nil
	}
	return &redactedError{msg: Redact(err.Error(), secrets...), err: err}
}

type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }
