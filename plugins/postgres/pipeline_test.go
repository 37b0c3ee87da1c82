package postgres_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/plugins"
)

// TestCreationStatementRejected: creation statements travel several to a
// query (pipeline.go), but a statement the server refuses is still named
// by its position, nothing is left behind, and neither the password nor
// its verifier is in the error.
func TestCreationStatementRejected(t *testing.T) {
	f := setup(t)
	db := f.newDB(t, f.config(t))
	g := pgx.Identifier{f.group}.Sanitize()
	create := "CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}}"
	missing := f.table("no_such_table")
	tests := []struct {
		name  string
		stmts []string
		want  string
	}{
		{"first of one", []string{create + " IN ROLE no_such_group_x"}, "creation statement 1 rejected"},
		{"second, membership", []string{create, "GRANT no_such_group_x TO {{name}}"}, "creation statement 2 rejected"},
		{"third, after an object grant", []string{create, "GRANT SELECT ON " + f.table("allowed_t") + " TO {{name}}", "GRANT SELECT ON " + missing + " TO {{name}}"}, "creation statement 3 rejected"},
		{"object grant first", []string{create + ";", "GRANT SELECT ON " + missing + " TO {{name}}"}, "creation statement 2 rejected"},
		{"two statements in one", []string{create + " IN ROLE " + g + "; GRANT SELECT ON " + missing + " TO {{name}}"}, "creation statement 1 rejected"},
		{"unterminated comment", []string{create + " IN ROLE " + g + " /* no end"}, "creation statement 1 rejected"},
		{"syntax error quoting the verifier", []string{create + " IN ROLE " + g + " {{password}}"}, "creation statement 1 rejected"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := t.Context()
			name := generate(t, db, "rej")
			pw, err := db.GeneratePassword()
			if err != nil {
				t.Fatal(err)
			}
			err = db.NewUser(ctx, plugins.NewUserRequest{Username: name, Password: pw, Expiration: time.Now().Add(time.Hour), Statements: tt.stmts})
			if err == nil {
				t.Fatal("NewUser succeeded")
			}
			if !errors.Is(err, plugins.ErrInvalidStatement) || !errors.Is(err, plugins.ErrNotCreated) {
				t.Errorf("NewUser = %v, want ErrInvalidStatement and ErrNotCreated", err)
			}
			msg := err.Error()
			if !strings.Contains(msg, tt.want) {
				t.Errorf("NewUser = %v, want %q", err, tt.want)
			}
			if strings.Contains(msg, pw) || strings.Contains(msg, "SCRAM-SHA-256$") {
				t.Error("the error carries the password or a verifier")
			}
			if ok, err := f.userExists(ctx, name); err != nil || ok {
				t.Errorf("user exists after a rejected creation: %v, %v", ok, err)
			}
		})
	}
}

// TestGeneratedPasswordLogsIn: a password from the plugin's buffer, whose
// verifier was computed ahead, logs in, and a template that takes the ACL
// lock (several statements to a query) ends with the lease's expiry.
func TestGeneratedPasswordLogsIn(t *testing.T) {
	f := setup(t)
	db := f.newDB(t, f.config(t))
	ctx := t.Context()
	for _, tmpl := range [][]string{f.groupTemplate(), f.perUserGrantTemplate()} {
		// The first password comes before any buffer; later ones from it.
		for i := range 3 {
			pw, err := plugins.NewPassword(plugins.Sanitized(db))
			if err != nil {
				t.Fatal(err)
			}
			name := generate(t, db, "buf")
			exp := time.Now().Add(time.Hour).Truncate(time.Second)
			if err := db.NewUser(ctx, plugins.NewUserRequest{Username: name, Password: pw, Expiration: exp, Statements: tmpl}); err != nil {
				t.Fatalf("NewUser: %v", err)
			}
			t.Cleanup(func() { _ = db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: name}) })
			s, err := f.login(ctx, name, pw)
			if err != nil {
				t.Fatalf("login %d with a generated password: %v", i, err)
			}
			err = s.Exec(ctx, "SELECT * FROM "+f.table("allowed_t"))
			s.Close()
			if err != nil {
				t.Errorf("allowed query: %v", err)
			}
			if until, err := f.validUntil(ctx, name); err != nil || !until.Equal(exp) {
				t.Errorf("VALID UNTIL %v, %v; want %v", until, err, exp)
			}
			time.Sleep(20 * time.Millisecond) // let the buffer refill
		}
	}
}

// TestCreationCancelled: a creation whose context ends while the server
// works returns promptly with the context's error, leaves nothing, and the
// plugin's pool goes on working (the interrupted connection is not reused).
func TestCreationCancelled(t *testing.T) {
	f := setup(t)
	c := f.config(t)
	c.MaxConns = 1
	db := f.newDB(t, c)
	tmpl := append(f.groupTemplate(), "SELECT pg_sleep(5)")
	name := generate(t, db, "cancel")
	pw, err := db.GeneratePassword()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err = db.NewUser(ctx, plugins.NewUserRequest{Username: name, Password: pw, Expiration: time.Now().Add(time.Hour), Statements: tmpl})
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("NewUser took %s after its context ended", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("NewUser = %v, want context.DeadlineExceeded", err)
	}
	if errors.Is(err, plugins.ErrUnavailable) {
		t.Errorf("NewUser = %v: a cancelled call reported as an outage", err)
	}
	if ok, err := f.userExists(t.Context(), name); err != nil || ok {
		t.Errorf("user exists after a cancelled creation: %v, %v", ok, err)
	}
	create(t, db, generate(t, db, "after"), time.Now().Add(time.Hour), f.groupTemplate())
}
