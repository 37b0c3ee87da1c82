package plugins_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/plugins"
)

// fakeDB returns canned errors; a fake, not a mock: it records nothing.
type fakeDB struct{ err error }

func (f fakeDB) GenerateUsername(string) (string, error)                     { return "u", nil }
func (f fakeDB) NewUser(context.Context, plugins.NewUserRequest) error       { return f.err }
func (f fakeDB) UpdateUser(context.Context, plugins.UpdateUserRequest) error { return f.err }
func (f fakeDB) DeleteUser(context.Context, plugins.DeleteUserRequest) error { return f.err }
func (f fakeDB) ListUsers(context.Context) ([]string, error)                 { return []string{"u"}, f.err }
func (f fakeDB) Ping(context.Context) error                                  { return f.err }
func (f fakeDB) Capabilities() plugins.Capabilities                          { return plugins.Capabilities{ServerExpiry: true} }
func (f fakeDB) Close()                                                      {}

// driverError stands for a driver error type a caller must not reach.
type driverError struct{ stmt string }

func (e *driverError) Error() string { return "syntax error in " + e.stmt }

const (
	password = "Pl41nT3xtPassw0rdOfTheRequestXXXXXXXXXXX"
	verifier = "SCRAM-SHA-256$4096:c2FsdA==$c3RvcmVk:c2VydmVy"
)

func TestSanitizedNewUser(t *testing.T) {
	inner := &driverError{stmt: "CREATE ROLE x PASSWORD '" + verifier + "' -- " + password}
	tests := []struct {
		name string
		err  error
		kind error
	}{
		{"invalid statement", fmt.Errorf("pg: %w: %w", plugins.ErrInvalidStatement, inner), plugins.ErrInvalidStatement},
		{"unavailable", fmt.Errorf("pg: %w: %w", plugins.ErrUnavailable, inner), plugins.ErrUnavailable},
		{"invalid username", fmt.Errorf("pg: %w: %s", plugins.ErrInvalidUsername, password), plugins.ErrInvalidUsername},
		{"cancelled", fmt.Errorf("pg: %w: %w", context.Canceled, inner), context.Canceled},
		{"deadline", fmt.Errorf("pg: %w: %w", context.DeadlineExceeded, inner), context.DeadlineExceeded},
		{"no sentinel", fmt.Errorf("pg: %w", inner), nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			db := plugins.Sanitized(fakeDB{err: tc.err})
			err := db.NewUser(t.Context(), plugins.NewUserRequest{Username: "u", Password: password})
			if err == nil {
				t.Fatal("error lost")
			}
			msg := err.Error()
			if strings.Contains(msg, password) {
				t.Errorf("error still contains the password: %s", strings.ReplaceAll(msg, password, "<PASSWORD>"))
			}
			if strings.Contains(msg, "c3RvcmVk") {
				t.Errorf("error still contains the verifier: %s", msg)
			}
			if tc.kind != nil && !errors.Is(err, tc.kind) {
				t.Errorf("errors.Is(%v, %v) = false after sanitizing", err, tc.kind)
			}
			for _, k := range []error{plugins.ErrInvalidStatement, plugins.ErrUnavailable, plugins.ErrInvalidUsername, context.Canceled} {
				if k != tc.kind && errors.Is(err, k) {
					t.Errorf("sanitized error matches %v, which the original did not", k)
				}
			}
			if _, ok := errors.AsType[*driverError](err); ok {
				t.Errorf("driver error reachable through the sanitized error")
			}
		})
	}
}

func TestSanitizedOtherMethods(t *testing.T) {
	inner := fmt.Errorf("pg: %w: near '%s'", plugins.ErrUnavailable, verifier)
	db := plugins.Sanitized(fakeDB{err: inner})
	ctx := t.Context()
	errs := map[string]error{
		"UpdateUser": db.UpdateUser(ctx, plugins.UpdateUserRequest{Username: "u"}),
		"DeleteUser": db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: "u"}),
		"Ping":       db.Ping(ctx),
	}
	users, err := db.ListUsers(ctx)
	errs["ListUsers"] = err
	if len(users) != 1 {
		t.Errorf("ListUsers result lost: %v", users)
	}
	for call, err := range errs {
		if !errors.Is(err, plugins.ErrUnavailable) {
			t.Errorf("%s: sentinel lost: %v", call, err)
		}
		if strings.Contains(err.Error(), "SCRAM-SHA-256$") {
			t.Errorf("%s: verifier not redacted: %v", call, err)
		}
	}
}

func TestSanitizedPassesThrough(t *testing.T) {
	db := plugins.Sanitized(fakeDB{})
	if err := db.NewUser(t.Context(), plugins.NewUserRequest{Password: password}); err != nil {
		t.Errorf("nil error became %v", err)
	}
	if name, _ := db.GenerateUsername("r"); name != "u" {
		t.Errorf("GenerateUsername not forwarded: %q", name)
	}
	if !db.Capabilities().ServerExpiry {
		t.Error("Capabilities not forwarded")
	}
	u, ok := db.(interface{ Unwrap() plugins.Database })
	if !ok {
		t.Fatal("sanitized plugin has no Unwrap")
	}
	if _, ok := u.Unwrap().(fakeDB); !ok {
		t.Errorf("Unwrap = %T, want the wrapped plugin", u.Unwrap())
	}
}
