package pgstore

import (
	"context"
	"fmt"
	"hash/fnv"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/lease"
)

// servingKey1 is the first key of the serving lock (the second is
// servingKey2 of the schema): "cbwr". The two-key form keeps it apart from
// the one-key locks of Init and Migrate.
const servingKey1 int32 = 0x63627772

// servingKey2 derives the second key of the serving lock from the schema
// name. Two schemas whose names collide share a lock: a migration of one
// waits for the brokers of both, never the other way round.
func servingKey2(schema string) int32 {
	h := fnv.New32a()
	h.Write([]byte("credbroker-store:" + schema))
	return int32(h.Sum32() & 0x7fffffff)
}

// ServingLockKeys returns the two keys of the serving lock of the store in
// schema, to find the brokers serving it:
//
//	SELECT pid FROM pg_locks WHERE locktype = 'advisory'
//		AND classid = <key1> AND objid = <key2> AND objsubid = 2
func ServingLockKeys(schema string) (key1, key2 int32) {
	return servingKey1, servingKey2(schema)
}

// serving is the lock every open store holds for its life: a session
// advisory lock in SHARED mode, on a connection of its own, so that any
// number of brokers (replicas) hold it together while Migrate, which
// needs it exclusively, refuses to change the tables under them (see
// "Replicas and migrations" in the package documentation). It fences
// nothing: the row versions do.
type serving struct {
	conn *pgx.Conn
	key2 int32
}

// holdServing takes the serving lock of c.Schema, shared, on a connection
// of its own. It fails only while a migration holds it exclusively.
func holdServing(ctx context.Context, c Config) (*serving, error) {
	pc, err := c.poolConfig()
	if err != nil {
		return nil, err
	}
	conn, err := pgx.ConnectConfig(ctx, pc.ConnConfig)
	if err != nil {
		return nil, fmt.Errorf("pgstore: connect %s:%d: %w: %w", c.Host, c.Port, lease.ErrStoreUnavailable, err)
	}
	g := &serving{conn: conn, key2: servingKey2(c.Schema)}
	var ok bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock_shared($1, $2)`, servingKey1, g.key2).Scan(&ok); err != nil {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("pgstore: serving lock: %w", unavailable(err))
	}
	if !ok {
		conn.Close(context.WithoutCancel(ctx))
		return nil, fmt.Errorf("pgstore: schema %s is being migrated: %w; start the broker when `credbroker migrate` has finished",
			c.Schema, lease.ErrStoreUnavailable)
	}
	return g, nil
}

// release unlocks and closes the lock's connection; the unlock is explicit
// so that the lock is free when release returns.
func (g *serving) release(ctx context.Context) {
	_, _ = g.conn.Exec(ctx, `SELECT pg_advisory_unlock_shared($1, $2)`, servingKey1, g.key2)
	g.conn.Close(ctx)
}

// pid is the server process of the lock's session (tests).
func (g *serving) pid() uint32 { return g.conn.PgConn().PID() }
