package client

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PgxPoolConfig returns a pgxpool configuration for the watcher's
// PostgreSQL credential (its DSN), set up by ConfigurePgxPool. Tune it,
// then pgxpool.NewWithConfig.
func (w *Watcher) PgxPoolConfig() (*pgxpool.Config, error) {
	cur, err := w.Current()
	if err != nil {
		return nil, err
	}
	cfg, err := pgxpool.ParseConfig(cur.DSN)
	if err != nil {
		// pgx redacts the password in its parse errors.
		return nil, fmt.Errorf("credbroker client: pgx config: %w", err)
	}
	w.ConfigurePgxPool(cfg)
	return cfg, nil
}

// ConfigurePgxPool makes a pgx pool follow the watcher, keeping hooks cfg
// already has (they run first):
//
//   - BeforeConnect: every new connection logs in with the current
//     credential;
//   - PrepareConn and AfterRelease: a connection of a replaced credential
//     is closed instead of being handed out or put back, so the pool moves
//     to the new user during the overlap, while the old one still works.
//
// A query loop on such a pool sees no failure across rotations as long as
// no single query outlasts the overlap.
func (w *Watcher) ConfigurePgxPool(cfg *pgxpool.Config) {
	before := cfg.BeforeConnect
	cfg.BeforeConnect = func(ctx context.Context, cc *pgx.ConnConfig) error {
		if before != nil {
			if err := before(ctx, cc); err != nil {
				return err
			}
		}
		cur, err := w.Current()
		if err != nil {
			return err
		}
		cc.User, cc.Password = cur.Username, cur.Password
		return nil
	}
	prepare := cfg.PrepareConn
	if prepare == nil && cfg.BeforeAcquire != nil {
		acquire := cfg.BeforeAcquire
		prepare = func(ctx context.Context, c *pgx.Conn) (bool, error) { return acquire(ctx, c), nil }
	}
	cfg.PrepareConn = func(ctx context.Context, c *pgx.Conn) (bool, error) {
		if !w.isCurrent(c.Config().User) {
			return false, nil // closed; the pool takes or makes another
		}
		if prepare != nil {
			return prepare(ctx, c)
		}
		return true, nil
	}
	release := cfg.AfterRelease
	cfg.AfterRelease = func(c *pgx.Conn) bool {
		if !w.isCurrent(c.Config().User) {
			return false
		}
		if release != nil {
			return release(c)
		}
		return true
	}
}
