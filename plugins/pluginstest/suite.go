package pluginstest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/plugins"
)

const (
	testTimeout    = 2 * time.Minute
	cleanupTimeout = time.Minute
	// expiryTolerance allows for engines that store expiry in whole seconds.
	expiryTolerance = time.Second
	// failingStatement is invalid in every SQL dialect.
	failingStatement = "CREATE CREDBROKER CONFORMANCE FAILURE"
)

// Run runs the conformance suite against the plugin the harness builds.
func Run(t *testing.T, h Harness) {
	h.check(t)
	s := &suite{h: h, db: h.New(t)}
	t.Cleanup(s.db.Close)
	if s.db.Capabilities().ServerExpiry && h.ServerExpiry == nil {
		t.Fatal("pluginstest: the plugin reports ServerExpiry, so Harness.ServerExpiry is required")
	}

	t.Run("Ping", s.testPing)
	t.Run("GenerateUsername", s.testGenerateUsername)
	t.Run("Lifecycle", s.testLifecycle)
	t.Run("ExpiredUserCannotLogin", s.testExpiredUserCannotLogin)
	t.Run("DeleteEndsOpenSession", s.testDeleteEndsOpenSession)
	t.Run("DeleteAbsentUser", s.testDeleteAbsentUser)
	t.Run("DeleteUserOwningObject", s.testDeleteUserOwningObject)
	t.Run("DeleteTwice", s.testDeleteTwice)
	t.Run("ListUsers", s.testListUsers)
	t.Run("InvalidUsernameRefused", s.testInvalidUsernameRefused)
	t.Run("FailingStatementLeavesNoUser", s.testFailingStatementLeavesNoUser)
	t.Run("IntentGatesCreation", s.testIntentGatesCreation)
	t.Run("ConcurrentIssuance", s.testConcurrentIssuance)
	t.Run("DryRun", s.testDryRun)
}

type suite struct {
	h  Harness
	db plugins.Database
}

type user struct {
	name     string
	password string
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// newCredentials generates a name and password and arranges for the user to
// be deleted when the test ends, whether or not it gets created.
func (s *suite) newCredentials(t *testing.T, role string) user {
	t.Helper()
	name, err := s.db.GenerateUsername(role)
	if err != nil {
		t.Fatalf("GenerateUsername(%q): %v", role, err)
	}
	pw, err := plugins.GeneratePassword()
	if err != nil {
		t.Fatalf("GeneratePassword: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), cleanupTimeout)
		defer cancel()
		if err := s.db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name}); err != nil {
			t.Errorf("cleanup: DeleteUser(%s): %s", name, scrub(err, pw))
		}
	})
	return user{name: name, password: pw}
}

// createUser makes a user with the harness's creation statements.
func (s *suite) createUser(ctx context.Context, t *testing.T, role string, expiry time.Time) user {
	t.Helper()
	u := s.newCredentials(t, role)
	err := s.db.NewUser(ctx, plugins.NewUserRequest{
		Username: u.name, Password: u.password, Expiration: expiry, Statements: s.h.CreationStatements,
	})
	if err != nil {
		t.Fatalf("NewUser(%s): %s", u.name, scrub(err, u.password))
	}
	return u
}

func (s *suite) login(ctx context.Context, t *testing.T, u user) Session {
	t.Helper()
	sess, err := s.h.Login(ctx, u.name, u.password)
	if err != nil {
		t.Fatalf("login as %s with its password: %s", u.name, scrub(err, u.password))
	}
	t.Cleanup(sess.Close)
	return sess
}

func (s *suite) mustNotLogin(ctx context.Context, t *testing.T, name, password, why string) {
	t.Helper()
	sess, err := s.h.Login(ctx, name, password)
	if err == nil {
		sess.Close()
		t.Errorf("login as %s succeeded, want refused (%s)", name, why)
	}
}

func (s *suite) exists(ctx context.Context, t *testing.T, name string) bool {
	t.Helper()
	ok, err := s.h.UserExists(ctx, name)
	if err != nil {
		t.Fatalf("UserExists(%s): %v", name, err)
	}
	return ok
}

func (s *suite) listUsers(ctx context.Context, t *testing.T) []string {
	t.Helper()
	names, err := s.db.ListUsers(ctx)
	if err != nil {
		t.Fatalf("ListUsers: %v", err)
	}
	return names
}

func (s *suite) deleteUser(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	if err := s.db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name}); err != nil {
		t.Fatalf("DeleteUser(%s): %v", name, err)
	}
}

// expiry returns a time d from now in whole seconds, which every engine can
// store exactly.
func expiry(d time.Duration) time.Time { return time.Now().Add(d).Truncate(time.Second) }

func (s *suite) checkServerExpiry(ctx context.Context, t *testing.T, name string, want time.Time) {
	t.Helper()
	got, err := s.h.ServerExpiry(ctx, name)
	if err != nil {
		t.Fatalf("ServerExpiry(%s): %v", name, err)
	}
	if d := got.Sub(want).Abs(); d > expiryTolerance {
		t.Errorf("server expiry of %s = %s, want %s", name, got.UTC(), want.UTC())
	}
}

// scrub keeps a password out of test output even if a plugin or driver
// were to leak it into an error.
func scrub(err error, secrets ...string) string {
	msg := err.Error()
	for _, s := range secrets {
		if s != "" {
			msg = strings.ReplaceAll(msg, s, "[password]")
		}
	}
	return msg
}

func (s *suite) testGenerateUsername(t *testing.T) {
	seen := make(map[string]bool)
	for range 1000 {
		name, err := s.db.GenerateUsername("orders-readonly")
		if err != nil {
			t.Fatalf("GenerateUsername: %v", err)
		}
		if name == "" || seen[name] {
			t.Fatalf("GenerateUsername returned %q twice or empty", name)
		}
		seen[name] = true
	}
}

func (s *suite) testLifecycle(t *testing.T) {
	ctx := testContext(t)
	caps := s.db.Capabilities()
	// Made here so the cleanup belongs to the whole lifecycle, not a step.
	u := s.newCredentials(t, "lifecycle")
	var sess Session

	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"Create", func(t *testing.T) {
			err := s.db.NewUser(ctx, plugins.NewUserRequest{
				Username: u.name, Password: u.password, Expiration: expiry(time.Hour), Statements: s.h.CreationStatements,
			})
			if err != nil {
				t.Fatalf("NewUser(%s): %s", u.name, scrub(err, u.password))
			}
			if !s.exists(ctx, t, u.name) {
				t.Fatalf("user %s absent after NewUser", u.name)
			}
		}},
		{"LoginWithPassword", func(t *testing.T) {
			var err error
			sess, err = s.h.Login(ctx, u.name, u.password)
			if err != nil {
				t.Fatalf("login as %s: %s", u.name, scrub(err, u.password))
			}
			if err := sess.Ping(ctx); err != nil {
				t.Fatalf("ping as %s: %v", u.name, err)
			}
		}},
		{"AllowedQuery", func(t *testing.T) {
			if err := sess.Exec(ctx, s.h.AllowedQuery); err != nil {
				t.Fatalf("allowed query as %s: %v", u.name, err)
			}
		}},
		{"ForbiddenQuery", func(t *testing.T) {
			if err := sess.Exec(ctx, s.h.ForbiddenQuery); err == nil {
				t.Fatalf("forbidden query as %s succeeded", u.name)
			}
			// The failed statement must not have broken the session.
			if err := sess.Exec(ctx, s.h.AllowedQuery); err != nil {
				t.Fatalf("allowed query after a forbidden one: %v", err)
			}
		}},
		{"WrongPasswordRefused", func(t *testing.T) {
			other, err := plugins.GeneratePassword()
			if err != nil {
				t.Fatal(err)
			}
			s.mustNotLogin(ctx, t, u.name, other, "wrong password")
			s.mustNotLogin(ctx, t, u.name, "", "empty password")
		}},
		{"UpdateExpiry", func(t *testing.T) {
			first := expiry(time.Hour)
			if caps.ServerExpiry {
				// Created with expiry(time.Hour) a moment ago.
				s.checkServerExpiry(ctx, t, u.name, first)
			}
			later := expiry(3 * time.Hour)
			if err := s.db.UpdateUser(ctx, plugins.UpdateUserRequest{Username: u.name, Expiration: later}); err != nil {
				t.Fatalf("UpdateUser(%s): %v", u.name, err)
			}
			if !caps.ServerExpiry {
				t.Log("plugin has no server-side expiry: UpdateUser must succeed, nothing to read back")
				return
			}
			s.checkServerExpiry(ctx, t, u.name, later)
			// Logging in still works after the move.
			s.login(ctx, t, u)
		}},
		{"Delete", func(t *testing.T) {
			sess.Close()
			s.deleteUser(ctx, t, u.name)
		}},
		{"LoginFailsAndUserAbsent", func(t *testing.T) {
			s.mustNotLogin(ctx, t, u.name, u.password, "user deleted")
			if s.exists(ctx, t, u.name) {
				t.Errorf("user %s still exists after DeleteUser", u.name)
			}
			if slices.Contains(s.listUsers(ctx, t), u.name) {
				t.Errorf("ListUsers still returns %s after DeleteUser", u.name)
			}
		}},
	}
	for _, step := range steps {
		if !t.Run(step.name, step.run) {
			if sess != nil {
				sess.Close()
			}
			return // later steps depend on this one
		}
	}
}

func (s *suite) testExpiredUserCannotLogin(t *testing.T) {
	ctx := testContext(t)
	u := s.createUser(ctx, t, "expired", expiry(time.Hour))
	s.login(ctx, t, u).Close()
	past := expiry(-time.Minute)
	if err := s.db.UpdateUser(ctx, plugins.UpdateUserRequest{Username: u.name, Expiration: past}); err != nil {
		t.Fatalf("UpdateUser(%s): %v", u.name, err)
	}
	if !s.db.Capabilities().ServerExpiry {
		// Not applicable: the server cannot refuse an expired user, so the
		// broker's DeleteUser is what ends it. UpdateUser must then change
		// nothing at all (no lock, no drop behind the broker's back), and
		// DeleteUser must still work.
		t.Log("plugin has no server-side expiry: an expired user is removed by the broker, not refused by the server")
		s.login(ctx, t, u).Close()
		s.deleteUser(ctx, t, u.name)
		s.mustNotLogin(ctx, t, u.name, u.password, "deleted after its expiry")
		return
	}
	s.checkServerExpiry(ctx, t, u.name, past)
	s.mustNotLogin(ctx, t, u.name, u.password, "expiry in the past")
}

func (s *suite) testDeleteEndsOpenSession(t *testing.T) {
	ctx := testContext(t)
	u := s.createUser(ctx, t, "session", expiry(time.Hour))
	sess := s.login(ctx, t, u)
	if err := sess.Exec(ctx, s.h.AllowedQuery); err != nil {
		t.Fatalf("allowed query as %s: %v", u.name, err)
	}
	s.deleteUser(ctx, t, u.name)
	// Checked right away: DeleteUser must not return before the session is
	// gone.
	n, err := s.h.SessionCount(ctx, u.name)
	if err != nil {
		t.Fatalf("SessionCount(%s): %v", u.name, err)
	}
	if n != 0 {
		t.Errorf("%d session(s) of %s still open after DeleteUser returned", n, u.name)
	}
	if err := sess.Exec(ctx, s.h.AllowedQuery); err == nil {
		t.Errorf("open session of deleted user %s still runs queries", u.name)
	}
	if s.exists(ctx, t, u.name) {
		t.Errorf("user %s still exists after DeleteUser", u.name)
	}
}

func (s *suite) testDeleteAbsentUser(t *testing.T) {
	ctx := testContext(t)
	u := s.newCredentials(t, "absent")
	s.deleteUser(ctx, t, u.name)
}

func (s *suite) testDeleteUserOwningObject(t *testing.T) {
	ctx := testContext(t)
	u := s.createUser(ctx, t, "owner", expiry(time.Hour))
	sess := s.login(ctx, t, u)
	if err := s.h.CreateOwnedObject(ctx, sess); err != nil {
		t.Fatalf("CreateOwnedObject as %s: %v", u.name, err)
	}
	// The session stays open: DeleteUser must cope with both at once.
	s.deleteUser(ctx, t, u.name)
	if s.exists(ctx, t, u.name) {
		t.Errorf("user %s owning an object still exists after DeleteUser", u.name)
	}
}

func (s *suite) testDeleteTwice(t *testing.T) {
	ctx := testContext(t)
	u := s.createUser(ctx, t, "twice", expiry(time.Hour))
	s.deleteUser(ctx, t, u.name)
	s.deleteUser(ctx, t, u.name)
	if s.exists(ctx, t, u.name) {
		t.Errorf("user %s exists after two DeleteUser calls", u.name)
	}
}

func (s *suite) testListUsers(t *testing.T) {
	ctx := testContext(t)
	a := s.createUser(ctx, t, "list", expiry(time.Hour))
	b := s.createUser(ctx, t, "list", expiry(time.Hour))
	never := s.newCredentials(t, "list")

	names := s.listUsers(ctx, t)
	for _, u := range []user{a, b} {
		if !slices.Contains(names, u.name) {
			t.Errorf("ListUsers lacks created user %s", u.name)
		}
	}
	if slices.Contains(names, never.name) {
		t.Errorf("ListUsers returns %s, which was never created", never.name)
	}

	s.deleteUser(ctx, t, a.name)
	names = s.listUsers(ctx, t)
	if slices.Contains(names, a.name) {
		t.Errorf("ListUsers returns deleted user %s", a.name)
	}
	if !slices.Contains(names, b.name) {
		t.Errorf("ListUsers lacks %s after another user was deleted", b.name)
	}
}

// testInvalidUsernameRefused uses a closed plugin: a plugin that checked the
// name only after contacting the server would report the closed pool
// instead of plugins.ErrInvalidUsername.
// testPing: a live server answers; a closed plugin's Ping fails as
// unavailable (retryable), which the broker reports at startup.
func (s *suite) testPing(t *testing.T) {
	ctx := testContext(t)
	if err := s.db.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	closed := s.h.New(t)
	closed.Close()
	err := closed.Ping(ctx)
	if !errors.Is(err, plugins.ErrUnavailable) || !plugins.KindOf(err).Retryable() {
		t.Errorf("Ping of a closed plugin = %v, want ErrUnavailable, retryable", err)
	}
}

func (s *suite) testInvalidUsernameRefused(t *testing.T) {
	ctx := testContext(t)
	valid, err := s.db.GenerateUsername("invalid")
	if err != nil {
		t.Fatalf("GenerateUsername: %v", err)
	}
	closed := s.h.New(t)
	closed.Close()

	bad := []string{
		"",
		"postgres",
		"root",
		"admin",
		strings.ToUpper(valid),
		valid + " ",
		" " + valid,
		valid + "\x00",
		`"` + valid + `"`,
		valid + `"; DROP TABLE users; --`,
		valid + "'; DROP USER root; --",
		valid[:len(valid)/2],
		valid + strings.Repeat("a", 64),
		strings.Repeat("a", 200),
		"ünïcode_" + valid,
	}
	exp := expiry(time.Hour)
	for _, name := range bad {
		calls := map[string]func() error{
			"NewUser": func() error {
				return closed.NewUser(ctx, plugins.NewUserRequest{
					Username: name, Password: "Unused0password0for0an0invalid0name0", Expiration: exp,
					Statements: s.h.CreationStatements,
				})
			},
			"UpdateUser": func() error {
				return closed.UpdateUser(ctx, plugins.UpdateUserRequest{Username: name, Expiration: exp})
			},
			"DeleteUser": func() error {
				return closed.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name})
			},
		}
		for call, fn := range calls {
			err := fn()
			if !errors.Is(err, plugins.ErrInvalidUsername) {
				t.Errorf("%s(%q) = %v, want plugins.ErrInvalidUsername before any server call", call, name, err)
			}
			if k := plugins.KindOf(err); k.Retryable() {
				t.Errorf("%s(%q) = %v, classified retryable", call, name, err)
			}
		}
	}

	// The same calls with a valid name do reach for the (closed) server, so
	// the check above is not vacuous.
	err = closed.DeleteUser(ctx, plugins.DeleteUserRequest{Username: valid})
	if err == nil || errors.Is(err, plugins.ErrInvalidUsername) {
		t.Errorf("DeleteUser(%q) on a closed plugin = %v, want a connection error", valid, err)
	}
}

// testIntentGatesCreation: the user must not exist before
// NewUserRequest.Intent returns nil, and a failing Intent leaves nothing.
func (s *suite) testIntentGatesCreation(t *testing.T) {
	ctx := testContext(t)
	t.Run("waits", func(t *testing.T) {
		u := s.newCredentials(t, "intent")
		calls := 0
		err := s.db.NewUser(ctx, plugins.NewUserRequest{
			Username: u.name, Password: u.password, Expiration: expiry(time.Hour), Statements: s.h.CreationStatements,
			Intent: func(context.Context) error {
				calls++
				if s.exists(ctx, t, u.name) {
					t.Errorf("user %s exists (visible to others) before Intent returned", u.name)
				}
				return nil
			},
		})
		if err != nil {
			t.Fatalf("NewUser: %s", scrub(err, u.password))
		}
		if calls == 0 {
			t.Fatal("NewUser never called Intent")
		}
		if !s.exists(ctx, t, u.name) {
			t.Fatalf("user %s absent after NewUser", u.name)
		}
		s.login(ctx, t, u)
	})
	t.Run("refused", func(t *testing.T) {
		u := s.newCredentials(t, "intent")
		refusal := errors.New("lease store unavailable")
		err := s.db.NewUser(ctx, plugins.NewUserRequest{
			Username: u.name, Password: u.password, Expiration: expiry(time.Hour), Statements: s.h.CreationStatements,
			Intent: func(context.Context) error { return refusal },
		})
		if !errors.Is(err, plugins.ErrNotCreated) {
			t.Errorf("NewUser with a failing Intent = %v, want plugins.ErrNotCreated", scrub(err, u.password))
		}
		if s.exists(ctx, t, u.name) {
			t.Errorf("user %s exists although Intent failed", u.name)
		}
		s.mustNotLogin(ctx, t, u.name, u.password, "Intent failed")
	})
	// Several creations in flight may take another path than one alone
	// (plugins/postgres/pipeline.go): the gate holds there too, with and
	// without an object grant, and a refusal still leaves nothing.
	t.Run("concurrent", func(t *testing.T) {
		templates := [][]string{s.h.CreationStatements, s.h.PerUserGrantStatements}
		const workers, per = 4, 3
		type result struct {
			u       user
			refused bool
			err     error
			early   string
		}
		results := make([][]result, workers)
		for w := range results {
			for i := range per {
				results[w] = append(results[w], result{u: s.newCredentials(t, "intentc"), refused: (w+i)%3 == 2})
			}
		}
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for i := range results[w] {
					r := &results[w][i]
					r.err = s.db.NewUser(ctx, plugins.NewUserRequest{
						Username: r.u.name, Password: r.u.password, Expiration: expiry(time.Hour),
						Statements: templates[(w+i)%2],
						Intent: func(ctx context.Context) error {
							time.Sleep(5 * time.Millisecond) // a store commit: the others pile up meanwhile
							if ok, err := s.h.UserExists(ctx, r.u.name); err != nil || ok {
								r.early = fmt.Sprintf("user exists before Intent returned (exists %v, err %v)", ok, err)
							}
							if r.refused {
								return errors.New("lease store unavailable")
							}
							return nil
						},
					})
				}
			})
		}
		wg.Wait()
		for _, rs := range results {
			for _, r := range rs {
				if r.early != "" {
					t.Errorf("%s: %s", r.u.name, r.early)
				}
				switch {
				case r.refused && !errors.Is(r.err, plugins.ErrNotCreated):
					t.Errorf("%s: NewUser with a failing Intent = %v, want plugins.ErrNotCreated", r.u.name, scrub(r.err, r.u.password))
				case r.refused && s.exists(ctx, t, r.u.name):
					t.Errorf("%s exists although Intent failed", r.u.name)
				case !r.refused && r.err != nil:
					t.Errorf("%s: NewUser: %s", r.u.name, scrub(r.err, r.u.password))
				case !r.refused && !s.exists(ctx, t, r.u.name):
					t.Errorf("%s absent after NewUser", r.u.name)
				case !r.refused:
					s.login(ctx, t, r.u).Close()
				}
			}
		}
	})
}

func (s *suite) testFailingStatementLeavesNoUser(t *testing.T) {
	ctx := testContext(t)
	u := s.newCredentials(t, "failing")
	// The first statement normally creates the user; the failure comes after.
	stmts := slices.Concat(s.h.CreationStatements[:1], []string{failingStatement}, s.h.CreationStatements[1:])
	err := s.db.NewUser(ctx, plugins.NewUserRequest{
		Username: u.name, Password: u.password, Expiration: expiry(time.Hour), Statements: stmts,
	})
	if err == nil {
		t.Fatalf("NewUser with a failing statement succeeded")
	}
	if !errors.Is(err, plugins.ErrInvalidStatement) {
		t.Errorf("NewUser with a failing statement = %s, want plugins.ErrInvalidStatement", scrub(err, u.password))
	}
	// The server rejected the statement, so its outcome is known: the
	// plugin has removed what came before it (a rollback, or a drop where
	// DDL is not transactional) and must say so.
	if !errors.Is(err, plugins.ErrNotCreated) {
		t.Errorf("NewUser with a failing statement = %s, want plugins.ErrNotCreated", scrub(err, u.password))
	}
	if strings.Contains(err.Error(), u.password) {
		t.Errorf("NewUser error contains the password")
	}
	if s.exists(ctx, t, u.name) {
		t.Errorf("user %s exists after its creation failed", u.name)
	}
	if slices.Contains(s.listUsers(ctx, t), u.name) {
		t.Errorf("ListUsers returns %s, whose creation failed", u.name)
	}
	s.mustNotLogin(ctx, t, u.name, u.password, "creation failed")
}

// testDryRun: a plugin that is a plugins.DryRunner passes the harness's
// statements and reports a failing one as a rejected statement, leaving no
// user either way; one that is not says so with ErrDryRunUnsupported.
func (s *suite) testDryRun(t *testing.T) {
	ctx := testContext(t)
	if _, ok := s.db.(plugins.DryRunner); !ok {
		if err := plugins.DryRun(ctx, s.db, plugins.DryRunRequest{Role: "dry", Creation: s.h.CreationStatements}); !errors.Is(err, plugins.ErrDryRunUnsupported) {
			t.Fatalf("DryRun on a plugin that is not a DryRunner = %v, want ErrDryRunUnsupported", err)
		}
		return
	}
	before := s.listUsers(ctx, t)
	if err := plugins.DryRun(ctx, s.db, plugins.DryRunRequest{Role: "dry", Creation: s.h.CreationStatements}); err != nil {
		t.Errorf("DryRun of the harness's statements: %v", err)
	}
	stmts := slices.Concat(s.h.CreationStatements[:1], []string{failingStatement}, s.h.CreationStatements[1:])
	err := plugins.DryRun(ctx, s.db, plugins.DryRunRequest{Role: "dry", Creation: stmts})
	if !errors.Is(err, plugins.ErrInvalidStatement) {
		t.Errorf("DryRun with a failing statement = %v, want plugins.ErrInvalidStatement", err)
	}
	if err != nil && !strings.Contains(err.Error(), "creation statement 2") {
		t.Errorf("DryRun error %q does not name the failing statement", err)
	}
	if after := s.listUsers(ctx, t); !slices.Equal(before, after) {
		t.Errorf("users before the dry runs %v, after %v", before, after)
	}
}
