package client

import (
	"context"
	"database/sql/driver"
	"errors"

	"github.com/go-sql-driver/mysql"
)

// MySQLConnector returns a database/sql connector (sql.OpenDB) for the
// watcher's MySQL or MariaDB credential: every new connection logs in with
// the current credential, and a connection of a replaced credential is
// discarded instead of being reused (driver.Validator and
// driver.SessionResetter), so the pool moves to the new user during the
// overlap. configure, if not nil, adjusts the go-sql-driver configuration
// parsed from the credential's DSN (timeouts, TLS) before each connection.
func (w *Watcher) MySQLConnector(configure func(*mysql.Config)) driver.Connector {
	return &mysqlConnector{w: w, configure: configure}
}

type mysqlConnector struct {
	w         *Watcher
	configure func(*mysql.Config)
}

func (c *mysqlConnector) Connect(ctx context.Context) (driver.Conn, error) {
	cur, err := c.w.Current()
	if err != nil {
		return nil, err
	}
	cfg, err := mysql.ParseDSN(cur.DSN)
	if err != nil {
		// The driver's message may quote the DSN, password included.
		return nil, errors.New("credbroker client: the credential's DSN is not a go-sql-driver DSN")
	}
	if c.configure != nil {
		c.configure(cfg)
	}
	cfg.User, cfg.Passwd = cur.Username, cur.Password
	conn, err := mysql.NewConnector(cfg)
	if err != nil {
		return nil, err
	}
	dc, err := conn.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return &mysqlConn{Conn: dc, w: c.w, user: cur.Username}, nil
}

func (c *mysqlConnector) Driver() driver.Driver { return &mysql.MySQLDriver{} }

// mysqlConn is a driver connection that knows its user, so that the pool
// discards it once its credential is replaced. It forwards the optional
// interfaces go-sql-driver implements.
type mysqlConn struct {
	driver.Conn
	w    *Watcher
	user string
}

var (
	_ driver.Validator       = (*mysqlConn)(nil)
	_ driver.SessionResetter = (*mysqlConn)(nil)
)

// IsValid is asked before the connection goes back to the pool.
func (c *mysqlConn) IsValid() bool {
	if !c.w.isCurrent(c.user) {
		return false
	}
	if v, ok := c.Conn.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// ResetSession is called before an idle connection is reused; ErrBadConn
// makes database/sql discard it and take another.
func (c *mysqlConn) ResetSession(ctx context.Context) error {
	if !c.w.isCurrent(c.user) {
		return driver.ErrBadConn
	}
	if r, ok := c.Conn.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

func (c *mysqlConn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if p, ok := c.Conn.(driver.ConnPrepareContext); ok {
		return p.PrepareContext(ctx, query)
	}
	return c.Prepare(query)
}

func (c *mysqlConn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if b, ok := c.Conn.(driver.ConnBeginTx); ok {
		return b.BeginTx(ctx, opts)
	}
	return nil, errors.New("credbroker client: driver has no BeginTx")
}

func (c *mysqlConn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	if e, ok := c.Conn.(driver.ExecerContext); ok {
		return e.ExecContext(ctx, query, args)
	}
	return nil, driver.ErrSkip
}

func (c *mysqlConn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	if q, ok := c.Conn.(driver.QueryerContext); ok {
		return q.QueryContext(ctx, query, args)
	}
	return nil, driver.ErrSkip
}

func (c *mysqlConn) Ping(ctx context.Context) error {
	if p, ok := c.Conn.(driver.Pinger); ok {
		return p.Ping(ctx)
	}
	return nil
}

func (c *mysqlConn) CheckNamedValue(nv *driver.NamedValue) error {
	if n, ok := c.Conn.(driver.NamedValueChecker); ok {
		return n.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}
