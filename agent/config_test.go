package agent_test

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/agent"
	"github.com/credbroker/credbroker/client"
)

// The config of deploy/kubernetes/app.yaml (on main), as written there.
const k8sConfig = `broker:
  addr: credbroker.credbroker.svc.cluster.local:8443
  server_id: spiffe://example.org/credbroker
workload_api:
  socket: unix:///spiffe-workload-api/spire-agent.sock
credentials:
  - role: orders-readonly
    ttl: 1h
    file:
      path: /run/creds/db.env
      mode: 0600
      template: |
        PGHOST={{ .Host }}
        PGPORT={{ .Port }}
        PGDATABASE={{ .DBName }}
        PGUSER={{ .Username }}
        PGPASSWORD={{ .Password }}
        DATABASE_URL={{ .DSN }}
health:
  listen: 0.0.0.0:8081
`

const head = `broker: {addr: "127.0.0.1:8443", server_id: "spiffe://example.org/credbroker"}
`

func TestParseConfig(t *testing.T) {
	tmpl := filepath.Join(t.TempDir(), "t.tmpl")
	if err := os.WriteFile(tmpl, []byte("{{ .Username }}"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, yaml string
		err        string // substring; "" for valid
		check      func(*testing.T, *agent.Config)
	}{
		{name: "the kubernetes sidecar's config", yaml: k8sConfig, check: func(t *testing.T, c *agent.Config) {
			f := c.Credentials[0].File
			if f.Mode != 0o600 || c.Credentials[0].TTL.Duration != time.Hour || c.WorkloadAPI.Socket == "" {
				t.Errorf("mode %o ttl %s", f.Mode, c.Credentials[0].TTL)
			}
		}},
		{name: "defaults", yaml: head + `credentials: [{role: r, file: {path: /x, template: "{{ json . }}"}, env: {DB_USER: "{{ .Username }}"}}]
exec: {command: [app]}`, check: func(t *testing.T, c *agent.Config) {
			if c.Credentials[0].File.Mode != 0o600 || c.Exec.OnRotate != agent.RotateRestart ||
				c.Exec.RotateSignal.Signal != syscall.SIGHUP || c.Exec.StopSignal.Signal != syscall.SIGTERM ||
				c.Exec.StopTimeout.Duration != 10*time.Second || c.WorkloadAPI != nil || c.SVID != nil {
				t.Errorf("defaults: %+v %+v", c.Credentials[0].File, c.Exec)
			}
		}},
		{name: "mode as a string, signal without SIG", yaml: head + `credentials: [{role: r, file: {path: /x, template: x, mode: "0640"}, env: {A: x}}]
exec: {command: [app], on_rotate: signal, rotate_signal: usr1}`, check: func(t *testing.T, c *agent.Config) {
			if c.Credentials[0].File.Mode != 0o640 || c.Exec.RotateSignal.Signal != syscall.SIGUSR1 {
				t.Errorf("mode %o signal %v", c.Credentials[0].File.Mode, c.Exec.RotateSignal)
			}
		}},
		{name: "template file", yaml: head + `credentials: [{role: r, file: {path: /x, template_file: ` + tmpl + `}}]`},
		{name: "unknown key", yaml: head + `credentials: [{role: r, file: {path: /x, templat: x}}]`, err: "field templat not found"},
		{name: "no broker", yaml: `credentials: [{role: r, file: {path: /x, template: x}}]`, err: "broker.addr is required"},
		{name: "bad server id", yaml: `broker: {addr: "h:1", server_id: "credbroker"}`, err: "broker.server_id"},
		{name: "no credentials", yaml: head, err: "no credentials"},
		{name: "no role", yaml: head + `credentials: [{file: {path: /x, template: x}}]`, err: "credentials[0]: role is required"},
		{name: "no output", yaml: head + `credentials: [{role: r}]`, err: "needs a file, env, or both"},
		{name: "env without exec", yaml: head + `credentials: [{role: r, env: {A: x}}]`, err: "there is no exec"},
		{name: "bad env name", yaml: head + `credentials: [{role: r, env: {"A-B": x}}]
exec: {command: [app]}`, err: `env "A-B" is not a variable name`},
		{name: "env twice", yaml: head + `credentials: [{role: r, env: {A: x}}, {role: s, env: {A: y}}]
exec: {command: [app]}`, err: "env A is set by role r too"},
		{name: "both svid sources", yaml: head + `workload_api: {socket: unix:///s}
svid: {cert_file: a, key_file: b, bundle_file: c}
credentials: [{role: r, file: {path: /x, template: x}}]`, err: "not both"},
		{name: "svid files incomplete", yaml: head + `svid: {cert_file: a}
credentials: [{role: r, file: {path: /x, template: x}}]`, err: "svid needs cert_file, key_file and bundle_file"},
		{name: "two templates", yaml: head + `credentials: [{role: r, file: {path: /x, template: x, template_file: y}}]`, err: "one of template and template_file"},
		{name: "no template", yaml: head + `credentials: [{role: r, file: {path: /x}}]`, err: "one of template and template_file"},
		{name: "misspelt field", yaml: head + `credentials: [{role: r, file: {path: /x, template: "{{ .Pasword }}"}}]`, err: "can't evaluate field Pasword"},
		{name: "template syntax", yaml: head + `credentials: [{role: r, file: {path: /x, template: "{{ .Password "}}]`, err: "file template"},
		{name: "same path twice", yaml: head + `credentials: [{role: r, file: {path: /x, template: x}}, {role: s, file: {path: /x, template: x}}]`, err: "written by another credential"},
		{name: "bad mode", yaml: head + `credentials: [{role: r, file: {path: /x, template: x, mode: 0999}}]`, err: "want permission bits in octal"},
		{name: "bad ttl", yaml: head + `credentials: [{role: r, ttl: 1 hour, file: {path: /x, template: x}}]`, err: "is not a duration"},
		{name: "no command", yaml: head + `credentials: [{role: r, env: {A: x}}]
exec: {command: []}`, err: "exec.command is required"},
		{name: "bad on_rotate", yaml: head + `credentials: [{role: r, env: {A: x}}]
exec: {command: [a], on_rotate: reload}`, err: "want restart or signal"},
		{name: "bad signal", yaml: head + `credentials: [{role: r, env: {A: x}}]
exec: {command: [a], rotate_signal: SIGFOO}`, err: `unknown signal "SIGFOO"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := agent.ParseConfig([]byte(tc.yaml))
			if tc.err == "" {
				if err != nil {
					t.Fatalf("ParseConfig: %v", err)
				}
				if tc.check != nil {
					tc.check(t, c)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
			if !strings.HasPrefix(err.Error(), "agent config: ") {
				t.Errorf("error %q is not prefixed", err)
			}
		})
	}
}

// A config error never quotes what a template renders.
func TestParseConfigErrorHasNoSample(t *testing.T) {
	_, err := agent.ParseConfig([]byte(head + `credentials: [{role: r, file: {path: /x, template: "{{ .Password.X }}"}}]`))
	if err == nil || strings.Contains(err.Error(), "password") {
		t.Fatalf("error %v", err)
	}
}

func TestTemplateHelpers(t *testing.T) {
	cr := sampleCredential()
	for _, tc := range []struct{ name, tmpl, want string }{
		{"dotenv quotes what a shell would split", "{{ dotenv . }}", "DB_HOST=db.internal\nDB_PORT=5432\nDB_NAME=shop\nDB_USER=v_orders_1\nDB_PASSWORD='p@ss '\\''word$'\nDATABASE_URL='postgres://v_orders_1:p%40ss%20%27word%24@db.internal:5432/shop?sslmode=require'\n"},
		{"shellquote leaves a plain word", "{{ shellquote .Username }}", "v_orders_1"},
		{"libpq", "{{ libpq . }}", `host='db.internal' port=5432 dbname='shop' user='v_orders_1' password='p@ss \'word$'`},
		{"json of a field", "{{ json .Password }}", `"p@ss 'word$"`},
		{"fields", "{{ .LeaseID }} {{ .Role }} {{ .Database }} {{ .ExpireTime.Unix }}", "lease-1 orders main 1700000000"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := agent.Render(tc.tmpl, cr)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
	t.Run("json of the credential", func(t *testing.T) {
		got, err := agent.Render("{{ json . }}", cr)
		if err != nil {
			t.Fatal(err)
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(got), &m); err != nil {
			t.Fatal(err)
		}
		for k, want := range map[string]any{"username": "v_orders_1", "password": "p@ss 'word$", "port": 5432.0,
			"db_name": "shop", "lease_id": "lease-1", "expire_time": "2023-11-14T22:13:20Z"} {
			if m[k] != want {
				t.Errorf("%s: %v, want %v", k, m[k], want)
			}
		}
	})
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "f")
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	for i, mode := range []os.FileMode{0o644, 0o600} {
		if err := agent.WriteFileAtomic(p, []byte{byte('a' + i)}, mode); err != nil {
			t.Fatal(err)
		}
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("mode %v, want %v (whatever the umask)", st.Mode().Perm(), mode)
		}
	}
	if b, _ := os.ReadFile(p); string(b) != "b" {
		t.Errorf("content %q", b)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d files in the directory, want 1 (no temporary file left)", len(ents))
	}
	if err := agent.WriteFileAtomic(filepath.Join(dir, "missing", "f"), []byte("x"), 0o600); err == nil {
		t.Error("no error writing into a missing directory")
	}
}

func sampleCredential() *client.Credential {
	return &client.Credential{
		LeaseID: "lease-1", Role: "orders", Username: "v_orders_1", Password: "p@ss 'word$",
		Database: "main", DBName: "shop", Host: "db.internal", Port: 5432,
		DSN:        "postgres://v_orders_1:p%40ss%20%27word%24@db.internal:5432/shop?sslmode=require",
		ExpireTime: time.Unix(1700000000, 0).UTC(), MaxExpireTime: time.Unix(1700000000, 0).UTC(),
	}
}

// -once only writes files: with exec it refuses before connecting.
func TestOnceRefusesExec(t *testing.T) {
	cfg, err := agent.ParseConfig([]byte(head + `credentials: [{role: r, file: {path: /x, template: x}, env: {A: x}}]
exec: {command: [app]}`))
	if err != nil {
		t.Fatal(err)
	}
	err = agent.New(cfg, agent.Options{Once: true}).Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "-once writes files only") {
		t.Fatalf("Run -once with exec: %v", err)
	}
}

// The README's agent.yaml parses as written.
func TestREADMEConfig(t *testing.T) {
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, sec, ok := strings.Cut(string(b), "\n## credbroker agent\n")
	if !ok {
		t.Fatal("no section credbroker agent in README.md")
	}
	_, block, ok := strings.Cut(sec, "```yaml\n")
	block, _, ok2 := strings.Cut(block, "```")
	if !ok || !ok2 {
		t.Fatal("no yaml block in the README's agent section")
	}
	c, err := agent.ParseConfig([]byte(block))
	if err != nil {
		t.Fatalf("the README's agent.yaml: %v", err)
	}
	if c.Exec == nil || c.Credentials[0].File == nil || c.SVID == nil {
		t.Error("the README's agent.yaml lost its exec, file or svid")
	}
}
