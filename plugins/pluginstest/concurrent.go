package pluginstest

import (
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/plugins"
)

// testConcurrentIssuance creates and deletes many users at once, each with
// its own object GRANT: engines whose catalogs race on concurrent grants
// (PostgreSQL: "tuple concurrently updated") must serialize or retry.
func (s *suite) testConcurrentIssuance(t *testing.T) {
	ctx := testContext(t)
	workers, per := s.h.Workers, s.h.UsersPerWorker
	users := make([][]user, workers)
	for w := range users {
		users[w] = make([]user, per)
		for i := range users[w] {
			users[w][i] = s.newCredentials(t, "concurrent")
		}
	}

	var mu sync.Mutex
	var failures []string
	fail := func(msg string) {
		mu.Lock()
		defer mu.Unlock()
		failures = append(failures, msg)
	}
	run := func(op func(u user) error) {
		failures = nil
		var wg sync.WaitGroup
		for w := range workers {
			wg.Go(func() {
				for _, u := range users[w] {
					if err := op(u); err != nil {
						fail(u.name + ": " + scrub(err, u.password))
					}
				}
			})
		}
		wg.Wait()
	}
	report := func(what string) {
		t.Helper()
		if len(failures) > 0 {
			t.Fatalf("%d of %d concurrent %s failed, first: %s", len(failures), workers*per, what, failures[0])
		}
	}

	start := time.Now()
	run(func(u user) error {
		return s.db.NewUser(ctx, plugins.NewUserRequest{
			Username: u.name, Password: u.password, Expiration: expiry(time.Hour), Statements: s.h.PerUserGrantStatements,
		})
	})
	report("NewUser calls")
	t.Logf("created %d users with %d workers in %s", workers*per, workers, time.Since(start).Round(time.Millisecond))

	// One user per worker proves the grant took effect.
	for w := range workers {
		sess := s.login(ctx, t, users[w][0])
		if err := sess.Exec(ctx, s.h.AllowedQuery); err != nil {
			t.Errorf("allowed query as %s: %v", users[w][0].name, err)
		}
		sess.Close()
	}

	names := s.listUsers(ctx, t)
	for _, us := range users {
		for _, u := range us {
			if !slices.Contains(names, u.name) {
				t.Errorf("ListUsers lacks concurrently created user %s", u.name)
			}
		}
	}

	start = time.Now()
	run(func(u user) error {
		return s.db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: u.name})
	})
	report("DeleteUser calls")
	t.Logf("deleted %d users with %d workers in %s", workers*per, workers, time.Since(start).Round(time.Millisecond))
}
