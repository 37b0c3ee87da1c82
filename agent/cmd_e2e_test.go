package agent_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/internal/brokertest"
)

// proc is the credbroker binary running `agent`.
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	out    *brokertest.SyncBuffer // stdout and stderr
	done   chan struct{}
	code   int
	secret map[string]bool // passwords seen, for the leak check
}

func startAgent(t *testing.T, args ...string) *proc {
	t.Helper()
	bin, _ := binaries(t)
	return startBinary(t, bin, append([]string{"agent"}, args...)...)
}

// startBinary runs bin with args: credbroker agent, or credbroker-agent.
func startBinary(t *testing.T, bin string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, out: &brokertest.SyncBuffer{}, done: make(chan struct{}), secret: map[string]bool{}}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(p.done)
		err := p.cmd.Wait()
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			p.code = ee.ExitCode()
		} else if err != nil {
			p.code = -1
		}
	}()
	t.Cleanup(func() {
		select {
		case <-p.done:
		default:
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// wait returns the exit code.
func (p *proc) wait(timeout time.Duration) int {
	p.t.Helper()
	select {
	case <-p.done:
		return p.code
	case <-time.After(timeout):
		p.t.Fatalf("the agent did not exit within %s; output:\n%s", timeout, p.out)
		return 0
	}
}

// noSecrets fails if a password seen appears in the agent's output.
func (p *proc) noSecrets() {
	p.t.Helper()
	out := p.out.String()
	for s := range p.secret {
		if strings.Contains(out, s) {
			p.t.Fatal("a password appears in the agent's output")
		}
	}
	if len(p.secret) == 0 {
		p.t.Fatal("no password was seen: the leak check checked nothing")
	}
}

// readEnvFile reads a {{ dotenv . }} file (values quoted when needed) and
// remembers its password.
func (p *proc) readEnvFile(path string) map[string]string {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil
	}
	m := fields(b)
	for k, v := range m {
		if len(v) >= 2 && v[0] == '\'' {
			m[k] = strings.ReplaceAll(v[1:len(v)-1], `'\''`, `'`)
		}
	}
	if m["DB_PASSWORD"] != "" {
		p.secret[m["DB_PASSWORD"]] = true
	}
	return m
}

func envDSN(m map[string]string) string {
	return fmt.Sprintf("host=%s port=%s dbname=%s user=%s password=%s sslmode=disable",
		m["DB_HOST"], m["DB_PORT"], m["DB_NAME"], m["DB_USER"], m["DB_PASSWORD"])
}

// SIGTERM to the binary in file mode revokes the lease (the user is gone
// from pg_roles), removes the file and exits 0; for `credbroker agent`
// and the slim credbroker-agent alike.
func TestSIGTERMRevokesAndRemovesFile(t *testing.T) {
	credbroker, _ := binaries(t)
	for _, tc := range []struct {
		name string
		argv []string
	}{
		{"credbroker agent", []string{credbroker, "agent"}},
		{"credbroker-agent", []string{filepath.Join(filepath.Dir(credbroker), "credbroker-agent")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			path := filepath.Join(e.dir, "db.env")
			p := startBinary(t, tc.argv[0], append(tc.argv[1:], "-config", e.writeConfig(fmt.Sprintf(`credentials:
  - role: pg-orders
    ttl: 6s
    file: {path: %s, template: "{{ dotenv . }}"}
`, path)))...)
			var m map[string]string
			brokertest.WaitFor(t, 15*time.Second, "the credential file", func() bool { m = p.readEnvFile(path); return m != nil })
			if err := login(context.Background(), envDSN(m)); err != nil {
				t.Fatalf("login with the file's credential: %v", err)
			}
			if !e.userExists(m["DB_USER"]) {
				t.Fatal("the user is not in pg_roles")
			}
			if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if code := p.wait(15 * time.Second); code != 0 {
				t.Fatalf("exit status %d after SIGTERM, want 0; output:\n%s", code, p.out)
			}
			if e.userExists(m["DB_USER"]) || e.users() != 0 {
				t.Error("a user of the agent is still in pg_roles after SIGTERM")
			}
			if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("the file is still there: %v", err)
			}
			p.noSecrets()
		})
	}
}

// -once writes the file and exits 0 without revoking: the user still
// logs in after the agent is gone (the lease ends at its ttl).
func TestOnceWritesAndExits(t *testing.T) {
	e := newEnv(t)
	path := filepath.Join(e.dir, "db.env")
	lease := filepath.Join(e.dir, "lease")
	p := startAgent(t, "-once", "-config", e.writeConfig(fmt.Sprintf(`credentials:
  - role: pg-orders
    ttl: 6s
    file: {path: %s, template: "{{ dotenv . }}"}
  - role: pg-orders
    ttl: 6s
    file: {path: %s, template: "{{ .LeaseID }}"}
`, path, lease)))
	if code := p.wait(15 * time.Second); code != 0 {
		t.Fatalf("-once exit status %d, want 0; output:\n%s", code, p.out)
	}
	m := p.readEnvFile(path)
	if m == nil {
		t.Fatal("no file after -once")
	}
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("file mode: %v %v, want 0600", st, err)
	}
	if err := login(context.Background(), envDSN(m)); err != nil {
		t.Fatalf("login after -once exited: %v (the lease must outlive the agent)", err)
	}
	if e.users() != 2 {
		t.Errorf("%d users, want the 2 -once issued, not revoked", e.users())
	}
	p.noSecrets()
	// Clean up both leases (the first one through its user, by listing).
	id, err := os.ReadFile(lease)
	if err != nil {
		t.Fatal(err)
	}
	c := e.client()
	if err := c.Revoke(context.Background(), string(id)); err != nil {
		t.Fatal(err)
	}
	brokertest.WaitFor(t, 15*time.Second, "the first lease's expiry (6s)", func() bool { return e.users() == 0 })
}

func markerLines(t *testing.T, path string) []string {
	b, _ := os.ReadFile(path)
	return strings.FieldsFunc(string(b), func(r rune) bool { return r == '\n' })
}

// logins returns the users the app logged in as, failing on a failed login.
func logins(t *testing.T, path string) []string {
	t.Helper()
	var users []string
	for _, l := range markerLines(t, path) {
		switch {
		case strings.HasPrefix(l, "login "):
			users = append(users, strings.TrimPrefix(l, "login "))
		case strings.HasPrefix(l, "failed "), l == "bad file":
			t.Fatalf("the app could not log in: %q", l)
		}
	}
	return users
}

const envTemplates = `    env:
      DB_HOST: "{{ .Host }}"
      DB_PORT: "{{ .Port }}"
      DB_NAME: "{{ .DBName }}"
      DB_USER: "{{ .Username }}"
      DB_PASSWORD: "{{ .Password }}"
`

// Exec mode: the child logs in with the credential in its environment; a
// rotation restarts it with the new one; SIGTERM is forwarded to it, and
// once it has exited the leases are revoked and the agent exits 0.
func TestExecRestartsChildOnRotation(t *testing.T) {
	e := newEnv(t)
	_, app := binaries(t)
	path, mark := filepath.Join(e.dir, "db.env"), filepath.Join(e.dir, "marker")
	p := startAgent(t, "-config", e.writeConfig(fmt.Sprintf(`credentials:
  - role: pg-orders
    ttl: 6s
    file: {path: %s, template: "{{ dotenv . }}"}
%sexec:
  command: [%s, -marker, %s, -wait]
  stop_timeout: 5s
`, path, envTemplates, app, mark)))
	brokertest.WaitFor(t, 20*time.Second, "two logins of the app with two users", func() bool {
		p.readEnvFile(path)
		u := logins(t, mark)
		return len(u) >= 2 && u[0] != u[len(u)-1]
	})
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if code := p.wait(15 * time.Second); code != 0 {
		t.Fatalf("exit status %d, want the child's 0; output:\n%s", code, p.out)
	}
	lines := markerLines(t, mark)
	if lines[len(lines)-1] != "sigterm" {
		t.Errorf("the child did not get the forwarded SIGTERM: %q", lines)
	}
	if n := e.users(); n != 0 {
		t.Errorf("%d users left after the agent exited", n)
	}
	t.Logf("app: %q", lines)
	p.noSecrets()
}

// on_rotate: signal: the file is re-rendered, then the child gets SIGHUP
// and logs in with the file's new credential.
func TestExecSignalsChildOnRotation(t *testing.T) {
	e := newEnv(t)
	_, app := binaries(t)
	path, mark := filepath.Join(e.dir, "db.env"), filepath.Join(e.dir, "marker")
	p := startAgent(t, "-config", e.writeConfig(fmt.Sprintf(`credentials:
  - role: pg-orders
    ttl: 6s
    file: {path: %s, template: "{{ dotenv . }}"}
%sexec:
  command: [%s, -marker, %s, -wait, -file, %s]
  on_rotate: signal
  rotate_signal: SIGHUP
`, path, envTemplates, app, mark, path)))
	brokertest.WaitFor(t, 20*time.Second, "a login after SIGHUP with a new user", func() bool {
		p.readEnvFile(path)
		u := logins(t, mark)
		return len(u) >= 2 && u[0] != u[len(u)-1]
	})
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	// pglogin dies of SIGINT (it handles only TERM and HUP): 128+2, as a shell says.
	if code := p.wait(15 * time.Second); code != 130 {
		t.Fatalf("exit status %d, want 130 (the child killed by the forwarded SIGINT); output:\n%s", code, p.out)
	}
	if n := e.users(); n != 0 {
		t.Errorf("%d users left after the agent exited", n)
	}
	t.Logf("app: %q", markerLines(t, mark))
	p.noSecrets()
}

// The child's exit status is the agent's, and its leases are revoked when
// the child exits by itself.
func TestExecExitStatus(t *testing.T) {
	e := newEnv(t)
	_, app := binaries(t)
	path, mark := filepath.Join(e.dir, "db.env"), filepath.Join(e.dir, "marker")
	p := startAgent(t, "-config", e.writeConfig(fmt.Sprintf(`credentials:
  - role: pg-orders
    ttl: 6s
    file: {path: %s, template: "{{ dotenv . }}"}
%sexec:
  command: [%s, -marker, %s, -exit, "3"]
`, path, envTemplates, app, mark)))
	code := p.wait(20 * time.Second)
	if code != 3 {
		t.Fatalf("exit status %d, want the child's 3; output:\n%s", code, p.out)
	}
	if u := logins(t, mark); len(u) != 1 {
		t.Fatalf("the child logged in %d times, want 1", len(u))
	}
	if n := e.users(); n != 0 {
		t.Errorf("%d users left after the child exited", n)
	}
	if !strings.Contains(p.out.String(), "the command exited") {
		t.Errorf("the agent does not say the command exited:\n%s", p.out)
	}
}
