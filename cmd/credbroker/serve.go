package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/credbroker/credbroker/broker"
	"github.com/credbroker/credbroker/lease/boltstore"
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

func checkConfig(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check-config", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path to the YAML config (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("check-config: --config is required")
	}
	if _, err := broker.LoadConfig(*path, builtin.Catalog()); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s: ok\n", *path)
	return nil
}

// initStore creates an empty lease store where the config says, refusing to
// touch an existing one. serve never creates a store by itself.
func initStore(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("init-store", flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "path to the YAML config (required)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *path == "" {
		return fmt.Errorf("init-store: --config is required")
	}
	cfg, err := broker.LoadConfig(*path, builtin.Catalog())
	if err != nil {
		return err
	}
	if _, err := os.Stat(cfg.LeaseStore.Path); err == nil {
		return fmt.Errorf("init-store: %s already exists; refusing to replace a lease store", cfg.LeaseStore.Path)
	}
	s, err := boltstore.Open(cfg.LeaseStore.Path)
	if err != nil {
		return err
	}
	if err := s.Close(); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "created empty lease store %s\n", cfg.LeaseStore.Path)
	return nil
}
