package main

import (
	"context"
	"flag"
	"fmt"
	"io"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/plugins/builtin"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path to the YAML config (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("serve: --config is required")
	}
	cfg, err := broker.LoadConfig(*path, builtin.Catalog())
	if err != nil {
		return err
	}
	log := broker.NewLogger(stderr, cfg.Log)
	app, err := broker.NewApp(ctx, cfg, broker.AppOptions{Logger: log})
	if err != nil {
		return err
	}
	return app.Run(ctx)
}

func checkConfig(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path to the YAML config (required)")
	dryRun := fs.Bool("dry-run", false, "also run every role's creation and revocation statements against its database for a probe user, leaving nothing behind")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("check-config: --config is required")
	}
	cfg, err := broker.LoadConfig(*path, builtin.Catalog())
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok\n", *path)
	if !*dryRun {
		return nil
	}
	failed := 0
	results := broker.DryRun(ctx, cfg)
	for _, r := range results {
		if r.Err != nil {
			failed++
			fmt.Fprintf(stdout, "roles.%s (database %s): FAILED: %v\n", r.Role, r.Database, r.Err)
			continue
		}
		fmt.Fprintf(stdout, "roles.%s (database %s): ok\n", r.Role, r.Database)
	}
	if failed > 0 {
		return fmt.Errorf("check-config: dry run: %d of %d roles failed", failed, len(results))
	}
	return nil
}

// initStore creates the lease store of a new installation where the config
// says (a bbolt file, refusing to touch an existing one, or a PostgreSQL
// schema). serve never creates a store by itself.
func initStore(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := loadFor("init-store", args, stderr)
	if err != nil {
		return err
	}
	msg, err := broker.InitStore(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, msg)
	return nil
}

// migrate brings a PostgreSQL lease store to this binary's schema version.
// serve never migrates by itself.
func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	cfg, err := loadFor("migrate", args, stderr)
	if err != nil {
		return err
	}
	msg, err := broker.MigrateStore(ctx, cfg)
	if err != nil {
		return err
	}
	fmt.Fprintln(stdout, msg)
	return nil
}

// loadFor parses the --config flag of command cmd and loads the config.
func loadFor(cmd string, args []string, stderr io.Writer) (*broker.Config, error) {
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path to the YAML config (required)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if *path == "" {
		return nil, fmt.Errorf("%s: --config is required", cmd)
	}
	return broker.LoadConfig(*path, builtin.Catalog())
}
