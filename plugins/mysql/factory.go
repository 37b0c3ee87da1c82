package mysql

import (
	"context"
	"fmt"
	"net"
	"strconv"

	"github.com/go-sql-driver/mysql"

	"github.com/credbroker/credbroker/plugins"
)

// Factory is the MySQL/MariaDB engine for plugins.Catalog (type "mysql").
type Factory struct{}

var _ plugins.Factory = Factory{}

// optUserHost is the one mysql-only config key (Config.UserHost).
const optUserHost = "user_host"

// Type implements plugins.Factory.
func (Factory) Type() string { return "mysql" }

// OptionKeys implements plugins.Factory.
func (Factory) OptionKeys() []string { return []string{optUserHost} }

// CheckOptions implements plugins.Factory.
func (Factory) CheckOptions(opts map[string]any) error {
	_, err := userHost(opts)
	return err
}

// userHost reads user_host; empty (absent) means DefaultUserHost.
func userHost(opts map[string]any) (string, error) {
	h, err := plugins.OptionString(opts, optUserHost)
	if err != nil {
		return "", err
	}
	if h != "" {
		if err := checkHost(h); err != nil {
			return "", &plugins.OptionError{Key: optUserHost, Msg: err.Error()}
		}
	}
	return h, nil
}

// CheckStatements implements plugins.Factory: where {{password}} stands in
// creation statements, for any server flavour; NewUser checks again for
// the actual one.
func (Factory) CheckStatements(creation []string) error {
	return checkPasswordClauses(creation, nil)
}

// Open implements plugins.Factory. It does not contact the server.
func (Factory) Open(ctx context.Context, s plugins.Settings) (plugins.Database, error) {
	host, err := userHost(s.Options)
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	tls, err := tlsFromSSLMode(s.SSLMode)
	if err != nil {
		return nil, fmt.Errorf("mysql: %w", err)
	}
	return New(ctx, Config{
		Host:           s.Host,
		Port:           s.Port,
		Database:       s.Database,
		Username:       s.Username,
		Password:       s.Password,
		TLS:            tls,
		MaxConns:       s.MaxConns,
		ConnectTimeout: s.ConnectTimeout,
		Prefix:         s.UsernamePrefix,
		Marker:         s.Marker,
		UserHost:       host,
		Lazy:           true,
	})
}

// ClientDSN implements plugins.Factory: the go-sql-driver DSN. The name and
// password are generated (no character in them needs escaping); the
// database name is path-escaped by the driver.
func (Factory) ClientDSN(e plugins.Endpoint, username, password string) string {
	c := mysql.NewConfig()
	c.User, c.Passwd = username, password
	c.Net, c.Addr = "tcp", net.JoinHostPort(e.Host, strconv.Itoa(e.Port))
	c.DBName = e.Database
	c.ParseTime = true
	if tls, err := tlsFromSSLMode(e.SSLMode); err == nil && tls != "false" {
		c.TLSConfig = tls
	}
	return c.FormatDSN()
}
