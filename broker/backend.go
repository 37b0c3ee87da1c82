package broker

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"strconv"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
	"github.com/credbroker/credbroker/plugins/mysql"
)

// Database is one configured database: the plugin plus what a client needs
// to reach it.
type Database struct {
	Name   string // logical name from the config
	Plugin string // "postgres" or "mysql"
	Host   string
	Port   int
	DBName string // server-side database name
	// SSLMode is echoed into the DSN handed to clients (mysql: as the
	// matching tls parameter).
	SSLMode string
	DB      plugins.Database
	ping    pinger // optional startup check
}

// dsn builds the ready-to-use connection string for the workload's driver.
func (d *Database) dsn(username, password string) string {
	switch d.Plugin {
	case "mysql":
		return mysql.ClientDSN(d.Host, d.Port, d.DBName, username, password, d.SSLMode)
	default:
		u := url.URL{
			Scheme:   "postgres",
			User:     url.UserPassword(username, password),
			Host:     net.JoinHostPort(d.Host, strconv.Itoa(d.Port)),
			Path:     "/" + d.DBName,
			RawQuery: url.Values{"sslmode": {d.SSLMode}}.Encode(),
		}
		return u.String()
	}
}

// backend routes lease operations to the lease's database. It implements
// lease.Backend.
type backend struct {
	dbs map[string]*Database
}

var _ lease.Backend = backend{}

func (b backend) db(name string) (plugins.Database, error) {
	d, ok := b.dbs[name]
	if !ok {
		return nil, fmt.Errorf("database %q is not configured", name)
	}
	return d.DB, nil
}

func (b backend) Drop(ctx context.Context, l lease.Lease) error {
	db, err := b.db(l.Database)
	if err != nil {
		return err
	}
	return db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: l.Username, Statements: l.RevocationStatements})
}

func (b backend) Extend(ctx context.Context, l lease.Lease) error {
	db, err := b.db(l.Database)
	if err != nil {
		return err
	}
	return db.UpdateUser(ctx, plugins.UpdateUserRequest{Username: l.Username, Expiration: l.ExpireTime})
}
