package mysql

import (
	"context"
	"database/sql"
	"errors"
	"slices"
	"strings"
	"testing"

	mysqldrv "github.com/go-sql-driver/mysql"

	"github.com/credbroker/credbroker/plugins"
)

func TestNativeHash(t *testing.T) {
	// Known values of MySQL's PASSWORD() (mysql_native_password).
	cases := map[string]string{
		"password": "*2470C0C06DEE42FD1618BB99005ADCA2EC9D1E19",
		"root":     "*81F5E21E35407D884A6CD4A731AEBFB6AF209E1B",
	}
	for pw, want := range cases {
		if got := nativeHash(pw); got != want {
			t.Errorf("nativeHash(%q) = %s, want %s", pw, got, want)
		}
	}
}

func TestQuoteString(t *testing.T) {
	cases := []struct {
		in, want string
		ok       bool
	}{
		{"cb_x_abc", "'cb_x_abc'", true},
		{"%", "'%'", true},
		{"o'brien", "'o''brien'", true},
		{"'@'%", "'''@''%'", true},
		{`a\b`, "", false},
		{`\'`, "", false},
		{"a\x00", "", false},
	}
	for _, c := range cases {
		got, err := quoteString(c.in)
		if (err == nil) != c.ok || got != c.want {
			t.Errorf("quoteString(%q) = %q, %v; want %q, ok=%v", c.in, got, err, c.want, c.ok)
		}
	}
}

func TestRandomLength(t *testing.T) {
	cases := []struct {
		limit, prefix, random, role int
		ok                          bool
	}{
		{128, 2, 26, 98, true},
		{80, 2, 26, 50, true},
		{32, 2, 20, 8, true},  // MySQL, default prefix: the role keeps 8
		{32, 8, 16, 6, true},  // longest broker prefix: random at its floor
		{32, 13, 16, 1, true}, // one role character left
		{32, 14, 0, 0, false}, // no room for a role part
		{16, 2, 0, 0, false},  // MySQL 5.6
	}
	for _, c := range cases {
		random, role, err := usernameRules.Split(c.limit, c.prefix)
		if (err == nil) != c.ok || random != c.random || role != c.role {
			t.Errorf("Split(%d, %d) = %d, %d, %v; want %d, %d, ok=%v", c.limit, c.prefix, random, role, err, c.random, c.role, c.ok)
		}
		if c.ok && c.prefix+2+random+role != c.limit {
			t.Errorf("Split(%d, %d) does not use the whole limit", c.limit, c.prefix)
		}
	}
}

// TestGenerateUsernameTightLimit: MySQL's 32 characters with the longest
// prefix the broker allows, over 10,000 names: all fit, none repeats, and
// the random part keeps its 16 characters while the role part shrinks.
func TestGenerateUsernameTightLimit(t *testing.T) {
	users, err := plugins.NewUsernames(usernameRules, "abcdefgh")
	if err != nil {
		t.Fatal(err)
	}
	db := &DB{users: users}
	db.server.Store(&serverInfo{flavour: flavourMySQL, nameLimit: 32})
	seen := make(map[string]bool, 10000)
	for i := range 10000 {
		role := []string{strings.Repeat("orders-readonly-", 5), "x", "", "ünï"}[i%4]
		name, err := db.GenerateUsername(role)
		if err != nil {
			t.Fatalf("GenerateUsername(%q): %v", role, err)
		}
		random := name[strings.LastIndexByte(name, '_')+1:]
		switch {
		case len(name) > 32:
			t.Fatalf("%q has %d characters, limit 32", name, len(name))
		case len(random) != 16:
			t.Fatalf("random part of %q has %d characters, want 16", name, len(random))
		case seen[name]:
			t.Fatalf("%q generated twice", name)
		}
		seen[name] = true
	}
}

func TestCheckPasswordClauses(t *testing.T) {
	maria, mysql := flavourMariaDB, flavourMySQL
	cases := []struct {
		stmt            string
		any, mdb, my8ok bool
	}{
		{"CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}", true, true, false},
		{"create user {{name}} identified by password {{ password }}", true, true, false},
		{"CREATE USER {{name}} IDENTIFIED WITH mysql_native_password AS {{password}}", true, true, true},
		{"CREATE USER {{name}} IDENTIFIED WITH 'mysql_native_password' AS {{password}}", true, true, true},
		{"CREATE USER {{name}} IDENTIFIED VIA mysql_native_password USING {{password}}", true, true, true},
		{"SET PASSWORD FOR {{name}} = {{password}}", true, true, false},
		{"CREATE USER {{name}}", true, true, true},
		{"CREATE USER {{name}} IDENTIFIED BY {{password}}", false, false, false},
		{"CREATE USER {{name}} IDENTIFIED WITH caching_sha2_password AS {{password}}", false, false, false},
		{"CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}} COMMENT {{password}}", false, false, false},
		{"SET PASSWORD FOR {{name}} = PASSWORD({{password}})", false, false, false},
	}
	for _, c := range cases {
		for _, v := range []struct {
			f    *flavour
			want bool
		}{{nil, c.any}, {&maria, c.mdb}, {&mysql, c.my8ok}} {
			err := checkPasswordClauses([]string{c.stmt}, v.f)
			if (err == nil) != v.want {
				name := "any"
				if v.f != nil {
					name = v.f.String()
				}
				t.Errorf("checkPasswordClauses(%q, %s) = %v, want ok=%v", c.stmt, name, err, v.want)
			}
		}
	}
}

func TestTLSFromSSLMode(t *testing.T) {
	for mode, want := range map[string]string{
		"disable": "false", "allow": "preferred", "prefer": "preferred", "": "preferred",
		"require": "skip-verify", "verify-ca": "true", "verify-full": "true",
	} {
		if got, err := tlsFromSSLMode(mode); err != nil || got != want {
			t.Errorf("tlsFromSSLMode(%q) = %q, %v; want %q", mode, got, err, want)
		}
	}
	if _, err := tlsFromSSLMode("sometimes"); err == nil {
		t.Error("tlsFromSSLMode accepted an unknown mode")
	}
}

// scriptedExec answers ExecContext with the errors it holds, in order, then
// success; it only counts calls (the retry policy, not a database
// behaviour, is under test here).
type scriptedExec struct {
	errs  []error
	calls int
}

func (s *scriptedExec) ExecContext(context.Context, string, ...any) (sql.Result, error) {
	s.calls++
	if len(s.errs) > 0 {
		err := s.errs[0]
		s.errs = s.errs[1:]
		return nil, err
	}
	return nil, nil
}

func (s *scriptedExec) QueryContext(context.Context, string, ...any) (*sql.Rows, error) {
	return nil, errors.New("not scripted")
}

func TestExecRetryingDeadlocks(t *testing.T) {
	deadlock := &mysqldrv.MySQLError{Number: erLockDeadlock, Message: "Deadlock found"}
	lockWait := &mysqldrv.MySQLError{Number: erLockWaitTimeout, Message: "Lock wait timeout exceeded"}
	ctx := context.Background()

	q := &scriptedExec{errs: []error{deadlock, deadlock}}
	if err := execRetryingDeadlocks(ctx, q, "GRANT x TO y"); err != nil || q.calls != 3 {
		t.Errorf("two deadlocks then success: err %v after %d calls, want nil after 3", err, q.calls)
	}
	q = &scriptedExec{errs: slices.Repeat([]error{deadlock}, deadlockAttempts+1)}
	if err := execRetryingDeadlocks(ctx, q, "GRANT x TO y"); errNumber(err) != erLockDeadlock || q.calls != deadlockAttempts {
		t.Errorf("endless deadlocks: err %v after %d calls, want the deadlock after %d", err, q.calls, deadlockAttempts)
	}
	q = &scriptedExec{errs: []error{lockWait}}
	if err := execRetryingDeadlocks(ctx, q, "GRANT x TO y"); errNumber(err) != erLockWaitTimeout || q.calls != 1 {
		t.Errorf("lock wait timeout: err %v after %d calls, want it at once", err, q.calls)
	}
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	q = &scriptedExec{errs: []error{deadlock, deadlock}}
	if err := execRetryingDeadlocks(cancelled, q, "GRANT x TO y"); err == nil || q.calls != 1 {
		t.Errorf("cancelled: err %v after %d calls, want the deadlock at once", err, q.calls)
	}
}
