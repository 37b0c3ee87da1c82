// Command credbroker is the dynamic database credential broker.
//
//	credbroker serve --config FILE       run the broker
//	credbroker init-store --config FILE   create the lease store of a new installation
//	credbroker migrate --config FILE      bring a PostgreSQL lease store to this version
//	credbroker check-config --config FILE validate a config and exit
//	                 [--dry-run]           ... and run every role's statements for a probe user
//	credbroker dev-certs --out DIR ...    mint a dev trust bundle and X.509-SVIDs
//	credbroker audit verify FILE...       check an audit log's hash chain
//	credbroker leases list|revoke ...     operator: list or revoke leases
//	credbroker workload deregister|register ID
//	credbroker orphans                    operator: users no lease backs
//	credbroker roles                      operator: the configured roles
//	credbroker agent -config FILE [-once] keep credentials fresh for an app (docs/agent.md)
//
// This file only wires: flags and config in, components built, Run joined
// under signal handling.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/credbroker/credbroker/internal/agentcli"
)

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		var coded interface{ ExitCode() int }
		if errors.As(err, &coded) {
			os.Exit(coded.ExitCode()) // agent: the exec command's status
		}
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "credbroker:", err)
		// A failed call of an operator command exits 1; usage errors, and
		// every error of the other commands, exit 2.
		var ce *callError
		if errors.As(err, &ce) {
			os.Exit(1)
		}
		os.Exit(2)
	}
}

const usage = `usage: credbroker <command> [flags]

commands:
  serve         run the broker (--config FILE)
  init-store    create the empty lease store of a new installation: the bbolt
                file, or the PostgreSQL schema (--config FILE)
  migrate       apply pending schema migrations to a PostgreSQL lease store;
                serve never migrates by itself (--config FILE)
  check-config  validate a config file and exit (--config FILE); with
                --dry-run, also run every role's statements against its
                database for a probe user, leaving nothing behind
  dev-certs     mint a dev CA bundle and X.509-SVIDs (see dev-certs -h)
  audit verify  check an audit log's hash chain (FILE... oldest first)
  agent         keep credentials fresh in files or a command's environment
                (-config FILE [-once]; docs/agent.md)

operator commands (AdminService over mTLS; -h on each for the flags):
  leases list       [-role R] [-spiffe-id ID] [-state S]
  leases revoke     -lease-id ID | [-prefix P] [-role R] [-spiffe-id ID]
  workload deregister ID
  workload register ID
  orphans           users marked by this broker that no lease backs
  roles             the configured roles
`

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	if args[0] == "agent" {
		return agentcli.Main(args[1:], stderr)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stderr)
	case "init-store":
		return initStore(ctx, args[1:], stdout, stderr)
	case "migrate":
		return migrate(ctx, args[1:], stdout, stderr)
	case "check-config":
		return checkConfig(ctx, args[1:], stdout, stderr)
	case "dev-certs":
		return devCerts(args[1:], stdout, stderr)
	case "audit":
		return auditCmd(args[1:], stdout, stderr)
	case "leases":
		return leasesCmd(ctx, args[1:], stdout, stderr)
	case "workload":
		return workloadCmd(ctx, args[1:], stdout, stderr)
	case "orphans":
		return orphansCmd(ctx, args[1:], stdout, stderr)
	case "roles":
		return rolesCmd(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}
