//go:build failpoints

package failpoint

import (
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Enabled reports whether this build honours failpoints.
const Enabled = true

var armed = sync.OnceValue(func() map[string]bool {
	set := make(map[string]bool)
	for _, name := range strings.Split(os.Getenv(EnvVar), ",") {
		if name = strings.TrimSpace(name); name != "" {
			set[name] = true
		}
	}
	return set
})

// Hit kills the process with SIGKILL if name is listed in
// CREDBROKER_FAILPOINT.
func Hit(name string) {
	if !armed()[name] {
		return
	}
	_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
	// SIGKILL cannot be caught; make sure nothing after the point runs
	// while it is being delivered.
	for {
		time.Sleep(time.Hour)
	}
}
