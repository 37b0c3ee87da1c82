package pgstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/credbroker/credbroker/internal/pgpool"
	"github.com/credbroker/credbroker/lease"
)

// Defaults of Config.
const (
	DefaultPort           = 5432
	DefaultSchema         = "credbroker"
	DefaultConnectTimeout = 5 * time.Second
	// DefaultMaxConns bounds the pool: the store's statements are short,
	// and several replicas share one server's max_connections.
	DefaultMaxConns = 8
	// applicationName shows the store's sessions apart in pg_stat_activity.
	applicationName = "credbroker-store"
)

// Config says where the store lives. Password is the resolved secret (the
// broker's config reads it from password_env or password_file); it is set
// on the parsed connection config, never written into a connection string,
// so no parse or connect error can quote it.
type Config struct {
	Host     string
	Port     int // default DefaultPort
	Database string
	Username string
	Password string
	// SSLMode is a libpq sslmode; empty means pgx's default (prefer).
	SSLMode string
	// MaxConns bounds the connection pool (default DefaultMaxConns).
	MaxConns int32
	// ConnectTimeout bounds each new connection (default
	// DefaultConnectTimeout).
	ConnectTimeout time.Duration
	// Schema holds the store's tables (default DefaultSchema), so that one
	// database can hold several stores, or the store can share a database
	// with other applications.
	Schema string
	// Replica names this broker among those sharing the store: stored in
	// claimed_by by Create, PutIfVersion and ClaimDue, so that an operator
	// sees who works on a lease. Default: the host name and the process
	// id ("host:pid"), unique among live brokers.
	Replica string
}

func (c Config) withDefaults() Config {
	if c.Port == 0 {
		c.Port = DefaultPort
	}
	if c.Schema == "" {
		c.Schema = DefaultSchema
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.Replica == "" {
		c.Replica = defaultReplica()
	}
	return c
}

// defaultReplica is "host:pid": two brokers on one host differ by pid, and
// a restarted broker does not inherit its predecessor's claims by name
// (claims are fenced by version anyway; the name is for operators).
func defaultReplica() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "unknown"
	}
	return host + ":" + strconv.Itoa(os.Getpid())
}

// Check reports what is wrong with c without connecting (credbroker
// check-config). The error never contains the password.
func (c Config) Check() error {
	c = c.withDefaults()
	switch {
	case c.Host == "":
		return errors.New("pgstore: host is required")
	case c.Port <= 0 || c.Port > 65535:
		return fmt.Errorf("pgstore: port %d out of range", c.Port)
	case c.Username == "":
		return errors.New("pgstore: username is required")
	case c.MaxConns < 1:
		return fmt.Errorf("pgstore: max conns %d must be positive", c.MaxConns)
	case c.ConnectTimeout < 0:
		return fmt.Errorf("pgstore: connect timeout %s must be positive", c.ConnectTimeout)
	case len(c.Schema) > 63 || strings.ContainsRune(c.Schema, 0):
		return fmt.Errorf("pgstore: schema name %q: at most 63 bytes, no NUL", c.Schema)
	}
	for _, s := range []string{c.Host, c.Database, c.Username, c.SSLMode, c.Replica} {
		if strings.ContainsRune(s, 0) {
			return errors.New("pgstore: a connection setting contains a NUL byte")
		}
	}
	return nil
}

// poolConfig builds pgx's configuration field by field: the connection
// string holds no password, which is set on the parsed result.
func (c Config) poolConfig() (*pgxpool.Config, error) {
	pc, err := pgpool.Config(pgpool.Settings{
		Host:            c.Host,
		Port:            c.Port,
		Database:        c.Database,
		Username:        c.Username,
		Password:        c.Password,
		SSLMode:         c.SSLMode,
		ApplicationName: applicationName,
		MaxConns:        c.MaxConns,
		ConnectTimeout:  c.ConnectTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("pgstore: %w", err)
	}
	return pc, nil
}

// connect checks c and opens a pool on it, and checks that the server
// answers and accepts the credentials.
func connect(ctx context.Context, c Config) (*pgxpool.Pool, error) {
	if err := c.Check(); err != nil {
		return nil, err
	}
	pc, err := c.poolConfig()
	if err != nil {
		return nil, err
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err == nil {
		if err = pool.Ping(ctx); err != nil {
			pool.Close()
		}
	}
	if err != nil {
		err = fmt.Errorf("pgstore: connect %s:%d: %w: %w", c.Host, c.Port, lease.ErrStoreUnavailable, err)
		return nil, redactErr(err, c.Password)
	}
	return pool, nil
}

// quoteIdent quotes an SQL identifier.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }
