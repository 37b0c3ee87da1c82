package pgstore

import (
	"context"
	"fmt"
	"hash/fnv"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/lease"
)

// writerKey1 is the first key of the single-writer advisory lock (the
// second is writerKey2 of the schema): "cbwr". The two-key form keeps it
// apart from the one-key locks of Init and Migrate.
const writerKey1 int32 = 0x63627772

// writerKey2 derives the second key of the single-writer lock from the
// schema name. Two schemas whose names collide share a lock: the second
// broker is refused, never let in.
func writerKey2(schema string) int32 {
	h := fnv.New32a()
	h.Write([]byte("credbroker-store:" + schema))
	return int32(h.Sum32() & 0x7fffffff)
}

// WriterLockKeys returns the two keys of the single-writer advisory lock of
// the store in schema, to find the session holding it:
//
//	SELECT pid FROM pg_locks WHERE locktype = 'advisory'
//		AND classid = <key1> AND objid = <key2> AND objsubid = 2
func WriterLockKeys(schema string) (key1, key2 int32) {
	return writerKey1, writerKey2(schema)
}

// guard is the single-writer lock of a store opened by Open: a session
// advisory lock held by one connection of its own for the store's life
// (see "One broker per store" in the package documentation).
type guard struct {
	mu      sync.Mutex
	conn    *pgx.Conn
	key2    int32
	timeout time.Duration
	lost    error // sticky: once lost, the lock is never taken back
}

// lockWriter takes the single-writer lock of c.Schema on a connection of
// its own. Another session holding it is lease.ErrStoreUnavailable.
func lockWriter(ctx context.Context, c Config) (*guard, error) {
	pc, err := c.poolConfig()
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, pc.ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("pgstore: connect %s:%d: %w: %w", c.Host, c.Port, lease.ErrStoreUnavailable, err)
	}
	g := &guard{conn: conn, key2: writerKey2(c.Schema), timeout: c.ConnectTimeout}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, writerKey1, g.key2).Scan(&ok); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("pgstore: writer lock: %w", unavailable(err))
	}
	if !ok {
		var holder string
		// Best effort, for the operator: which session holds it.
		_ = conn.QueryRow(ctx, `SELECT format('pid %s, %s', l.pid, coalesce(a.client_addr::text, 'local'))
			FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND l.classid = $1::int4::oid AND l.objid = $2::int4::oid
				AND l.objsubid = 2 AND l.granted`, writerKey1, g.key2).Scan(&holder)
		conn.Close(context.WithoutCancel(ctx))
		if holder != "" {
			holder = " (PostgreSQL session " + holder + ")"
		}
		return nil, fmt.Errorf("pgstore: another broker holds the store in schema %s%s: %w; "+
			"several brokers on one store (multi-replica, HA mode) is not available yet: run one broker per store",
			c.Schema, holder, lease.ErrStoreUnavailable)
	}
	return g, nil
}

// check returns nil if the lock is still held, by a round trip on its
// connection: the server ends a session's advisory locks only with the
// session, so a session that answers still holds it. A connection that
// does not answer within the timeout is taken as lost (fail closed): the
// server may already have ended it and let another broker in. The round
// trip is made under a ctx of its own, as a caller's cancellation would
// close the connection and with it the lock.
func (g *guard) check(ctx context.Context) error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.lost != nil {
		return g.lost
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), g.timeout)
	defer cancel()
	if err := g.conn.Ping(pctx); err != nil {
		g.lost = fmt.Errorf("%w: %w: the store's single-writer lock is lost (its connection failed: %w); "+
			"another broker may hold the store now: this one writes nothing more, restart it", lease.ErrStoreUnavailable, lease.ErrStoreFenced, err)
		g.conn.Close(pctx)
		return g.lost
	}
	return nil
}

// release unlocks and closes the lock's connection. The unlock is explicit
// so that the lock is free when release returns (closing the connection
// alone frees it only when the server has ended the session).
func (g *guard) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	defer cancel()
	if g.lost == nil {
		_, _ = g.conn.Exec(ctx, `SELECT pg_advisory_unlock($1, $2)`, writerKey1, g.key2)
		g.lost = fmt.Errorf("%w: closed", lease.ErrStoreUnavailable)
	}
	g.conn.Close(ctx)
}

// pid is the server process of the lock's session (tests).
func (g *guard) pid() uint32 { return g.conn.PgConn().PID() }
