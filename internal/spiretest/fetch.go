package spiretest

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// FetchX509 runs `spire-agent api fetch x509 -write` as runAsUser (with
// runuser, so the test must run as root), retrying while the agent has no
// identity for that user, which lasts a moment after CreateEntry. It leaves
// svid.0.pem, svid.0.key and bundle.0.pem (and more for more entries) in dir,
// created if needed, owned by runAsUser; it returns the first SVID.
//
// The CLI writes into a directory of the SPIRE instance that runAsUser owns,
// and the files are then moved to dir, so dir may be anywhere (t.TempDir()
// is 0700 root).
func (s *SPIRE) FetchX509(t testing.TB, runAsUser, dir string) *x509svid.SVID {
	t.Helper()
	u, err := user.Lookup(runAsUser)
	if err != nil {
		t.Fatalf("spiretest: fetch x509: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	bin, err := s.agentBinForAll()
	if err != nil {
		t.Fatalf("spiretest: fetch x509: %v", err)
	}
	stage, err := os.MkdirTemp(s.dir, "fetch-")
	if err != nil {
		t.Fatalf("spiretest: fetch x509: %v", err)
	}
	defer os.RemoveAll(stage)
	if err := os.Chown(stage, uid, gid); err != nil {
		t.Fatalf("spiretest: fetch x509: give %s to %s: %v", stage, runAsUser, err)
	}

	deadline := time.Now().Add(propagateTimeout)
	for {
		cmd := exec.Command("runuser", "-u", runAsUser, "--",
			bin, "api", "fetch", "x509", "-socketPath", s.agentSocket, "-write", stage, "-timeout", "5s")
		out, err := cmd.CombinedOutput()
		if err == nil {
			break
		}
		// Retry only what propagation explains: no identity for the caller
		// yet, or the agent briefly unreachable.
		retry := strings.Contains(string(out), "PermissionDenied") || strings.Contains(string(out), "Unavailable")
		if !retry || time.Now().After(deadline) {
			t.Fatalf("spiretest: fetch x509 as %s: %v\n%s", runAsUser, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}

	if err := moveFiles(stage, dir, uid, gid); err != nil {
		t.Fatalf("spiretest: fetch x509: %v", err)
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.0.pem"), filepath.Join(dir, "svid.0.key"))
	if err != nil {
		t.Fatalf("spiretest: fetch x509 as %s: %v", runAsUser, err)
	}
	return svid
}

// moveFiles moves the files of src into dst (created 0700 if missing) and
// gives them and dst to uid:gid.
func moveFiles(src, dst string, uid, gid int) error {
	if err := os.MkdirAll(dst, 0o700); err != nil {
		return err
	}
	if err := os.Chown(dst, uid, gid); err != nil {
		return err
	}
	files, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, f := range files {
		from, to := filepath.Join(src, f.Name()), filepath.Join(dst, f.Name())
		if err := os.Rename(from, to); err != nil { // across file systems: copy
			info, err := f.Info()
			if err != nil {
				return err
			}
			b, err := os.ReadFile(from)
			if err != nil {
				return err
			}
			if err := os.WriteFile(to, b, info.Mode().Perm()); err != nil {
				return err
			}
		}
		if err := os.Chown(to, uid, gid); err != nil {
			return err
		}
	}
	return nil
}

// agentBinForAll returns a spire-agent that any user can run. The cached
// binaries usually sit under root's 0700 home, which runuser's target cannot
// enter; a hard link (or copy) in the 0755 test directory can be.
func (s *SPIRE) agentBinForAll() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.agentBin != "" {
		return s.agentBin, nil
	}
	dst := filepath.Join(s.dir, "spire-agent")
	src := filepath.Join(s.binDir, "spire-agent")
	if err := os.Link(src, dst); err != nil {
		if err := copyFile(src, dst); err != nil {
			return "", err
		}
	}
	if err := os.Chmod(dst, 0o755); err != nil {
		return "", fmt.Errorf("spiretest: %w", err)
	}
	s.agentBin = dst
	return dst, nil
}

func copyFile(src, dst string) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return fmt.Errorf("spiretest: %w", err)
	}
	if err := os.WriteFile(dst, b, 0o755); err != nil {
		return fmt.Errorf("spiretest: %w", err)
	}
	return nil
}
