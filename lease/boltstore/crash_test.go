//go:build failpoints

package boltstore

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/internal/failpoint"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/leasetest"
)

// Environment of the child process TestCrashChild.
const (
	crashDirEnv = "LEASE_CRASH_DIR"
	crashIDEnv  = "LEASE_CRASH_ID"
)

// fileBackend records each Drop as a line in a file, so the parent can see
// what the killed child did.
type fileBackend struct{ path string }

func (b fileBackend) Drop(_ context.Context, l lease.Lease) error {
	f, err := os.OpenFile(b.path, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.WriteString(l.ID + "\n"); err != nil {
		return err
	}
	return f.Sync()
}

func (fileBackend) Extend(context.Context, lease.Lease) error { return nil }

// TestCrashChild is the process TestCrashRecovery kills; it does nothing
// when run on its own.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashDirEnv)
	if dir == "" {
		t.Skip("child of TestCrashRecovery")
	}
	store, err := Open(filepath.Join(dir, "leases.db"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := lease.NewManager(lease.Config{Store: store, Backend: fileBackend{filepath.Join(dir, "drops")}})
	if err != nil {
		t.Fatal(err)
	}
	l := makeLease(t, time.Now(), time.Hour, time.Hour)
	l.ID = os.Getenv(crashIDEnv)
	if _, err := m.Issue(bg, l, func(ctx context.Context, intent func(context.Context) error) error {
		return intent(ctx)
	}); err != nil {
		t.Fatal(err)
	}
	_, err = m.Revoke(bg, l.ID) // killed inside
	t.Fatalf("Revoke returned (%v): the failpoint did not fire", err)
}

// TestCrashRecovery kills a process at each failpoint of the revocation
// path, then restarts on its store: the lease must be REVOKING, and Load
// plus one expiry wake-up must finish the revocation.
func TestCrashRecovery(t *testing.T) {
	tests := []struct {
		point        string
		dropsAtCrash int
	}{
		{point: lease.FailpointAfterRevoking, dropsAtCrash: 0},
		{point: lease.FailpointAfterDrop, dropsAtCrash: 1},
	}
	for _, tt := range tests {
		t.Run(tt.point, func(t *testing.T) {
			dir := t.TempDir()
			id, err := lease.NewID()
			if err != nil {
				t.Fatal(err)
			}
			cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$")
			cmd.Env = append(os.Environ(),
				crashDirEnv+"="+dir, crashIDEnv+"="+id,
				failpoint.EnvVar+"="+tt.point, "GORACE=atexit_sleep_ms=0")
			out, err := cmd.CombinedOutput()
			var ee *exec.ExitError
			if !errors.As(err, &ee) {
				t.Fatalf("child: %v\n%s", err, out)
			}
			if ws := ee.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child exited with %v, want SIGKILL\n%s", ws, out)
			}
			drops, _ := os.ReadFile(filepath.Join(dir, "drops"))
			if got := strings.Count(string(drops), "\n"); got != tt.dropsAtCrash {
				t.Fatalf("drops before the crash = %d, want %d", got, tt.dropsAtCrash)
			}

			store, err := Open(filepath.Join(dir, "leases.db"))
			if err != nil {
				t.Fatalf("reopen after crash: %v", err)
			}
			defer store.Close()
			backend := leasetest.NewBackend()
			m, err := lease.NewManager(lease.Config{Store: store, Backend: backend})
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Load(bg); err != nil {
				t.Fatal(err)
			}
			got, err := m.Get(bg, id)
			if err != nil || got.State != lease.StateRevoking {
				t.Fatalf("after the crash: %+v, %v; want REVOKING", got, err)
			}
			if got.Expired {
				t.Error("explicit revocation recorded as expiry")
			}
			if n := m.ProcessDue(bg); n != 1 {
				t.Fatalf("ProcessDue started %d, want 1", n)
			}
			// The revocation runs in a goroutine of the Manager; the lease
			// leaves the Manager once its record is deleted.
			deadline := time.Now().Add(10 * time.Second)
			for {
				if _, err := m.Get(bg, id); errors.Is(err, lease.ErrNotFound) {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("lease not gone after recovery")
				}
				time.Sleep(5 * time.Millisecond)
			}
			if n := len(scanAll(t, store)); n != 0 {
				t.Errorf("%d records left", n)
			}
			if backend.Drops(id) != 1 {
				t.Errorf("recovery drops = %d, want 1", backend.Drops(id))
			}
		})
	}
}
