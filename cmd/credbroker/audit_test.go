package main_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/audit"
)

// TestAuditVerifyCommand runs the built binary's audit verify on a good
// log and on the same log with one record edited.
func TestAuditVerifyCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w, err := audit.Open(context.Background(), audit.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range []string{"cb_a", "cb_b", "cb_c"} {
		if err := w.Write(context.Background(), audit.Record{Event: audit.EventIssue, Role: "orders", Username: u, Result: audit.ResultOK}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	out, err := exec.Command(binary, "audit", "verify", path).CombinedOutput()
	if err != nil || !strings.HasPrefix(string(out), "intact: 3 records (seq 1-3) in 1 file, ") {
		t.Fatalf("verify a good log: %v\n%s", err, out)
	}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, bytes.Replace(b, []byte("cb_b"), []byte("cb_x"), 1), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(binary, "audit", "verify", path).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "audit.log:2 (seq 2): edited") {
		t.Fatalf("verify a tampered log: %v, want a failure naming line 2\n%s", err, out)
	}
	t.Logf("%s", out)
}
