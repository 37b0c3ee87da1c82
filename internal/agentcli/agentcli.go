// Package agentcli is the command line of the agent, shared by
// `credbroker agent` and the slim `credbroker-agent` binary (the same
// agent without the broker linked in: a smaller footprint, docs/agent.md).
package agentcli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/credbroker/credbroker/agent"
)

// Main runs the agent with args (the flags after `agent`). It handles the
// process's signals itself: a signal is forwarded to the exec child as it
// came, and SIGTERM or SIGINT stops the agent only after the child. An
// error with an ExitCode method carries the child's exit status.
func Main(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("credbroker agent", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "agent config file (YAML; docs/agent.md)")
	once := fs.Bool("once", false, "fetch each credential once, write the files and exit without revoking (init containers)")
	logFormat := fs.String("log-format", "text", "log format on stderr: text or json")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" || fs.NArg() != 0 {
		fs.Usage()
		return fmt.Errorf("agent: want -config FILE and no arguments")
	}
	cfg, err := agent.LoadConfig(*path)
	if err != nil {
		return err
	}
	var log *slog.Logger
	switch *logFormat {
	case "text":
		log = slog.New(slog.NewTextHandler(stderr, nil))
	case "json":
		log = slog.New(slog.NewJSONHandler(stderr, nil))
	default:
		return fmt.Errorf("agent: -log-format %q: want text or json", *logFormat)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	return agent.New(cfg, agent.Options{Once: *once, Signals: sigs, Logger: log}).Run(context.Background())
}
