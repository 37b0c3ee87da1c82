package postgres

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/credbroker/credbroker/internal/pgpool"
	"github.com/credbroker/credbroker/plugins"
)

// Defaults for zero Config fields.
const (
	DefaultPrefix         = "cb"
	DefaultMarker         = "credbroker"
	DefaultConnectTimeout = 5 * time.Second
)

// Config is one PostgreSQL server. Username and Password are the admin
// credentials, already resolved by the caller.
type Config struct {
	Host     string
	Port     int
	Database string
	Username string
	Password string
	// SSLMode is a libpq sslmode; empty means pgx's default (prefer).
	SSLMode string
	// MaxConns bounds the pool; 0 means pgx's default.
	MaxConns int32
	// Prefix starts every generated username (plugins.PrefixPattern).
	// Default "cb".
	Prefix string
	// Marker is stored as the comment of every role the broker creates;
	// ListUsers returns only roles carrying it. Default "credbroker".
	Marker string
	// ConnectTimeout bounds each new connection. Default 5s.
	ConnectTimeout time.Duration
	// ScramIterations is the PBKDF2 iteration count of the SCRAM-SHA-256
	// verifiers the broker computes (default 4096, PostgreSQL's). The server
	// repeats that derivation at every CREATE ROLE (to refuse an empty
	// password), and every client at every login, so it is the largest cost
	// of issuance on the server (docs/config.md weighs it).
	ScramIterations int
	// Lazy skips the startup ping: the broker must start (and answer
	// UNAVAILABLE for this database) while the server is down.
	Lazy bool
}

// DB is a plugins.Database for one PostgreSQL server. It is safe for
// concurrent use.
type DB struct {
	pool   *pgxpool.Pool
	users  *plugins.Usernames
	marker string
	where  string                 // host:port, for errors
	admin  *plugins.AdminPassword // the pool's login (rotate.go); also scrubbed from errors
	drops  *dropQueue
	iters  int // SCRAM iterations
	// verifiers holds SCRAM verifiers computed ahead (verifiers.go).
	verifiers verifierCache
	// creating counts createPipelined calls in progress (pipeline.go).
	creating atomic.Int32
}

var _ plugins.Database = (*DB)(nil)

// New connects to the server and checks the admin credentials work (unless
// c.Lazy, see Ping).
func New(ctx context.Context, c Config) (*DB, error) {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Marker == "" {
		c.Marker = DefaultMarker
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.ScramIterations == 0 {
		c.ScramIterations = DefaultScramIterations
	}
	if c.ScramIterations < 1 || c.ScramIterations > MaxScramIterations {
		return nil, fmt.Errorf("postgres: scram iterations %d must be between 1 and %d", c.ScramIterations, MaxScramIterations)
	}
	users, err := plugins.NewUsernames(usernameRules, c.Prefix)
	if err != nil {
		return nil, err
	}
	if strings.ContainsRune(c.Marker, 0) {
		return nil, errors.New("postgres: marker contains a NUL byte")
	}
	if c.Host == "" || c.Port <= 0 || c.Port > 65535 || c.Username == "" {
		return nil, errors.New("postgres: host, port and username are required")
	}

	// The password is set on the parsed config, never written into a
	// connection string (internal/pgpool).
	pc, err := pgpool.Config(pgpool.Settings{
		Host:            c.Host,
		Port:            c.Port,
		Database:        c.Database,
		Username:        c.Username,
		Password:        c.Password,
		SSLMode:         c.SSLMode,
		ApplicationName: "credbroker",
		MaxConns:        c.MaxConns,
		ConnectTimeout:  c.ConnectTimeout,
	})
	if err != nil {
		return nil, fmt.Errorf("postgres: %w", err)
	}

	// Every new connection logs in with the current admin password, which
	// SetAdminPassword replaces.
	admin := plugins.NewAdminPassword(c.Password)
	pc.BeforeConnect = func(_ context.Context, cc *pgx.ConnConfig) error {
		cc.Password = admin.Get()
		return nil
	}
	pool, err := pgxpool.NewWithConfig(ctx, pc)
	if err != nil {
		return nil, &plugins.Error{Kind: plugins.KindUnavailable, Err: fmt.Errorf("postgres: %w: %s", plugins.ErrUnavailable, plugins.Redact(err.Error(), c.Password))}
	}
	db := &DB{
		pool:   pool,
		users:  users,
		marker: c.Marker,
		where:  fmt.Sprintf("%s:%d", c.Host, c.Port),
		admin:  admin,
		iters:  c.ScramIterations,
	}
	db.drops = db.newDropQueue()
	if !c.Lazy {
		if err := db.Ping(ctx); err != nil {
			pool.Close()
			return nil, err
		}
	}
	return db, nil
}

// Ping checks that the server answers and the admin credentials work.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.pool.Ping(ctx); err != nil {
		return &plugins.Error{Kind: plugins.KindUnavailable | adminKind(err), Err: fmt.Errorf("postgres: connect to %s: %w: %s", db.where, plugins.ErrUnavailable, plugins.Redact(err.Error(), db.admin.Secrets()...))}
	}
	return nil
}

// Capabilities implements plugins.Database.
func (db *DB) Capabilities() plugins.Capabilities {
	return plugins.Capabilities{ServerExpiry: true}
}

// Close implements plugins.Database.
func (db *DB) Close() {
	db.verifiers.close()
	db.pool.Close()
}

// UpdateUser implements plugins.Database: it moves VALID UNTIL.
func (db *DB) UpdateUser(ctx context.Context, req plugins.UpdateUserRequest) error {
	if err := db.checkUsername(req.Username); err != nil {
		return err
	}
	until, err := validUntil(req.Expiration)
	if err != nil {
		return fmt.Errorf("postgres: update %s: %w", req.Username, err)
	}
	_, err = db.pool.Exec(ctx, "ALTER ROLE "+quoteIdent(req.Username)+" VALID UNTIL "+until)
	if pgErrCode(err) == codeUndefinedObject {
		return fmt.Errorf("postgres: update %s: role does not exist", req.Username)
	}
	if err != nil {
		return wrap(ctx, "update "+req.Username, err)
	}
	return nil
}

// ListUsers implements plugins.Database: roles with the prefix that carry
// the marker comment.
func (db *DB) ListUsers(ctx context.Context) ([]string, error) {
	rows, err := db.pool.Query(ctx, `
		SELECT rolname FROM pg_roles
		WHERE starts_with(rolname, $1) AND shobj_description(oid, 'pg_authid') = $2
		ORDER BY rolname`, db.users.Prefix()+"_", db.marker)
	if err != nil {
		return nil, wrap(ctx, "list users", err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, wrap(ctx, "list users", err)
	}
	out := names[:0]
	for _, n := range names {
		if db.users.Match(n) {
			out = append(out, n)
		}
	}
	return out, nil
}

// validUntil renders an expiry as a timestamptz literal in UTC.
func validUntil(t time.Time) (string, error) {
	if t.IsZero() {
		return "", errors.New("expiration is required")
	}
	return quoteLiteral(t.UTC().Format("2006-01-02 15:04:05.999999-07"))
}

// SQLSTATE codes the plugin acts on.
const (
	codeUndefinedObject = "42704"
	codeSerialization   = "40001"
	codeDeadlock        = "40P01"
	codeInternal        = "XX000"
)

func pgErrCode(err error) string {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code
	}
	return ""
}

// unavailable tells a broken or refused connection from a statement the
// server rejected.
func unavailable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		// Network, TLS, protocol and pool errors.
		return true
	}
	if len(pgErr.Code) != 5 {
		return false
	}
	switch pgErr.Code[:2] {
	case "08", // connection exception
		"28", // invalid authorization (admin credentials)
		"53", // insufficient resources (too many connections, disk full)
		"57": // operator intervention (shutdown, terminated)
		return true
	}
	return pgErr.Code == "3D000" // the configured database vanished
}

// codeInsufficientPrivilege is what the server answers a statement the
// admin has no right to run (CREATE ROLE without CREATEROLE, a GRANT
// without the grant option).
const codeInsufficientPrivilege = "42501"

// adminKind tells a refused admin login (class 28, invalid authorization)
// and a privilege the admin lacks from other errors, so that the broker can
// tell an operator what to fix.
func adminKind(err error) plugins.Kind {
	code := pgErrCode(err)
	switch {
	case strings.HasPrefix(code, "28"):
		return plugins.KindAdminLogin
	case code == codeInsufficientPrivilege:
		return plugins.KindAdminPrivilege
	}
	return 0
}

// wrap adds the operation and, for connection problems (unavailable),
// plugins.KindUnavailable; for a refused login or a missing privilege, the
// admin kinds (adminKind).
func wrap(ctx context.Context, op string, err error) error {
	return plugins.Classify(plugins.Wrap(ctx, "postgres: "+op, err, unavailable(err)), adminKind(err))
}
