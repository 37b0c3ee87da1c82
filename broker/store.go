package broker

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/boltstore"
	"github.com/credbroker/credbroker/lease/pgstore"
)

// The lease store is a bbolt file (lease_store.path), held by one broker,
// or a PostgreSQL schema (lease_store.postgres) that several brokers
// (replicas) share, each running lease.Shared. Both are created only by
// `credbroker init-store` and refused by serve when missing; the PostgreSQL
// one is also versioned (`credbroker migrate`).

// openStore opens the lease store. A bbolt store checks every record here;
// a PostgreSQL one checks its schema version.
func (a *App) openStore(ctx context.Context, cfg *Config, opts AppOptions) error {
	var (
		store lease.Store
		err   error
	)
	where := storeName(cfg.LeaseStore)
	if p := cfg.LeaseStore.Postgres; p != nil {
		var storeOpts []pgstore.Option
		if a.metrics != nil {
			storeOpts = append(storeOpts, pgstore.WithCommitObserver(a.metrics.storeCommit))
		}
		store, err = openPostgresStore(ctx, *p, opts.CreateStore, storeOpts...)
	} else {
		var storeOpts []boltstore.Option
		if !opts.CreateStore {
			storeOpts = append(storeOpts, boltstore.WithMustExist())
		}
		if a.metrics != nil {
			storeOpts = append(storeOpts, boltstore.WithCommitObserver(a.metrics.storeCommit))
		}
		store, err = boltstore.Open(cfg.LeaseStore.Path, storeOpts...)
	}
	if errors.Is(err, lease.ErrStoreMissing) {
		return fmt.Errorf("lease store %s does not exist: for a new installation run `credbroker init-store --config FILE`; "+
			"otherwise restore it from a backup (starting empty would forget every live lease and strand its users)", where)
	}
	if err != nil {
		return fmt.Errorf("lease store: %w", err)
	}
	a.store = store
	if opts.WrapStore != nil {
		a.store = opts.WrapStore(store)
	}
	a.closers = append(a.closers, func() { _ = store.Close() })
	return nil
}

func openPostgresStore(ctx context.Context, p PostgresStoreConfig, create bool, opts ...pgstore.Option) (*pgstore.Store, error) {
	c, err := p.StoreConfig()
	if err != nil {
		return nil, err
	}
	if create {
		if err := pgstore.Init(ctx, c); err != nil {
			return nil, err
		}
	}
	return pgstore.Open(ctx, c, opts...)
}

// storeName says which lease store the config names, for messages.
func storeName(s LeaseStoreConfig) string {
	if p := s.Postgres; p != nil {
		return fmt.Sprintf("in schema %s of PostgreSQL database %s on %s:%d", p.Schema, p.Database, p.Host, p.Port)
	}
	return s.Path
}

// InitStore creates the lease store of a new installation where cfg says
// (`credbroker init-store`) and returns what it did, for the operator. A
// bbolt file that exists is refused, never replaced. A PostgreSQL schema
// already holding a store at this broker's version is left as it is; an
// older one is refused (run `credbroker migrate`).
func InitStore(ctx context.Context, cfg *Config) (string, error) {
	where := storeName(cfg.LeaseStore)
	if p := cfg.LeaseStore.Postgres; p != nil {
		c, err := p.StoreConfig()
		if err != nil {
			return "", err
		}
		if err := pgstore.Init(ctx, c); err != nil {
			return "", fmt.Errorf("init-store: %w", err)
		}
		return fmt.Sprintf("lease store %s is ready at schema version %d", where, pgstore.SchemaVersion()), nil
	}
	if _, err := os.Stat(cfg.LeaseStore.Path); err == nil {
		return "", fmt.Errorf("init-store: %s already exists; refusing to replace a lease store", cfg.LeaseStore.Path)
	}
	s, err := boltstore.Open(cfg.LeaseStore.Path)
	if err != nil {
		return "", err
	}
	if err := s.Close(); err != nil {
		return "", err
	}
	return "created empty lease store " + where, nil
}

// MigrateStore brings the lease store to this broker's schema version
// (`credbroker migrate`) and returns what it did. serve never migrates by
// itself. A bbolt store has nothing to migrate.
func MigrateStore(ctx context.Context, cfg *Config) (string, error) {
	where := storeName(cfg.LeaseStore)
	p := cfg.LeaseStore.Postgres
	if p == nil {
		return fmt.Sprintf("lease store %s: nothing to migrate (bbolt)", where), nil
	}
	c, err := p.StoreConfig()
	if err != nil {
		return "", err
	}
	if err := pgstore.Migrate(ctx, c); err != nil {
		if errors.Is(err, lease.ErrStoreMissing) {
			return "", fmt.Errorf("migrate: lease store %s does not exist: for a new installation run `credbroker init-store --config FILE`", where)
		}
		return "", fmt.Errorf("migrate: %w", err)
	}
	return fmt.Sprintf("lease store %s is at schema version %d", where, pgstore.SchemaVersion()), nil
}
