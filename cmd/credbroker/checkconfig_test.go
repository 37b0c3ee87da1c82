package main_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckConfigRefusesPrivilegedTemplate: the check-config command (the
// built binary) refuses a role whose template asks for SUPERUSER, saying
// which role, statement and clause, and accepts it with allow_privileged,
// with a warning.
func TestCheckConfigRefusesPrivilegedTemplate(t *testing.T) {
	const cfg = `
trust_domain: example.org
svid: {cert_file: s.pem, key_file: k.pem, bundle_file: b.pem}
lease_store: {path: /tmp/leases.db}
databases:
  orders:
    plugin: postgres
    host: 127.0.0.1
    database: orders
    port: 5432
    username: credbroker
    password_env: PW
roles:
  orders-admin:
    database: orders
    default_ttl: 1h
    max_ttl: 24h
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE orders_reader;
      - ALTER ROLE {{name}} SUPERUSER;
`
	dir := t.TempDir()
	write := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	bad := write("bad.yaml", cfg)
	out, err := exec.Command(binary, "check-config", "--config", bad).CombinedOutput()
	if err == nil {
		t.Fatalf("check-config accepted a SUPERUSER template:\n%s", out)
	}
	want := `config: roles.orders-admin.creation_statements: role "orders-admin": creation statement 2 grants SUPERUSER; set allow_privileged: true on the role if you mean it`
	if !strings.Contains(string(out), want) {
		t.Fatalf("check-config said:\n%s\nwant %q", out, want)
	}

	allowed := write("allowed.yaml", strings.Replace(cfg, "    creation_statements:", "    allow_privileged: true\n    creation_statements:", 1))
	cmd := exec.Command(binary, "check-config", "--config", allowed)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	stdout, err := cmd.Output()
	if err != nil {
		t.Fatalf("check-config with allow_privileged: %v\n%s", err, stderr.String())
	}
	if !strings.Contains(string(stdout), "allowed.yaml: ok") {
		t.Errorf("stdout = %q", stdout)
	}
	if w := stderr.String(); !strings.Contains(w, `warning: config: roles.orders-admin: role "orders-admin": creation statement 2 grants SUPERUSER (allowed by allow_privileged)`) {
		t.Errorf("stderr = %q, want the warning", w)
	}
}
