package main

import (
	"bufio"
	"context"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/postgres"
)

// TestFloorSendsThePluginsStatements proves the floor is the plugin's SQL:
// one user created and dropped by each, per template, and the statements
// each backend sent (from the server log, log_statement=all) must be the
// same once the name, verifier and expiry are masked.
func TestFloorSendsThePluginsStatements(t *testing.T) {
	ctx := t.Context()
	dsn := testenv.PostgresDSN(t)
	logPath := testenv.PostgresLog(t)
	pg, err := newPGEnv(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Close()

	c := pg.cfg.ConnConfig
	db, err := postgres.New(ctx, postgres.Config{
		Host: c.Host, Port: int(c.Port), Database: c.Database, Username: c.User, Password: c.Password,
		SSLMode: "disable", MaxConns: 1, Prefix: "cbft", Marker: benchMarker,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	pool, err := pg.floorPool(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	f := &floor{pool: pool, marker: benchMarker}
	backendPID := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}) int {
		var pid int
		if err := q.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
			t.Fatal(err)
		}
		return pid
	}
	floorPID := backendPID(pool)

	for _, tmpl := range templates {
		t.Run(tmpl.Name, func(t *testing.T) {
			exp := time.Now().Add(time.Hour)
			pname, err := db.GenerateUsername(tmpl.Name)
			if err != nil {
				t.Fatal(err)
			}
			pw, _ := plugins.GeneratePassword()
			if err := db.NewUser(ctx, plugins.NewUserRequest{Username: pname, Password: pw, Expiration: exp, Statements: tmpl.Stmts}); err != nil {
				t.Fatalf("plugin NewUser: %v", err)
			}
			if err := db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: pname}); err != nil {
				t.Fatalf("plugin DeleteUser: %v", err)
			}
			fname := newUsername("cbft", tmpl.Name)
			if err := f.create(ctx, fname, exp, tmpl.Stmts); err != nil {
				t.Fatalf("floor create: %v", err)
			}
			if err := f.drop(ctx, fname, nil); err != nil {
				t.Fatalf("floor drop: %v", err)
			}

			var pluginSQL, floorSQL []string
			deadline := time.Now().Add(5 * time.Second)
			for {
				pluginSQL = statementsNaming(t, logPath, pname)
				floorSQL = statementsOf(t, logPath, floorPID, fname)
				if len(pluginSQL) > 0 && len(pluginSQL) == len(floorSQL) || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			if len(pluginSQL) < 5 {
				t.Fatalf("found only %d plugin statements in %s: is log_statement=all set?", len(pluginSQL), logPath)
			}
			t.Logf("%d statements:\n  %s", len(pluginSQL), strings.Join(pluginSQL, "\n  "))
			if !slices.Equal(pluginSQL, floorSQL) {
				t.Errorf("floor statements differ from the plugin's:\nplugin:\n  %s\nfloor:\n  %s",
					strings.Join(pluginSQL, "\n  "), strings.Join(floorSQL, "\n  "))
			}
		})
	}
}

var (
	logEntryRE = regexp.MustCompile(`^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+ \S+ \[(\d+)\] \S*@\S* (LOG|DETAIL|ERROR|STATEMENT|FATAL|PANIC|WARNING|NOTICE|INFO|HINT|CONTEXT):\s+(.*)$`)
	execRE     = regexp.MustCompile(`^(statement|execute [^:]+): `)
	verifierRE = regexp.MustCompile(`SCRAM-SHA-256\$[^']+`)
	expiryRE   = regexp.MustCompile(`'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?\+00'`)
)

type logEntry struct {
	pid  string
	kind string
	text string
}

func readLog(t *testing.T, path string) []logEntry {
	t.Helper()
	fh, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	var out []logEntry
	sc := bufio.NewScanner(fh)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if m := logEntryRE.FindStringSubmatch(line); m != nil {
			out = append(out, logEntry{pid: m[1], kind: m[2], text: m[3]})
		} else if len(out) > 0 {
			out[len(out)-1].text += "\n" + line
		}
	}
	return out
}

// statementsOf returns, masked, what backend pid sent between its first
// and last statement that names user.
func statementsOf(t *testing.T, path string, pid int, user string) []string {
	t.Helper()
	var mine []logEntry
	for _, e := range readLog(t, path) {
		if e.pid == strconv.Itoa(pid) && e.kind == "LOG" && execRE.MatchString(e.text) {
			mine = append(mine, e)
		}
	}
	return between(mine, user)
}

// statementsNaming is statementsOf for the backend that created user.
func statementsNaming(t *testing.T, path, user string) []string {
	t.Helper()
	all := readLog(t, path)
	for _, e := range all {
		if e.kind == "LOG" && strings.Contains(e.text, "CREATE ROLE "+`"`+user+`"`) {
			var mine []logEntry
			for _, x := range all {
				if x.pid == e.pid && x.kind == "LOG" && execRE.MatchString(x.text) {
					mine = append(mine, x)
				}
			}
			return between(mine, user)
		}
	}
	return nil
}

// between masks the statements from the BEGIN before the first mention of
// user to the COMMIT after the last one (parameters are not in the text, so
// the statements between them count too).
func between(es []logEntry, user string) []string {
	first, last := -1, -1
	for i, e := range es {
		if strings.Contains(e.text, user) {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 {
		return nil
	}
	// BEGIN and COMMIT may share a query with other statements
	// (plugins/postgres/pipeline.go).
	lower := func(i int) string { return strings.ToLower(strip(es[i].text)) }
	for first > 0 && !strings.HasPrefix(lower(first), "begin") {
		first--
	}
	for last < len(es)-1 && !strings.HasSuffix(lower(last), "commit") {
		last++
	}
	var out []string
	for _, e := range es[first : last+1] {
		s := strip(e.text)
		s = strings.ReplaceAll(s, user, "NAME")
		s = verifierRE.ReplaceAllString(s, "VERIFIER")
		s = expiryRE.ReplaceAllString(s, "EXPIRY")
		out = append(out, strings.Join(strings.Fields(s), " "))
	}
	return out
}

func strip(s string) string { return execRE.ReplaceAllString(strings.TrimSpace(s), "") }
