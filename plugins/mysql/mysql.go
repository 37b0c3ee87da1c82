package mysql

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/credbroker/credbroker/plugins"
)

// Defaults for zero Config fields.
const (
	DefaultPrefix         = "cb"
	DefaultMarker         = "credbroker"
	DefaultUserHost       = "%"
	DefaultConnectTimeout = 5 * time.Second
	DefaultMaxConns       = 8
)

// Config is one MySQL or MariaDB server. Username and Password are the admin
// credentials, already resolved by the caller.
type Config struct {
	Host string
	Port int
	// Database is the admin pool's default schema and the one named in the
	// DSN handed to workloads; users themselves are server-wide.
	Database string
	Username string
	Password string
	// TLS is a go-sql-driver tls value ("false", "preferred", "skip-verify",
	// "true"); the Factory maps a libpq sslmode to it. Empty means "false".
	TLS string
	// MaxConns bounds the pool. Default 8.
	MaxConns int
	// Prefix starts every generated username (plugins.PrefixPattern).
	// Default "cb".
	Prefix string
	// Marker names a role (without privileges) granted to every user the
	// broker creates; ListUsers returns only users holding it. MariaDB has
	// no comment on users, so a role membership is the marker. Letters,
	// digits and . _ : -, within the server's user-name limit. Default
	// "credbroker".
	Marker string
	// UserHost is the host part of every account the broker creates
	// ('name'@'host'). Default "%" (anywhere). See checkHost for what is
	// accepted.
	UserHost string
	// ConnectTimeout bounds each new connection. Default 5s.
	ConnectTimeout time.Duration
	// Lazy skips the startup ping: the broker must start (and answer
	// UNAVAILABLE for this database) while the server is down.
	Lazy bool
}

// DB is a plugins.Database for one MySQL or MariaDB server. It is safe for
// concurrent use.
type DB struct {
	pool   *sql.DB
	users  *plugins.Usernames
	marker string
	host   string                 // UserHost, checked
	where  string                 // host:port, for errors
	admin  *plugins.AdminPassword // the pool's login (rotate.go); also scrubbed from errors
	// maxConns is the pool's size, restored after a rotation emptied it.
	maxConns int

	// server is nil until the server has been reached once; learnMu
	// keeps concurrent first calls from all asking.
	server  atomic.Pointer[serverInfo]
	learnMu sync.Mutex

	markerMu    sync.Mutex
	markerReady bool // the marker role is known to exist
}

var _ plugins.Database = (*DB)(nil)

// flavour is the server family; the two differ in how a password hash is
// given (see checkPasswordClauses) and in their user-name limits.
type flavour int

const (
	flavourMySQL flavour = iota
	flavourMariaDB
)

func (f flavour) String() string {
	if f == flavourMariaDB {
		return "MariaDB"
	}
	return "MySQL"
}

// serverInfo is what the plugin learns from the server on first contact.
type serverInfo struct {
	flavour   flavour
	version   string
	nameLimit int // characters allowed in a user name
}

var markerRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)

// New builds the pool and, unless c.Lazy, checks that the admin credentials
// work and learns the server's flavour and user-name limit (see Ping).
func New(ctx context.Context, c Config) (*DB, error) {
	if c.Prefix == "" {
		c.Prefix = DefaultPrefix
	}
	if c.Marker == "" {
		c.Marker = DefaultMarker
	}
	if c.UserHost == "" {
		c.UserHost = DefaultUserHost
	}
	if c.ConnectTimeout == 0 {
		c.ConnectTimeout = DefaultConnectTimeout
	}
	if c.MaxConns == 0 {
		c.MaxConns = DefaultMaxConns
	}
	users, err := plugins.NewUsernames(usernameRules, c.Prefix)
	if err != nil {
		return nil, err
	}
	if !markerRE.MatchString(c.Marker) {
		return nil, fmt.Errorf("mysql: marker %q must match %s", c.Marker, markerRE)
	}
	if err := checkHost(c.UserHost); err != nil {
		return nil, fmt.Errorf("mysql: user host: %w", err)
	}
	if c.Host == "" || c.Port <= 0 || c.Port > 65535 || c.Username == "" {
		return nil, errors.New("mysql: host, port and username are required")
	}
	switch c.TLS {
	case "", "false", "preferred", "skip-verify", "true":
	default:
		return nil, fmt.Errorf("mysql: unknown tls mode %q", c.TLS)
	}

	// The config is built field by field, never as a DSN string: the
	// driver's DSN parse errors quote the DSN, password included.
	mc := mysql.NewConfig()
	mc.User = c.Username
	mc.Passwd = c.Password
	mc.Net = "tcp"
	mc.Addr = net.JoinHostPort(c.Host, strconv.Itoa(c.Port))
	mc.DBName = c.Database
	mc.TLSConfig = c.TLS
	mc.Timeout = c.ConnectTimeout
	// Parameters are escaped by the driver, which tracks the session's
	// NO_BACKSLASH_ESCAPES; it saves a prepare round trip per query.
	mc.InterpolateParams = true
	mc.ConnectionAttributes = "program_name:credbroker"
	// Every error that matters is returned; the driver's own stderr lines
	// would bypass the broker's structured log.
	mc.Logger = &mysql.NopLogger{}
	// Every new connection logs in with the current admin password, which
	// SetAdminPassword replaces.
	admin := plugins.NewAdminPassword(c.Password)
	if err := mc.Apply(mysql.BeforeConnect(func(_ context.Context, cc *mysql.Config) error {
		cc.Passwd = admin.Get()
		return nil
	})); err != nil {
		return nil, fmt.Errorf("mysql: connection settings: %s", plugins.Redact(err.Error(), c.Password))
	}
	connector, err := mysql.NewConnector(mc)
	if err != nil {
		return nil, fmt.Errorf("mysql: connection settings: %s", plugins.Redact(err.Error(), c.Password))
	}
	pool := sql.OpenDB(connector)
	pool.SetMaxOpenConns(c.MaxConns)
	pool.SetMaxIdleConns(c.MaxConns)
	// Below the server's default wait_timeout (8h) by far, so the pool
	// rarely meets a connection the server has already closed.
	pool.SetConnMaxIdleTime(5 * time.Minute)

	db := &DB{
		pool:     pool,
		users:    users,
		marker:   c.Marker,
		host:     c.UserHost,
		where:    mc.Addr,
		admin:    admin,
		maxConns: c.MaxConns,
	}
	if !c.Lazy {
		if err := db.Ping(ctx); err != nil {
			_ = pool.Close() // the ping error is the one to report
			return nil, err
		}
	}
	return db, nil
}

// Ping checks that the server answers and the admin credentials work, and
// learns the server's flavour and user-name limit if not known yet.
func (db *DB) Ping(ctx context.Context) error {
	if err := db.pool.PingContext(ctx); err != nil {
		return db.connectError(ctx, err)
	}
	_, err := db.serverInfo(ctx)
	return err
}

func (db *DB) connectError(ctx context.Context, err error) error {
	return plugins.Classify(wrap(ctx, "connect to "+db.where, errors.New(plugins.Redact(err.Error(), db.admin.Secrets()...)), unavailable(err)), adminKind(err))
}

// serverInfo returns what the server told the plugin on first contact,
// asking it now if needed. A failure is not remembered: the next call asks
// again.
func (db *DB) serverInfo(ctx context.Context) (serverInfo, error) {
	if s := db.server.Load(); s != nil {
		return *s, nil
	}
	db.learnMu.Lock()
	defer db.learnMu.Unlock()
	if s := db.server.Load(); s != nil {
		return *s, nil
	}
	var info serverInfo
	if err := db.pool.QueryRowContext(ctx, "SELECT VERSION()").Scan(&info.version); err != nil {
		return info, db.connectError(ctx, err)
	}
	info.flavour = flavourMySQL
	if strings.Contains(strings.ToLower(info.version), "mariadb") {
		info.flavour = flavourMariaDB
	}
	// The column's declared length is the limit the server enforces
	// (MySQL 5.7/8: 32; MariaDB: 80, 128 from 10.6 or so). mysql.user is a
	// view on MariaDB 10.4+, which information_schema describes all the same.
	var limit sql.NullInt64
	err := db.pool.QueryRowContext(ctx, `
		SELECT CHARACTER_MAXIMUM_LENGTH FROM information_schema.COLUMNS
		WHERE TABLE_SCHEMA = 'mysql' AND TABLE_NAME = 'user' AND COLUMN_NAME = 'User'`).Scan(&limit)
	switch {
	case err == nil && limit.Valid && limit.Int64 > 0:
		// Capped at what checkUsername accepts before first contact.
		info.nameLimit = min(int(limit.Int64), maxNameLen)
	case err == nil || errors.Is(err, sql.ErrNoRows):
		// Not visible to the admin user: the documented limit of the
		// flavour's oldest supported version, which is never too long.
		info.nameLimit = fallbackNameLimit
		if info.flavour == flavourMariaDB {
			info.nameLimit = 80
		}
	default:
		return info, wrap(ctx, "read user name limit", err, unavailable(err))
	}
	if _, _, err := usernameRules.Split(info.nameLimit, len(db.users.Prefix())); err != nil {
		return info, fmt.Errorf("mysql: %s %s: %w", info.flavour, info.version, err)
	}
	if len(db.marker) > info.nameLimit {
		return info, fmt.Errorf("mysql: %s %s: marker %q is longer than the server's %d-character limit on role names", info.flavour, info.version, db.marker, info.nameLimit)
	}
	db.server.Store(&info)
	return info, nil
}

// knownNameLimit is the server's limit if it has been read, else the
// smallest limit of any supported server, so a name generated before first
// contact fits everywhere.
func (db *DB) knownNameLimit() int {
	if s := db.server.Load(); s != nil {
		return s.nameLimit
	}
	return fallbackNameLimit
}

// Capabilities implements plugins.Database: neither MySQL nor MariaDB can
// make an account expire at a point in time.
func (db *DB) Capabilities() plugins.Capabilities {
	return plugins.Capabilities{ServerExpiry: false}
}

// Close implements plugins.Database.
func (db *DB) Close() { _ = db.pool.Close() } // closing a pool fails only if already closed

// UpdateUser implements plugins.Database. There is no server-side expiry to
// move (no VALID UNTIL, see the package comment): it checks its arguments
// and does nothing, and the broker's expiry loop remains the only thing that
// ends the user.
func (db *DB) UpdateUser(ctx context.Context, req plugins.UpdateUserRequest) error {
	if err := db.checkUsername(req.Username); err != nil {
		return err
	}
	if req.Expiration.IsZero() {
		return fmt.Errorf("mysql: update %s: expiration is required", req.Username)
	}
	return nil
}

// ListUsers implements plugins.Database: every user that holds the marker
// role and whose name matches the generated pattern, whatever its host part.
func (db *DB) ListUsers(ctx context.Context) ([]string, error) {
	info, err := db.serverInfo(ctx)
	if err != nil {
		return nil, err
	}
	// LEFT() rather than LIKE: LIKE's escape character depends on sql_mode.
	q := "SELECT DISTINCT User FROM mysql.roles_mapping WHERE Role = ? AND LEFT(User, ?) = ? ORDER BY User"
	if info.flavour == flavourMySQL {
		q = "SELECT DISTINCT TO_USER FROM mysql.role_edges WHERE FROM_USER = ? AND LEFT(TO_USER, ?) = ? ORDER BY TO_USER"
	}
	prefix := db.users.Prefix() + "_"
	rows, err := db.pool.QueryContext(ctx, q, db.marker, len(prefix), prefix)
	if err != nil {
		return nil, wrap(ctx, "list users", err, unavailable(err))
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, wrap(ctx, "list users", err, unavailable(err))
		}
		if db.users.Match(n) {
			out = append(out, n)
		}
	}
	if err := rows.Err(); err != nil {
		return nil, wrap(ctx, "list users", err, unavailable(err))
	}
	return out, nil
}

// ensureMarker creates the marker role unless it is known to exist.
func (db *DB) ensureMarker(ctx context.Context, q querier) error {
	db.markerMu.Lock()
	defer db.markerMu.Unlock()
	if db.markerReady {
		return nil
	}
	role, err := quoteString(db.marker)
	if err != nil {
		return err
	}
	if _, err := q.ExecContext(ctx, "CREATE ROLE IF NOT EXISTS "+role); err != nil {
		return err
	}
	db.markerReady = true
	return nil
}

// forgetMarker makes the next ensureMarker create the role again (someone
// dropped it).
func (db *DB) forgetMarker() {
	db.markerMu.Lock()
	defer db.markerMu.Unlock()
	db.markerReady = false
}

// hosts returns the host part of every account named name.
func (db *DB) hosts(ctx context.Context, q querier, name string) ([]string, error) {
	rows, err := q.QueryContext(ctx, "SELECT Host FROM mysql.user WHERE User = ?", name)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var h string
		if err := rows.Scan(&h); err != nil {
			return nil, err
		}
		out = append(out, h)
	}
	return out, rows.Err()
}

// querier is what *sql.DB and *sql.Conn share.
type querier interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// Server error numbers the plugin acts on.
const (
	erConCount            = 1040
	erAccessDenied        = 1045
	erBadDB               = 1049
	erServerShutdown      = 1053
	erNoSuchThread        = 1094
	erNonexistingGrant    = 1141
	erNonexistingTblGrant = 1147
	erAbortingConnection  = 1152
	erNetReadError        = 1158
	erNetReadInterrupted  = 1159
	erNetErrorOnWrite     = 1160
	erNetWriteInterrupted = 1161
	erTooManyUserConns    = 1203
	erLockWaitTimeout     = 1205
	erLockDeadlock        = 1213
	erUserLimitReached    = 1226
	erOptionPrevents      = 1290 // e.g. --read-only
	erCannotUser          = 1396 // ALTER/DROP USER of an absent account
	erDBAccessDenied      = 1044 // no privilege on a database (also at connect, on the configured schema)
	erPasswordNotAllowed  = 1132 // changing another user's password without UPDATE on mysql.*
	erTableAccessDenied   = 1142
	erColumnAccessDenied  = 1143
	erNoPermissionCreate  = 1211
	erSpecificAccess      = 1227 // "you need (at least one of) the X privilege(s)"
	erProcAccessDenied    = 1370
	erCantCreateWithGrant = 1410
	erAccessDeniedNoPass  = 1698 // MariaDB: GRANT of a role without its ADMIN OPTION (also a refused socket login, which the broker never uses)
	erReadOnlyMode        = 1836
	erConnectionKilled    = 1927
	erInvalidRole         = 1959 // MariaDB: GRANT of a role that does not exist
	erUnknownAuthID       = 3523 // MySQL: the same
	erClientInteraction   = 4031 // MySQL 8: idle connection closed by the server
)

func mysqlErr(err error) (*mysql.MySQLError, bool) {
	return errors.AsType[*mysql.MySQLError](err)
}

func errNumber(err error) uint16 {
	if me, ok := mysqlErr(err); ok {
		return me.Number
	}
	return 0
}

// unavailable tells a broken or refused connection, or a server that cannot
// take writes right now, from a statement the server rejected.
func unavailable(err error) bool {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return false
	}
	me, ok := mysqlErr(err)
	if !ok {
		// Network, TLS, protocol, closed pool.
		return true
	}
	switch me.Number {
	case erConCount, erAccessDenied, erBadDB, erServerShutdown, erAbortingConnection,
		erNetReadError, erNetReadInterrupted, erNetErrorOnWrite, erNetWriteInterrupted,
		erTooManyUserConns, erLockWaitTimeout, erLockDeadlock, erUserLimitReached,
		erOptionPrevents, erReadOnlyMode, erConnectionKilled, erClientInteraction:
		return true
	}
	return false
}

// adminKind tells a refused admin login and a privilege the admin lacks
// from other errors, so the broker can tell an operator what to fix.
func adminKind(err error) plugins.Kind {
	switch errNumber(err) {
	case erAccessDenied:
		return plugins.KindAdminLogin
	case erAccessDeniedNoPass, erDBAccessDenied, erPasswordNotAllowed, erTableAccessDenied, erColumnAccessDenied,
		erNoPermissionCreate, erSpecificAccess, erProcAccessDenied, erCantCreateWithGrant:
		return plugins.KindAdminPrivilege
	}
	return 0
}

// wrap adds the operation and, for connection problems, plugins.KindUnavailable;
// for a refused login or a missing privilege, the admin kinds (adminKind).
func wrap(ctx context.Context, op string, err error, isUnavailable bool) error {
	return plugins.Classify(plugins.Wrap(ctx, "mysql: "+op, err, isUnavailable), adminKind(err))
}
