package agent_test

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/agent"
	"github.com/credbroker/credbroker/client"
	"github.com/credbroker/credbroker/internal/brokertest"
)

// freeAddr is a loopback address nothing listens on.
func freeAddr(t *testing.T) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().String()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// fields parses the key=value lines of a rendered file.
func fields(b []byte) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, "="); ok {
			m[k] = v
		}
	}
	return m
}

// A reader polling the file while the credential rotates twice never sees
// a partial or empty file, and every credential it reads logs in: the file
// is replaced with the new credential before the old user is dropped.
// /healthz is 200 without a credential in it; ctx's end revokes every
// lease and removes the file; the log holds no password.
func TestFileModeRotatesAtomically(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(e.dir, "db.env")
	health := freeAddr(t)
	cfg, err := agent.ParseConfig([]byte(e.config(fmt.Sprintf(`credentials:
  - role: pg-orders
    ttl: 3s
    file:
      path: %s
      template: |
        user={{ .Username }}
        dsn={{ .DSN }}
        lease={{ .LeaseID }}
        end=1
health:
  listen: %s
`, path, health))))
	if err != nil {
		t.Fatal(err)
	}
	logs := &brokertest.SyncBuffer{}
	a := agent.New(cfg, agent.Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	brokertest.WaitFor(t, 10*time.Second, "the credential file", func() bool { _, err := os.Stat(path); return err == nil })

	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v, want 0600 (the default)", st.Mode().Perm())
	}
	users := map[string]bool{}
	var passwords []string
	reads := 0
	for end := time.Now().Add(8 * time.Second); time.Now().Before(end); {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read the file: %v", err) // it must never be missing while the agent runs
		}
		reads++
		f := fields(b)
		if f["end"] != "1" || f["user"] == "" || f["dsn"] == "" || f["lease"] == "" {
			t.Fatalf("read %d: a partial or empty file (%d bytes)", reads, len(b))
		}
		pc, err := pgx.ParseConfig(f["dsn"])
		if err != nil {
			t.Fatal("the rendered DSN does not parse")
		}
		if !users[f["user"]] {
			users[f["user"]] = true
			passwords = append(passwords, pc.Password)
		}
		if err := login(ctx, f["dsn"]); err != nil {
			t.Fatalf("read %d: login as %s (from the file) failed: %v", reads, f["user"], err)
		}
		if code, body := get(t, "http://"+health+"/healthz"); code != http.StatusOK || strings.TrimSpace(body) != "ok" {
			t.Fatalf("/healthz %d %q while the credential is live", code, body)
		}
	}
	if len(users) < 2 {
		t.Fatalf("saw %d users in %d reads; want at least one rotation", len(users), reads)
	}
	t.Logf("%d reads, %d logins, %d distinct users across rotations", reads, reads, len(users))

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the file is still there after the agent stopped: %v", err)
	}
	if n := e.users(); n != 0 {
		t.Errorf("%d users left after the agent stopped; want every lease revoked", n)
	}
	out := logs.String()
	for _, p := range passwords {
		if strings.Contains(out, p) {
			t.Fatal("a password appears in the agent's log")
		}
	}
	if !strings.Contains(out, "credential rotated") {
		t.Errorf("the log does not say the credential rotated:\n%s", out)
	}
}

// While the broker cannot be reached, /healthz and /readyz are 503 and say
// why; ending ctx then stops the agent cleanly.
func TestHealthUnavailableBeforeFirstCredential(t *testing.T) {
	e := newEnv(t)
	health := freeAddr(t)
	cfg, err := agent.ParseConfig([]byte(strings.Replace(e.config(fmt.Sprintf(`credentials:
  - role: pg-orders
    file: {path: %s, template: "{{ .DSN }}"}
health:
  listen: %s
`, filepath.Join(e.dir, "dsn"), health)), e.addr, freeAddr(t), 1)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- agent.New(cfg, agent.Options{}).Run(ctx) }()
	var code int
	var body string
	brokertest.WaitFor(t, 5*time.Second, "the health endpoint", func() bool {
		resp, err := http.Get("http://" + health + "/readyz")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		code, body = resp.StatusCode, string(b)
		return true
	})
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "waiting for the first credential") {
		t.Errorf("/readyz %d %q; want 503 waiting for the first credential", code, body)
	}
	if code, _ := get(t, "http://"+health+"/healthz"); code != http.StatusServiceUnavailable {
		t.Errorf("/healthz %d, want 503", code)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run did not return after ctx ended")
	}
}

// A revocation of the agent's lease (here by its owner) stops the agent
// with client.ErrRevoked, and the file of the dead credential is removed.
func TestRevocationStopsAgent(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(e.dir, "lease")
	cfg, err := agent.ParseConfig([]byte(e.config(fmt.Sprintf(`credentials:
  - role: pg-orders
    file: {path: %s, template: "{{ .LeaseID }}", mode: 0640}
`, path))))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- agent.New(cfg, agent.Options{}).Run(context.Background()) }()
	brokertest.WaitFor(t, 10*time.Second, "the file", func() bool { _, err := os.Stat(path); return err == nil })
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
	id, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.client().Revoke(context.Background(), string(id)); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, client.ErrRevoked) {
			t.Fatalf("Run: %v; want client.ErrRevoked", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the agent did not stop after its lease was revoked")
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the revoked credential's file is still there: %v", err)
	}
}

// MariaDB: the {{ json . }} file of a shop-orders credential holds a
// go-sql-driver DSN that logs in and reads the granted table, across a
// rotation; the end revokes (no user left in mysql.user).
func TestFileModeMariaDBJSON(t *testing.T) {
	e := newMySQLEnv(t)
	path := filepath.Join(e.dir, "db.json")
	cfg, err := agent.ParseConfig([]byte(e.config(fmt.Sprintf(`credentials:
  - role: shop-orders
    ttl: 6s
    file: {path: %s, template: "{{ json . }}"}
`, path))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- agent.New(cfg, agent.Options{}).Run(ctx) }()
	users := map[string]bool{}
	brokertest.WaitFor(t, 20*time.Second, "two MariaDB users, each logging in", func() bool {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			return false
		}
		var c struct{ Username, DSN string }
		if err := json.Unmarshal(b, &c); err != nil || c.Username == "" || c.DSN == "" {
			t.Fatalf("the file is not the credential's JSON (%d bytes)", len(b))
		}
		db, err := sql.Open("mysql", c.DSN)
		if err != nil {
			t.Fatal("the rendered DSN does not parse")
		}
		defer db.Close()
		var n int
		if err := db.QueryRow("SELECT count(*) FROM orders").Scan(&n); err != nil || n != 2 {
			t.Fatalf("as %s: %d orders, %v", c.Username, n, err)
		}
		users[c.Username] = true
		return len(users) >= 2
	})
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := e.myUsers(); n != 0 {
		t.Errorf("%d MariaDB users left after the agent stopped", n)
	}
}

// When the broker restarts, the stream breaks; the agent reconnects, is
// issued a new credential and rewrites the file with it, and /healthz
// stays 200 meanwhile (the old credential is still valid).
func TestFileModeReconnectsAfterBrokerRestart(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(e.dir, "db.env")
	health := freeAddr(t)
	cfg, err := agent.ParseConfig([]byte(e.config(fmt.Sprintf(`credentials:
  - role: pg-orders
    ttl: 6s
    file: {path: %s, template: "user={{ .Username }}\ndsn={{ .DSN }}\n"}
health:
  listen: %s
`, path, health))))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- agent.New(cfg, agent.Options{}).Run(ctx) }()
	read := func() map[string]string {
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		return fields(b)
	}
	brokertest.WaitFor(t, 10*time.Second, "the credential file", func() bool { return read() != nil })
	first := read()["user"]

	e.stop()
	if code, body := get(t, "http://"+health+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz %d %q with the broker down and the lease still valid", code, body)
	}
	e.start()
	var f map[string]string
	brokertest.WaitFor(t, 15*time.Second, "a new credential after the restart", func() bool {
		f = read()
		return f["user"] != first
	})
	if err := login(ctx, f["dsn"]); err != nil {
		t.Fatalf("login as the new user %s: %v", f["user"], err)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	if n := e.users(); n != 0 {
		t.Errorf("%d users left; want the old stream's lease revoked too", n)
	}
}
