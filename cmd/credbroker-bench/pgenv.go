package main

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Objects the bench creates once per run. The group-role template makes
// each user a member of benchGroup, which may read benchTable; the per-user
// template grants on benchGrantTable directly, so that table's ACL grows with
// every live user.
const (
	benchGroup      = "bench_readers"
	benchTable      = "bench_orders"
	benchGrantTable = "bench_grants"
	// floorGrantTable is the floor's copy of benchGrantTable, so that floor
	// and broker users, alive together during the issue scenario, do not
	// add up to PostgreSQL's ACL limit on one table.
	floorGrantTable = "bench_grants_floor"
	benchMarker     = "credbroker:default" // the plugin's marker for instance_id "default"
)

// templates are the two creation-template styles every scenario runs with.
var templates = []struct {
	Name  string
	Stmts []string
}{
	{"group", []string{
		"CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE " + benchGroup + ";",
	}},
	{"grant", []string{
		"CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};",
		"GRANT SELECT ON " + benchGrantTable + " TO {{name}};",
	}},
}

// floorStmts is the template as the floor sends it: the same, on the
// floor's own grant table.
func floorStmts(name string) []string {
	out := slices.Clone(templateStmts(name))
	for i, s := range out {
		out[i] = strings.ReplaceAll(s, " "+benchGrantTable+" ", " "+floorGrantTable+" ")
	}
	return out
}

func templateStmts(name string) []string {
	for _, t := range templates {
		if t.Name == name {
			return t.Stmts
		}
	}
	panic("unknown template " + name)
}

// pgEnv is the admin side of the benchmark database.
type pgEnv struct {
	dsn  string
	cfg  *pgxpool.Config
	pool *pgxpool.Pool // admin checks and cleanup
}

// openPGEnv connects; newPGEnv also creates the bench's objects.
func openPGEnv(ctx context.Context, dsn string) (*pgEnv, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("postgres dsn: %w", err)
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg.Copy())
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}
	return &pgEnv{dsn: dsn, cfg: cfg, pool: pool}, nil
}

func newPGEnv(ctx context.Context, dsn string) (*pgEnv, error) {
	e, err := openPGEnv(ctx, dsn)
	if err != nil {
		return nil, err
	}
	pool := e.pool
	for _, q := range []string{
		"DROP TABLE IF EXISTS " + benchTable + ", " + benchGrantTable + ", " + floorGrantTable,
		"CREATE TABLE " + benchTable + " (id int)",
		"CREATE TABLE " + benchGrantTable + " (id int)",
		"CREATE TABLE " + floorGrantTable + " (id int)",
		"DO $$ BEGIN CREATE ROLE " + benchGroup + " NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$",
		"GRANT SELECT ON " + benchTable + " TO " + benchGroup,
	} {
		if _, err := pool.Exec(ctx, q); err != nil {
			pool.Close()
			return nil, fmt.Errorf("postgres setup %q: %w", q, err)
		}
	}
	return e, nil
}

func (e *pgEnv) Close() { e.pool.Close() }

func (e *pgEnv) version(ctx context.Context) string {
	var v string
	_ = e.pool.QueryRow(ctx, "SHOW server_version").Scan(&v)
	return v
}

// floorPool opens a pool of size conns for the floor.
func (e *pgEnv) floorPool(ctx context.Context, conns int) (*pgxpool.Pool, error) {
	c := e.cfg.Copy()
	c.MaxConns = int32(conns)
	c.MinConns = int32(conns)
	c.ConnConfig.RuntimeParams["application_name"] = "credbroker-bench-floor"
	p, err := pgxpool.NewWithConfig(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("floor pool: %w", err)
	}
	// Open every connection before the clock starts.
	conns2 := make([]*pgxpool.Conn, 0, conns)
	for range conns {
		c, err := p.Acquire(ctx)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("floor pool: %w", err)
		}
		conns2 = append(conns2, c)
	}
	for _, c := range conns2 {
		c.Release()
	}
	return p, nil
}

// barePool is floorPool for the bare floor, whose statements carry
// plaintext passwords: its sessions log no statement, slow or failing
// (superuser settings, which the bench's admin has), whatever the server's
// configuration says.
func (e *pgEnv) barePool(ctx context.Context, conns int) (*pgxpool.Pool, error) {
	c := e.cfg.Copy()
	c.MaxConns = int32(conns)
	c.MinConns = int32(conns)
	rp := c.ConnConfig.RuntimeParams
	rp["application_name"] = "credbroker-bench-bare"
	rp["log_statement"] = "none"
	rp["log_min_duration_statement"] = "-1"
	rp["log_min_error_statement"] = "panic"
	p, err := pgxpool.NewWithConfig(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("bare pool: %w", err)
	}
	conns2 := make([]*pgxpool.Conn, 0, conns)
	for range conns {
		c, err := p.Acquire(ctx)
		if err != nil {
			p.Close()
			return nil, fmt.Errorf("bare pool: %w", err)
		}
		conns2 = append(conns2, c)
	}
	for _, c := range conns2 {
		c.Release()
	}
	return p, nil
}

// countUsers counts roles whose name starts with prefix_.
func (e *pgEnv) countUsers(ctx context.Context, prefix string) (int, error) {
	var n int
	err := e.queryRoles(ctx, &n, "SELECT count(*) FROM pg_roles WHERE rolname >= $1::name AND rolname < $2::name", prefix)
	return n, err
}

// atMostUsers says whether at most want roles whose name starts with
// prefix_ are left; it reads no more than want+1 of them.
func (e *pgEnv) atMostUsers(ctx context.Context, prefix string, want int) (bool, error) {
	var n int
	err := e.queryRoles(ctx, &n, "SELECT count(*) FROM (SELECT FROM pg_roles WHERE rolname >= $1::name AND rolname < $2::name LIMIT $3) r", prefix, want+1)
	return n <= want, err
}

// queryRoles runs q, a query on the roles whose names start with prefix_
// ($1 ≤ rolname < $2; more from $3 on), into dst. The bench polls the
// catalog while it times what the server does, so each poll reads only
// the roles it asks about: a range on pg_authid's name index, with
// sequential scans off because the catalog's statistics may still describe
// a handful of roles. (A pg_roles scan with starts_with every 20 ms, over
// 10,000 roles, took CPU from the server it was timing.)
func (e *pgEnv) queryRoles(ctx context.Context, dst any, q, prefix string, more ...any) error {
	lo := prefix + "_"
	hi := prefix + "`" // the character after '_'
	tx, err := e.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	if _, err := tx.Exec(ctx, "SET LOCAL enable_seqscan = off"); err != nil {
		return err
	}
	return tx.QueryRow(ctx, q, append([]any{lo, hi}, more...)...).Scan(dst)
}

// waitUsers polls pg_roles every 10ms until at most want roles with prefix
// are left.
func (e *pgEnv) waitUsers(ctx context.Context, prefix string, want int, timeout time.Duration) error {
	done, err := e.untilAtMost(ctx, prefix, want, 10*time.Millisecond, timeout)
	if err != nil || done {
		return err
	}
	n, err := e.countUsers(ctx, prefix)
	if err != nil {
		return err
	}
	return fmt.Errorf("%d users with prefix %s still present after %s, want %d", n, prefix, timeout, want)
}

// usersLeft polls pg_roles every `every` until no role with prefix is
// left, for at most timeout, and returns how many are left: 0 if they went
// in time.
func (e *pgEnv) usersLeft(ctx context.Context, prefix string, every, timeout time.Duration) (int, error) {
	done, err := e.untilAtMost(ctx, prefix, 0, every, timeout)
	if err != nil || done {
		return 0, err
	}
	return e.countUsers(ctx, prefix)
}

// untilAtMost polls every `every` until at most want roles with prefix are
// left (true) or timeout has passed (false).
func (e *pgEnv) untilAtMost(ctx context.Context, prefix string, want int, every, timeout time.Duration) (bool, error) {
	deadline := time.Now().Add(timeout)
	for {
		done, err := e.atMostUsers(ctx, prefix, want)
		if err != nil || done || time.Now().After(deadline) {
			return done, err
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-time.After(every):
		}
	}
}

// dropUsers removes every role with prefix, whatever state the bench left
// it in (cleanup, not measured).
func (e *pgEnv) dropUsers(ctx context.Context, prefix string) error {
	rows, err := e.pool.Query(ctx, "SELECT rolname FROM pg_roles WHERE starts_with(rolname, $1)", prefix+"_")
	if err != nil {
		return err
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return err
	}
	for len(names) > 0 {
		batch := names[:min(len(names), 500)]
		names = names[len(batch):]
		list := ""
		for i, n := range batch {
			if i > 0 {
				list += ", "
			}
			list += floorIdent(n)
		}
		if _, err := e.pool.Exec(ctx, "DROP OWNED BY "+list); err != nil {
			return err
		}
		if _, err := e.pool.Exec(ctx, "DROP ROLE IF EXISTS "+list); err != nil {
			return err
		}
	}
	return nil
}

var lowerBase32 = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// newUsername has the plugin's layout: <prefix>_<role>_<26 base32 chars>.
func newUsername(prefix, role string) string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return prefix + "_" + role + "_" + lowerBase32.EncodeToString(b[:])
}
