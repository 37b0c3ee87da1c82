package broker

import (
	"context"
	"fmt"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
)

// Database is one configured database: the plugin plus what a client needs
// to reach it.
type Database struct {
	Name   string // logical name from the config
	Plugin string // the plugins.Factory type, e.g. "postgres"
	Host   string
	Port   int
	DBName string // server-side database name
	// SSLMode is echoed into the DSN handed to clients (each engine maps it
	// to its driver's setting).
	SSLMode string
	DB      plugins.Database
	factory plugins.Factory // builds the client DSN
}

// dsn builds the ready-to-use connection string for the workload's driver.
func (d *Database) dsn(username, password string) string {
	ep := plugins.Endpoint{Host: d.Host, Port: d.Port, Database: d.DBName, SSLMode: d.SSLMode}
	return d.factory.ClientDSN(ep, username, password)
}

// databasePlugins returns each database's plugin by configured name (what the
// reconciler compares and drops).
func databasePlugins(dbs map[string]*Database) map[string]plugins.Database {
	out := make(map[string]plugins.Database, len(dbs))
	for name, d := range dbs {
		out[name] = d.DB
	}
	return out
}

// openDatabase opens one configured database through its engine's factory
// in the catalog, wrapped by plugins.Sanitized so that no error carries a
// secret.
func openDatabase(ctx context.Context, catalog *plugins.Catalog, name string, dc DatabaseConfig, marker string) (*Database, error) {
	pw, err := dc.AdminPassword()
	if err != nil {
		return nil, fmt.Errorf("databases.%s: %w", name, err)
	}
	return openDatabaseWith(ctx, catalog, name, dc, marker, pw)
}

// openDatabaseWith is openDatabase with the admin password given (a
// rotation's recovery tries one that is not in password_file yet).
func openDatabaseWith(ctx context.Context, catalog *plugins.Catalog, name string, dc DatabaseConfig, marker, pw string) (*Database, error) {
	factory, err := catalog.Lookup(dc.Plugin)
	if err != nil {
		return nil, fmt.Errorf("databases.%s: %w", name, err)
	}
	ep := plugins.Endpoint{Host: dc.Host, Port: dc.Port, Database: dc.Database, SSLMode: dc.SSLMode}
	db, err := factory.Open(ctx, plugins.Settings{
		Endpoint:       ep,
		Username:       dc.Username,
		Password:       pw,
		MaxConns:       dc.MaxConnections,
		ConnectTimeout: dc.ConnectTimeout.Duration,
		UsernamePrefix: dc.UsernamePrefix,
		Marker:         marker,
		Options:        dc.Options,
	})
	if err != nil {
		return nil, fmt.Errorf("databases.%s: %w", name, err)
	}
	return &Database{
		Name:    name,
		Plugin:  dc.Plugin,
		Host:    dc.Host,
		Port:    dc.Port,
		DBName:  dc.Database,
		SSLMode: dc.SSLMode,
		DB:      plugins.Sanitized(db),
		factory: factory,
	}, nil
}

// backend routes lease operations (drop, extend) to the plugin of the
// lease's database. It implements lease.Backend, declared in lease/ so that
// lease/ never imports plugins/.
type backend struct {
	dbs     map[string]*Database
	metrics *metrics // counts failed drops; nil: metrics off
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
	err = db.DeleteUser(ctx, plugins.DeleteUserRequest{Username: l.Username, Statements: l.RevocationStatements})
	if err != nil {
		b.metrics.dropFailed()
	}
	return inDatabase(l.Database, err)
}

func (b backend) Extend(ctx context.Context, l lease.Lease) error {
	db, err := b.db(l.Database)
	if err != nil {
		return err
	}
	return inDatabase(l.Database, db.UpdateUser(ctx, plugins.UpdateUserRequest{Username: l.Username, Expiration: l.ExpireTime}))
}
