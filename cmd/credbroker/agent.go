package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"

	"github.com/credbroker/credbroker/agent"
)

// agentCmd runs `credbroker agent`. It handles its own signals (not the
// NotifyContext of run): a signal is forwarded to the exec child as it
// came, and SIGTERM or SIGINT stops the agent only after the child.
func agentCmd(args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("agent", flag.ContinueOnError)
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
	// A sidecar's footprint: collect early rather than grow (docs/agent.md).
	// GOGC and GOMEMLIMIT in the environment still win.
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(agentMemoryLimit)
	}
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT,
		syscall.SIGUSR1, syscall.SIGUSR2, syscall.SIGWINCH)
	defer signal.Stop(sigs)
	return agent.New(cfg, agent.Options{Once: *once, Signals: sigs, Logger: log}).Run(context.Background())
}

const agentMemoryLimit = 16 << 20
