package plugins_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/plugins"
)

func TestErrorKinds(t *testing.T) {
	cause := errors.New("connection refused")
	tests := []struct {
		name string
		err  error
		want plugins.Kind
		text string
	}{
		{"wrap unavailable", plugins.Wrap(context.Background(), "pg: op", cause, true), plugins.KindUnavailable, "pg: op: database unavailable: connection refused"},
		{"wrap other", plugins.Wrap(context.Background(), "pg: op", cause, false), 0, "pg: op: connection refused"},
		{"not created", plugins.NotCreated(plugins.Wrap(context.Background(), "pg: op", cause, true)), plugins.KindUnavailable | plugins.KindNotCreated, "pg: op: database unavailable: connection refused"},
		{"rejected", plugins.Rejected("creation statement 1 rejected: syntax", cause), plugins.KindInvalidStatement, "creation statement 1 rejected: syntax"},
		{"plain sentinel", fmt.Errorf("x: %w", plugins.ErrInvalidUsername), plugins.KindInvalidUsername, "x: invalid username"},
		{"wrapped twice", fmt.Errorf("lease: %w", plugins.NotCreated(cause)), plugins.KindNotCreated, "lease: connection refused"},
		{"admin login", plugins.Classify(plugins.Wrap(context.Background(), "pg: op", cause, true), plugins.KindAdminLogin), plugins.KindUnavailable | plugins.KindAdminLogin, "pg: op: database unavailable: connection refused"},
		{"admin privilege", plugins.Classify(plugins.Rejected("creation statement 1 rejected: permission denied", cause), plugins.KindAdminPrivilege), plugins.KindInvalidStatement | plugins.KindAdminPrivilege, "creation statement 1 rejected: permission denied"},
		{"classify zero", plugins.Classify(plugins.NotCreated(cause), 0), plugins.KindNotCreated, "connection refused"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := plugins.KindOf(tc.err); got != tc.want {
				t.Errorf("KindOf = %b, want %b", got, tc.want)
			}
			if tc.err.Error() != tc.text {
				t.Errorf("text = %q, want %q", tc.err, tc.text)
			}
			k := plugins.KindOf(tc.err)
			for _, c := range []struct {
				is       bool
				sentinel error
			}{
				{k.Unavailable(), plugins.ErrUnavailable},
				{k.InvalidStatement(), plugins.ErrInvalidStatement},
				{k.InvalidUsername(), plugins.ErrInvalidUsername},
				{k.NotCreated(), plugins.ErrNotCreated},
				{k.AdminLogin(), plugins.ErrAdminLogin},
				{k.AdminPrivilege(), plugins.ErrAdminPrivilege},
			} {
				if errors.Is(tc.err, c.sentinel) != c.is {
					t.Errorf("errors.Is(%v) = %v, kind says %v", c.sentinel, !c.is, c.is)
				}
			}
			if k.Retryable() != k.Unavailable() {
				t.Error("Retryable differs from Unavailable")
			}
			if e, ok := errors.AsType[*plugins.Error](tc.err); ok && e.Retryable() != k.Retryable() {
				t.Error("(*Error).Retryable differs from its Kind")
			}
			if tc.name != "plain sentinel" && !errors.Is(tc.err, cause) {
				t.Error("cause lost")
			}
		})
	}
}

// A done context wins over the engine's verdict: a cancelled call is never
// an outage.
func TestWrapDoneContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := plugins.Wrap(ctx, "pg: op", errors.New("broken pipe"), true)
	if !errors.Is(err, context.Canceled) || errors.Is(err, plugins.ErrUnavailable) {
		t.Errorf("Wrap after cancel = %v, want Canceled and not ErrUnavailable", err)
	}
}

func TestRedacted(t *testing.T) {
	inner := &driverError{stmt: "ALTER USER x IDENTIFIED BY '" + password + "'"}
	err := plugins.Redacted(inner, password)
	if strings.Contains(err.Error(), password) {
		t.Error("password left in the text")
	}
	if _, ok := errors.AsType[*driverError](err); !ok {
		t.Error("driver error not reachable")
	}
}

func TestRenderRevocation(t *testing.T) {
	got, err := plugins.RenderRevocation([]string{"REVOKE ALL ON t FROM {{name}}"}, `"cb_r_x"`)
	if err != nil || len(got) != 1 || got[0] != `REVOKE ALL ON t FROM "cb_r_x"` {
		t.Fatalf("RenderRevocation = %q, %v", got, err)
	}
	if got, err := plugins.RenderRevocation(nil, "x"); err != nil || len(got) != 0 {
		t.Errorf("RenderRevocation(nil) = %q, %v", got, err)
	}
	for _, stmts := range [][]string{
		{"ALTER ROLE {{name}} PASSWORD {{password}}"}, // no value here
		{"REVOKE x FROM {{nme}}"},                     // unknown placeholder
		{"  "},                                        // empty
	} {
		if _, err := plugins.RenderRevocation(stmts, "x"); !errors.Is(err, plugins.ErrInvalidStatement) {
			t.Errorf("RenderRevocation(%q) = %v, want ErrInvalidStatement", stmts, err)
		}
	}
}

// TestDryRunFindsTheAbility: plugins.DryRun reaches a DryRunner through the
// Sanitized and Observed wrappers, and reports a plugin without the ability.
func TestDryRunFindsTheAbility(t *testing.T) {
	ctx := context.Background()
	plain := plugins.Observed(plugins.Sanitized(noDryRun{}), func(plugins.Operation, time.Duration, error) {})
	if err := plugins.DryRun(ctx, plain, plugins.DryRunRequest{Role: "r"}); !errors.Is(err, plugins.ErrDryRunUnsupported) {
		t.Errorf("plain plugin: %v, want ErrDryRunUnsupported", err)
	}
	fail := errors.New("creation statement 1 rejected: SCRAM-SHA-256$4096:abc$def:ghi")
	d := plugins.Observed(plugins.Sanitized(dryRunner{err: plugins.Classify(fail, plugins.KindAdminPrivilege)}), func(plugins.Operation, time.Duration, error) {})
	err := plugins.DryRun(ctx, d, plugins.DryRunRequest{Role: "r"})
	if !plugins.KindOf(err).AdminPrivilege() {
		t.Errorf("kind lost: %v", err)
	}
	if strings.Contains(err.Error(), "abc$def") {
		t.Errorf("verifier not scrubbed: %q", err)
	}
}

type noDryRun struct{ plugins.Database }

type dryRunner struct {
	plugins.Database
	err error
}

func (d dryRunner) DryRun(context.Context, plugins.DryRunRequest) error { return d.err }
