package failpoint_test

import (
	"os"
	"os/exec"
	"syscall"
	"testing"

	"github.com/credbroker/credbroker/internal/failpoint"
)

// helperEnv makes the test binary act as the child process of
// TestHitKillsProcess.
const helperEnv = "FAILPOINT_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) == "1" {
		failpoint.Hit("not-armed")
		os.Stdout.WriteString("before\n")
		failpoint.Hit("armed-point")
		os.Stdout.WriteString("after\n")
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func TestHit(t *testing.T) {
	tests := []struct {
		name       string
		armed      string
		wantKilled bool
		wantOut    string
	}{
		{name: "unarmed point passes", armed: "other", wantOut: "before\nafter\n"},
		{name: "nothing armed", armed: "", wantOut: "before\nafter\n"},
		{name: "armed point kills", armed: "x, armed-point", wantKilled: failpoint.Enabled, wantOut: "before\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			// GORACE: skip the race runtime's one-second sleep at exit.
			cmd.Env = append(os.Environ(), helperEnv+"=1", failpoint.EnvVar+"="+tt.armed, "GORACE=atexit_sleep_ms=0")
			out, err := cmd.Output()
			want := tt.wantOut
			if !tt.wantKilled {
				want = "before\nafter\n"
			}
			if string(out) != want {
				t.Errorf("output = %q, want %q", out, want)
			}
			if !tt.wantKilled {
				if err != nil {
					t.Fatalf("child failed: %v", err)
				}
				return
			}
			ee, ok := err.(*exec.ExitError)
			if !ok {
				t.Fatalf("child err = %v, want killed by SIGKILL", err)
			}
			ws := ee.Sys().(syscall.WaitStatus)
			if !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
				t.Errorf("child status = %v, want killed by SIGKILL", ws)
			}
		})
	}
}
