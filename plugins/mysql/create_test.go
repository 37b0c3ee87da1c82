package mysql_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/mysql"
)

// TestNameLimit generates 10,000 names for the longest roles the broker
// allows and checks every one against the limit the server itself reports.
func TestNameLimit(t *testing.T) {
	f := setup(t)
	db := f.newDB(t, f.config(t))
	limit := f.nameLimit(t)
	t.Logf("server user-name limit: %d characters", limit)

	roles := []string{
		strings.Repeat("orders-readonly-", 10), // longer than any limit
		strings.Repeat("x", 63),                // longest broker role name
		"orders-readonly",
		"",
	}
	seen := make(map[string]bool, 10000)
	longest := ""
	for i := range 10000 {
		name := generate(t, db, roles[i%len(roles)])
		switch {
		case len(name) > limit:
			t.Fatalf("GenerateUsername = %q: %d characters, server allows %d", name, len(name), limit)
		case !mysql.UsernamePattern.MatchString(name):
			t.Fatalf("GenerateUsername = %q, does not match %s", name, mysql.UsernamePattern)
		case seen[name]:
			t.Fatalf("GenerateUsername returned %q twice", name)
		}
		if random := name[strings.LastIndexByte(name, '_')+1:]; len(random) < 16 {
			t.Fatalf("random part of %q is %d characters, want at least 16", name, len(random))
		}
		seen[name] = true
		if len(name) > len(longest) {
			longest = name
		}
	}
	if len(longest) != limit {
		t.Errorf("longest generated name has %d characters, want the whole limit %d used by a long role", len(longest), limit)
	}
	// The server accepts a name of exactly its limit, and the user works.
	pw := create(t, db, longest, f.perUserGrantTemplate())
	sess, err := f.login(t.Context(), longest, pw)
	if err != nil {
		t.Fatalf("login as %s: %v", longest, err)
	}
	defer sess.Close()
	if err := sess.Exec(t.Context(), "SELECT * FROM "+f.table("allowed_t")); err != nil {
		t.Fatalf("allowed query as %s: %v", longest, err)
	}
}

// TestFailingGrantMidTemplate: CREATE USER and the first GRANT commit, the
// second GRANT fails; NewUser must leave no user and no grant behind.
func TestFailingGrantMidTemplate(t *testing.T) {
	f := setup(t)
	c := f.config(t)
	// One connection: the cleanup must not wait for the one the failed
	// template ran on.
	c.MaxConns = 1
	db := f.newDB(t, c)
	ctx := t.Context()
	name := generate(t, db, "halfway")
	pw, err := plugins.GeneratePassword()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = db.DeleteUser(context.Background(), plugins.DeleteUserRequest{Username: name}) })
	for _, wrapped := range []struct {
		name string
		db   plugins.Database
	}{{"plugin", db}, {"sanitized", plugins.Sanitized(db)}} {
		t.Run(wrapped.name, func(t *testing.T) {
			err := wrapped.db.NewUser(ctx, plugins.NewUserRequest{
				Username: name, Password: pw, Expiration: time.Now().Add(time.Hour),
				Statements: []string{
					"CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}",
					"GRANT SELECT ON " + f.table("allowed_t") + " TO {{name}}",
					"GRANT SELECT ON " + f.table("no_such_table") + " TO {{name}}",
					"GRANT SELECT ON " + f.table("forbidden_t") + " TO {{name}}",
				},
			})
			if err == nil {
				t.Fatal("NewUser with a failing GRANT succeeded")
			}
			msg := strings.ReplaceAll(err.Error(), pw, "[password]")
			if !errors.Is(err, plugins.ErrInvalidStatement) || !errors.Is(err, plugins.ErrNotCreated) {
				t.Errorf("NewUser = %s, want ErrInvalidStatement and ErrNotCreated", msg)
			}
			if !strings.Contains(msg, "creation statement 3") {
				t.Errorf("error %q does not name the failing statement", msg)
			}
			if ok, err := f.userExists(ctx, name); err != nil || ok {
				t.Fatalf("user %s left after a failed creation (exists=%v, err=%v)", name, ok, err)
			}
			var grants int
			if err := f.admin.QueryRowContext(ctx, "SELECT COUNT(*) FROM mysql.tables_priv WHERE User = ?", name).Scan(&grants); err != nil {
				t.Fatal(err)
			}
			if grants != 0 {
				t.Errorf("%d table grant(s) of %s left after a failed creation", grants, name)
			}
			if sess, err := f.login(ctx, name, pw); err == nil {
				sess.Close()
				t.Error("login as a user whose creation failed succeeded")
			}
		})
	}
}

func TestHostileValues(t *testing.T) {
	f := setup(t)
	db := f.newDB(t, f.config(t))
	ctx := t.Context()

	t.Run("role names", func(t *testing.T) {
		roles := map[string]string{
			"quotes":          `o'brien "the" role`,
			"account syntax":  `x'@'%`,
			"backslashes":     `a\'b\\c\`,
			"backticks":       "`; DROP USER root; --",
			"sql injection":   `'; DROP USER 'root'@'%'; --`,
			"unicode":         "ünïcødé-ロール",
			"only unicode":    "日本語",
			"empty":           "",
			"controls":        "a\x00b\n\tc",
			"placeholder":     "{{name}}{{password}}",
			"uppercase":       "ORDERS_ReadOnly",
			"percent wildcar": "%_%",
		}
		for tc, role := range roles {
			t.Run(tc, func(t *testing.T) {
				name := generate(t, db, role)
				if !mysql.UsernamePattern.MatchString(name) || !strings.HasPrefix(name, "cb_") {
					t.Fatalf("GenerateUsername(%q) = %q, not a valid name", role, name)
				}
				create(t, db, name, f.perUserGrantTemplate())
				if ok, err := f.userExists(ctx, name); err != nil || !ok {
					t.Fatalf("user %q not created: exists=%v err=%v", name, ok, err)
				}
			})
		}
	})

	t.Run("hosts refused", func(t *testing.T) {
		hosts := map[string]string{
			"quote":           "local'host",
			"account syntax":  "'@'%",
			"backslash":       `10.0.0.\%`,
			"escaped quote":   `\'`,
			"nul":             "127.0.0.1\x00",
			"space":           "127.0.0.1 ",
			"at sign":         "a@b",
			"double quote":    `"%"`,
			"backtick":        "`%`",
			"comment":         "%'-- ",
			"too long":        strings.Repeat("h", 256),
			"statement break": "%'; DROP USER root; --",
		}
		for tc, h := range hosts {
			t.Run(tc, func(t *testing.T) {
				if err := (mysql.Factory{}).CheckOptions(map[string]any{"user_host": h}); err == nil {
					t.Errorf("CheckOptions(user_host: %q) accepted it", h)
				}
				c := f.config(t)
				c.UserHost = h
				if d, err := mysql.New(ctx, c); err == nil {
					d.Close()
					t.Errorf("New with user host %q succeeded", h)
				}
			})
		}
	})

	t.Run("hosts accepted", func(t *testing.T) {
		for _, h := range []string{"%", "127.0.0.1", "127.0.0.%", "10.0.0.0/255.0.0.0", "app-1.example.com", "::1", "%.example.com", strings.Repeat("h", 255)} {
			if err := (mysql.Factory{}).CheckOptions(map[string]any{"user_host": h}); err != nil {
				t.Errorf("CheckOptions(user_host: %q) = %v", h, err)
			}
		}
	})

	t.Run("host part is used and quoted", func(t *testing.T) {
		c := f.config(t)
		c.UserHost = "127.0.0.%"
		hdb := f.newDB(t, c)
		name := generate(t, hdb, "hosted")
		pw := create(t, hdb, name, f.perUserGrantTemplate())
		var host string
		if err := f.admin.QueryRowContext(ctx, "SELECT Host FROM mysql.user WHERE User = ?", name).Scan(&host); err != nil {
			t.Fatal(err)
		}
		if host != "127.0.0.%" {
			t.Errorf("account host = %q, want 127.0.0.%%", host)
		}
		s, err := f.login(ctx, name, pw)
		if err != nil {
			t.Fatalf("login from 127.0.0.1 as %s@127.0.0.%%: %v", name, err)
		}
		s.Close()
	})

	t.Run("password outside a hash clause", func(t *testing.T) {
		for _, stmt := range []string{
			"CREATE USER {{name}} IDENTIFIED BY {{password}}",
			"CREATE USER {{name}} IDENTIFIED BY PASSWORD({{password}})",
			"CREATE USER {{name}} IDENTIFIED WITH caching_sha2_password AS {{password}}",
			"CREATE USER {{name}} COMMENT {{password}}",
		} {
			name := generate(t, db, "clause")
			err := db.NewUser(ctx, plugins.NewUserRequest{
				Username: name, Password: "Unused0password0for0a0refused0template0", Expiration: time.Now().Add(time.Hour),
				Statements: []string{stmt},
			})
			if !errors.Is(err, plugins.ErrInvalidStatement) || !errors.Is(err, plugins.ErrNotCreated) {
				t.Errorf("NewUser with %q = %v, want ErrInvalidStatement and ErrNotCreated", stmt, err)
			}
			if err := (mysql.Factory{}).CheckStatements([]string{stmt}); err == nil {
				t.Errorf("CheckStatements(%q) accepted it", stmt)
			}
			if ok, _ := f.userExists(ctx, name); ok {
				t.Errorf("user %s created by a refused template", name)
			}
		}
		for _, stmt := range []string{
			"CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}",
			"CREATE USER {{name}} IDENTIFIED WITH mysql_native_password AS {{password}}",
			"CREATE USER {{name}} IDENTIFIED VIA mysql_native_password USING {{password}}",
			"SET PASSWORD FOR {{name}} = {{password}}",
		} {
			if err := (mysql.Factory{}).CheckStatements([]string{stmt}); err != nil {
				t.Errorf("CheckStatements(%q) = %v", stmt, err)
			}
		}
	})

	t.Run("every hash clause logs in", func(t *testing.T) {
		for _, tmpl := range [][]string{
			{"CREATE USER {{name}} IDENTIFIED WITH mysql_native_password AS {{password}}"},
			{"CREATE USER {{name}} IDENTIFIED VIA mysql_native_password USING {{password}}"},
			{"CREATE USER {{name}}", "SET PASSWORD FOR {{name}} = {{password}}"},
		} {
			name := generate(t, db, "clause")
			pw := create(t, db, name, tmpl)
			s, err := f.login(ctx, name, pw)
			if err != nil {
				t.Errorf("login after %q: %v", tmpl, err)
				continue
			}
			s.Close()
		}
	})
}

// TestPlaintextPasswordNeverReachesServer relies on the throwaway server's
// general query log: every statement the plugin sends is in it.
func TestPlaintextPasswordNeverReachesServer(t *testing.T) {
	f := setup(t)
	logPath := testenv.MySQLLog(t)
	db := f.newDB(t, f.config(t))
	ctx := t.Context()

	name := generate(t, db, "logcheck")
	pw := create(t, db, name, f.roleTemplate())
	sess, err := f.login(ctx, name, pw)
	if err != nil {
		t.Fatalf("login as %s: %v", name, err)
	}
	if err := sess.Exec(ctx, "SELECT * FROM "+f.table("allowed_t")); err != nil {
		t.Fatalf("allowed query: %v", err)
	}
	sess.Close()

	var stored string
	if err := f.admin.QueryRowContext(ctx, "SELECT authentication_string FROM mysql.user WHERE User = ?", name).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	if len(stored) != 41 || stored[0] != '*' {
		t.Errorf("stored password of %s is not a mysql_native_password hash", name)
	}
	if strings.Contains(stored, pw) {
		t.Errorf("mysql.user holds the plaintext password")
	}

	// Also a statement the server rejects while quoting the hash back.
	rejected := generate(t, db, "logcheck")
	err = db.NewUser(ctx, plugins.NewUserRequest{
		Username: rejected, Password: pw, Expiration: time.Now().Add(time.Hour),
		Statements: []string{"CREATEX USER {{name}} IDENTIFIED BY PASSWORD {{password}}"},
	})
	if !errors.Is(err, plugins.ErrInvalidStatement) {
		t.Fatalf("NewUser with a syntax error = %v, want ErrInvalidStatement", strings.ReplaceAll(fmt.Sprint(err), pw, "[password]"))
	}
	if strings.Contains(err.Error(), pw) || strings.Contains(err.Error(), stored) {
		t.Errorf("NewUser error carries the password or its hash: %s", strings.ReplaceAll(err.Error(), pw, "[password]"))
	}

	// The server writes its log asynchronously to us: wait until the
	// creation statement shows up, which also proves this is the right log.
	deadline := time.Now().Add(5 * time.Second)
	for {
		data, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatalf("read general log: %v", err)
		}
		if strings.Contains(string(data), pw) {
			t.Fatalf("general log %s contains the plaintext password", logPath)
		}
		if strings.Contains(string(data), "CREATE USER '"+name+"'@'%' IDENTIFIED BY PASSWORD '*") &&
			strings.Contains(string(data), "CREATEX USER '"+rejected+"'") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("general log %s never showed the CREATE USER of %s: is general_log on?", logPath, name)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestConnectErrors(t *testing.T) {
	f := setup(t)
	closedPort := func(t *testing.T) int {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().(*net.TCPAddr).Port
	}
	t.Run("wrong admin password", func(t *testing.T) {
		c := f.config(t)
		c.Password = "WrongAdminPassword" + randomSuffix(t)
		_, err := mysql.New(t.Context(), c)
		if !errors.Is(err, plugins.ErrUnavailable) {
			t.Fatalf("New with a wrong password = %v, want ErrUnavailable", err)
		}
		if strings.Contains(err.Error(), c.Password) {
			t.Errorf("connect error contains the admin password")
		}
	})
	t.Run("nothing listening", func(t *testing.T) {
		c := f.config(t)
		c.Port = closedPort(t)
		c.ConnectTimeout = 2 * time.Second
		_, err := mysql.New(t.Context(), c)
		if !errors.Is(err, plugins.ErrUnavailable) {
			t.Fatalf("New against a closed port = %v, want ErrUnavailable", err)
		}
		if strings.Contains(err.Error(), c.Password) {
			t.Errorf("connect error contains the admin password")
		}
	})
	t.Run("lazy starts while the server is down", func(t *testing.T) {
		c := f.config(t)
		c.Port = closedPort(t)
		c.ConnectTimeout = 2 * time.Second
		c.Lazy = true
		db := f.newDB(t, c)
		if err := db.Ping(t.Context()); !errors.Is(err, plugins.ErrUnavailable) {
			t.Fatalf("Ping of a down server = %v, want ErrUnavailable", err)
		}
		// Names fit the smallest limit of any server until the real one is known.
		name := generate(t, db, strings.Repeat("long-role-", 10))
		if len(name) > 32 {
			t.Errorf("name generated before first contact has %d characters, want at most 32", len(name))
		}
		err := db.NewUser(t.Context(), plugins.NewUserRequest{
			Username: name, Password: "Unused0password0for0a0down0server0", Expiration: time.Now().Add(time.Hour),
			Statements: f.perUserGrantTemplate(),
		})
		if !errors.Is(err, plugins.ErrUnavailable) || !errors.Is(err, plugins.ErrNotCreated) {
			t.Fatalf("NewUser on a down server = %v, want ErrUnavailable and ErrNotCreated", err)
		}
	})
	t.Run("bad settings", func(t *testing.T) {
		for name, mod := range map[string]func(*mysql.Config){
			"prefix":   func(c *mysql.Config) { c.Prefix = "Bad-Prefix" },
			"tls":      func(c *mysql.Config) { c.TLS = "sometimes" },
			"no host":  func(c *mysql.Config) { c.Host = "" },
			"no port":  func(c *mysql.Config) { c.Port = 0 },
			"bad host": func(c *mysql.Config) { c.UserHost = "x'y" },
		} {
			c := f.config(t)
			mod(&c)
			if db, err := mysql.New(t.Context(), c); err == nil {
				db.Close()
				t.Errorf("New with a bad %s succeeded", name)
			}
		}
	})
}

func TestClientDSN(t *testing.T) {
	f := setup(t)
	ctx := t.Context()
	c := f.config(t)
	db := f.newDB(t, c)
	name := generate(t, db, "dsn")
	pw := create(t, db, name, f.perUserGrantTemplate())

	dsn := mysql.Factory{}.ClientDSN(plugins.Endpoint{Host: c.Host, Port: c.Port, Database: f.db, SSLMode: "disable"}, name, pw)
	conn, err := sql.Open("mysql", dsn)
	if err != nil {
		t.Fatalf("open the client DSN: %v", err)
	}
	defer conn.Close()
	var n int
	if err := conn.QueryRowContext(ctx, "SELECT COUNT(*) FROM allowed_t").Scan(&n); err != nil || n != 1 {
		t.Fatalf("query through the client DSN: n=%d err=%v", n, err)
	}
	for mode, want := range map[string]string{"disable": "", "prefer": "tls=preferred", "require": "tls=skip-verify", "verify-full": "tls=true"} {
		got := mysql.Factory{}.ClientDSN(plugins.Endpoint{Host: "db.example", Port: 3306, Database: "shop", SSLMode: mode}, "u", "p")
		if want == "" && strings.Contains(got, "tls=") || !strings.Contains(got, want) {
			t.Errorf("ClientDSN with sslmode %s = %q, want %q in it", mode, got, want)
		}
	}
}
