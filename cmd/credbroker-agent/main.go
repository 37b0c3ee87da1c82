// Command credbroker-agent is `credbroker agent` on its own: the same
// flags and config (docs/agent.md), without the broker, its database
// drivers' engines, metrics and lease stores linked in, so that a sidecar
// maps less of its binary (about 17 MB of RSS idle instead of 22).
//
//	credbroker-agent -config FILE [-once]
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"

	"github.com/credbroker/credbroker/internal/agentcli"
)

func main() {
	err := agentcli.Main(os.Args[1:], os.Stderr)
	var coded interface{ ExitCode() int }
	switch {
	case err == nil:
	case errors.As(err, &coded):
		os.Exit(coded.ExitCode()) // the exec command's status
	case errors.Is(err, flag.ErrHelp):
		os.Exit(2)
	default:
		fmt.Fprintln(os.Stderr, "credbroker-agent:", err)
		os.Exit(2)
	}
}
