package mysql_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/pluginstest"
)

// TestRevokeKillsOpenConnections: idle sessions and one busy in a long query
// are all gone when DeleteUser returns.
func TestRevokeKillsOpenConnections(t *testing.T) {
	f := setup(t)
	db := f.newDB(t, f.config(t))
	ctx := t.Context()
	name := generate(t, db, "sessions")
	pw := create(t, db, name, f.roleTemplate())

	var idle []pluginstest.Session
	for range 3 {
		s, err := f.login(ctx, name, pw)
		if err != nil {
			t.Fatalf("login: %v", err)
		}
		defer s.Close()
		idle = append(idle, s)
	}
	busy, err := f.login(ctx, name, pw)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer busy.Close()
	sleeping := make(chan error, 1)
	go func() { sleeping <- busy.Exec(ctx, "SELECT SLEEP(60)") }()
	waitFor(t, 10*time.Second, "4 sessions in the process list", func() bool {
		n, err := f.sessionCount(ctx, name)
		return err == nil && n == 4
	})

	start := time.Now()
	if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name}); err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	t.Logf("DeleteUser with 4 open sessions took %s", time.Since(start).Round(time.Millisecond))
	if n, err := f.sessionCount(ctx, name); err != nil || n != 0 {
		t.Fatalf("%d session(s) left after DeleteUser returned (err=%v)", n, err)
	}
	select {
	case err := <-sleeping:
		if err == nil {
			t.Error("the long query of a revoked user completed normally")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long query of a revoked user is still running")
	}
	for i, s := range idle {
		if err := s.Exec(ctx, "SELECT 1"); err == nil {
			t.Errorf("idle session %d still runs queries after DeleteUser", i)
		}
	}
	if ok, _ := f.userExists(ctx, name); ok {
		t.Error("user still exists")
	}
}

// TestDeleteUserEveryHost: the host part may have changed since issue, or
// someone may have added an account with the same name; revocation removes
// every account of the name.
func TestDeleteUserEveryHost(t *testing.T) {
	f := setup(t)
	ctx := t.Context()
	c := f.config(t)
	c.UserHost = "127.0.0.1"
	before := f.newDB(t, c)
	name := generate(t, before, "movedhost")
	pw := create(t, before, name, f.perUserGrantTemplate())
	f.exec(t, "CREATE USER '"+name+"'@'10.%' IDENTIFIED BY PASSWORD '*0000000000000000000000000000000000000000'")
	sess, err := f.login(ctx, name, pw)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer sess.Close()

	after := f.newDB(t, f.config(t)) // default host '%'
	if err := after.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name}); err != nil {
		t.Fatalf("DeleteUser: %v", err)
	}
	if ok, _ := f.userExists(ctx, name); ok {
		t.Error("an account of the user survived DeleteUser")
	}
	if n, _ := f.sessionCount(ctx, name); n != 0 {
		t.Errorf("%d session(s) left", n)
	}
}

// TestDeleteEndsSessionsOfDroppedUser: DROP USER by hand leaves sessions
// running; DeleteUser of the absent user still ends them.
func TestDeleteEndsSessionsOfDroppedUser(t *testing.T) {
	f := setup(t)
	db := f.newDB(t, f.config(t))
	ctx := t.Context()
	name := generate(t, db, "dropped")
	pw := create(t, db, name, f.perUserGrantTemplate())
	sess, err := f.login(ctx, name, pw)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	defer sess.Close()
	f.exec(t, "DROP USER '"+name+"'@'%'")
	if err := sess.Exec(ctx, "SELECT 1"); err != nil {
		t.Fatalf("the server ended the session on DROP USER (%v): this test assumes it does not", err)
	}
	if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name}); err != nil {
		t.Fatalf("DeleteUser of a dropped user: %v", err)
	}
	if n, _ := f.sessionCount(ctx, name); n != 0 {
		t.Errorf("%d session(s) of a dropped user left after DeleteUser", n)
	}
}

func TestRevocationStatements(t *testing.T) {
	f := setup(t)
	ctx := t.Context()
	db := f.newDB(t, f.config(t))
	revoke := []string{"REVOKE SELECT ON " + f.table("allowed_t") + " FROM {{name}}"}

	t.Run("run inside the sequence", func(t *testing.T) {
		name := generate(t, db, "revoke")
		create(t, db, name, f.perUserGrantTemplate())
		if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name, Statements: revoke}); err != nil {
			t.Fatalf("DeleteUser: %v", err)
		}
		if ok, _ := f.userExists(ctx, name); ok {
			t.Errorf("user %s still exists", name)
		}
	})

	t.Run("a retry after the grant is gone completes", func(t *testing.T) {
		name := generate(t, db, "revoke")
		create(t, db, name, f.perUserGrantTemplate())
		// As if an earlier attempt ran the REVOKE and then failed.
		f.exec(t, "REVOKE SELECT ON "+f.table("allowed_t")+" FROM '"+name+"'@'%'")
		if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name, Statements: revoke}); err != nil {
			t.Fatalf("DeleteUser: %v", err)
		}
		if ok, _ := f.userExists(ctx, name); ok {
			t.Errorf("user %s still exists", name)
		}
	})

	t.Run("bad snapshot changes nothing", func(t *testing.T) {
		name := generate(t, db, "revoke")
		pw := create(t, db, name, f.roleTemplate())
		err := db.DeleteUser(ctx, plugins.DeleteUserRequest{
			Username:   name,
			Statements: []string{"SET PASSWORD FOR {{name}} = {{password}}"},
		})
		if !errors.Is(err, plugins.ErrInvalidStatement) {
			t.Fatalf("DeleteUser with {{password}} in a revocation statement = %v, want ErrInvalidStatement", err)
		}
		// Not even the lock happened.
		sess, err := f.login(ctx, name, pw)
		if err != nil {
			t.Fatalf("login after a refused DeleteUser: %v", err)
		}
		sess.Close()
	})

	t.Run("rejected statement keeps the user", func(t *testing.T) {
		name := generate(t, db, "revoke")
		create(t, db, name, f.roleTemplate())
		err := db.DeleteUser(ctx, plugins.DeleteUserRequest{
			Username:   name,
			Statements: []string{"REVOKE SELECT ON no_such_db.* FROM {{name}} BROKEN"},
		})
		if !errors.Is(err, plugins.ErrInvalidStatement) {
			t.Fatalf("DeleteUser with a failing revocation statement = %v, want ErrInvalidStatement", err)
		}
		if ok, _ := f.userExists(ctx, name); !ok {
			t.Errorf("user %s dropped although its revocation failed", name)
		}
	})
}

// TestMarker: ListUsers returns only users that carry this plugin's marker
// role, so brokers with different markers share a server and a prefix
// without taking each other's users for orphans.
func TestMarker(t *testing.T) {
	f := setup(t)
	ctx := t.Context()
	c := f.config(t)
	c.Marker = "credbroker:test-" + randomSuffix(t)
	db := f.newDB(t, c)
	other := c
	other.Marker = "credbroker:other-" + randomSuffix(t)
	otherDB := f.newDB(t, other)
	t.Cleanup(func() {
		for _, m := range []string{c.Marker, other.Marker} {
			_, _ = f.admin.Exec("DROP ROLE IF EXISTS '" + m + "'")
		}
	})

	name := generate(t, db, "marker")
	create(t, db, name, f.perUserGrantTemplate())
	foreign := generate(t, otherDB, "marker")
	create(t, otherDB, foreign, f.perUserGrantTemplate())
	// A name that matches the pattern but no marker, and one that only
	// shares the prefix.
	unmarked := generate(t, db, "unmarked")
	f.exec(t, "CREATE USER '"+unmarked+"'@'%'")
	prefixOnly := "cb_" + randomSuffix(t)
	f.exec(t, "CREATE USER '"+prefixOnly+"'@'%'", "GRANT '"+c.Marker+"' TO '"+prefixOnly+"'@'%'")
	t.Cleanup(func() {
		for _, n := range []string{unmarked, prefixOnly} {
			_, _ = f.admin.Exec("DROP USER IF EXISTS '" + n + "'@'%'")
		}
	})

	var roles int
	if err := f.admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM mysql.roles_mapping WHERE User = ? AND Role = ?", name, c.Marker).Scan(&roles); err != nil {
		t.Fatal(err)
	}
	if roles != 1 {
		t.Errorf("user %s does not hold the marker role %s", name, c.Marker)
	}
	names, err := db.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(names, name) {
		t.Errorf("ListUsers lacks %s", name)
	}
	for _, n := range []string{foreign, unmarked, prefixOnly, f.role, c.Marker, "root"} {
		if slices.Contains(names, n) {
			t.Errorf("ListUsers returns %s, which is not this broker's", n)
		}
	}
	otherNames, err := otherDB.ListUsers(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if slices.Contains(otherNames, name) || !slices.Contains(otherNames, foreign) {
		t.Errorf("ListUsers with the other marker = %v, want %s and not %s", otherNames, foreign, name)
	}
	if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: prefixOnly}); !errors.Is(err, plugins.ErrInvalidUsername) {
		t.Errorf("DeleteUser(%s) = %v, want ErrInvalidUsername", prefixOnly, err)
	}

	// A marker role dropped by hand is made again on the next issue.
	if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name}); err != nil {
		t.Fatal(err)
	}
	f.exec(t, "DROP ROLE '"+c.Marker+"'")
	again := generate(t, db, "marker")
	create(t, db, again, f.perUserGrantTemplate())
	if names, err := db.ListUsers(ctx); err != nil || !slices.Contains(names, again) {
		t.Errorf("ListUsers after the marker role was re-created = %v, %v; want %s", names, err, again)
	}
	// DROP USER takes the marker grant with it.
	if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: again}); err != nil {
		t.Fatal(err)
	}
	if err := f.admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM mysql.roles_mapping WHERE User = ?", again).Scan(&roles); err != nil || roles != 0 {
		t.Errorf("%d marker grant(s) of a dropped user left (err=%v)", roles, err)
	}
}
