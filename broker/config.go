package broker

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"os"
	"sort"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/credbroker/credbroker/lease/pgstore"
	"github.com/credbroker/credbroker/plugins"
)

// Config is the operator's YAML file. docs/config.md is its reference; keep
// the two in step.
type Config struct {
	Listen      string `yaml:"listen"`
	TrustDomain string `yaml:"trust_domain"`
	// InstanceID names this broker in the marker on every user it creates,
	// so reconciliation never touches users of another broker instance.
	InstanceID string           `yaml:"instance_id"`
	SVID       SVIDConfig       `yaml:"svid"`
	Admins     []string         `yaml:"admins"`
	LeaseStore LeaseStoreConfig `yaml:"lease_store"`
	Revocation RevocationConfig `yaml:"revocation"`
	Log        LogConfig        `yaml:"log"`
	Registry   RegistryConfig   `yaml:"registry"`
	Reconciler ReconcilerConfig `yaml:"reconciler"`
	Audit      AuditConfig      `yaml:"audit"`
	Metrics    MetricsConfig    `yaml:"metrics"`
	Server     ListenerConfig   `yaml:"server"`
	Watch      WatchConfig      `yaml:"watch"`

	Databases map[string]DatabaseConfig `yaml:"databases"`
	Roles     map[string]RoleConfig     `yaml:"roles"`

	// catalog knows the engines the databases name; NewApp opens them
	// through it.
	catalog *plugins.Catalog
	// warnings are what Validate accepted but an operator should hear
	// about (Warnings).
	warnings []string
}

// Warnings are what the config allows explicitly but an operator should
// know at every load: the privileged clauses of roles that set
// allow_privileged. check-config prints them, NewApp logs them.
func (c *Config) Warnings() []string { return c.warnings }

// SVIDConfig says where the broker's own X.509-SVID comes from: the SPIFFE
// Workload API, or files that are re-read when they change.
type SVIDConfig struct {
	WorkloadAPISocket string   `yaml:"workload_api_socket"`
	CertFile          string   `yaml:"cert_file"`
	KeyFile           string   `yaml:"key_file"`
	BundleFile        string   `yaml:"bundle_file"`
	ReloadInterval    Duration `yaml:"reload_interval"`
}

// LeaseStoreConfig locates the lease store: the embedded bbolt file at
// Path (the default), or a PostgreSQL schema. Exactly one is set.
type LeaseStoreConfig struct {
	Path     string               `yaml:"path"`
	Postgres *PostgresStoreConfig `yaml:"postgres"`
}

// PostgresStoreConfig is a lease store in a PostgreSQL schema
// (lease/pgstore), shared by every broker (replica) configured with it:
// each serves every call, and they split the expiry work (lease.Shared).
// The password is only ever a reference, as for the databases.
type PostgresStoreConfig struct {
	Host           string   `yaml:"host"`
	Port           int      `yaml:"port"`
	Database       string   `yaml:"database"`
	Username       string   `yaml:"username"`
	PasswordEnv    string   `yaml:"password_env"`
	PasswordFile   string   `yaml:"password_file"`
	SSLMode        string   `yaml:"sslmode"`
	MaxConnections int      `yaml:"max_connections"`
	ConnectTimeout Duration `yaml:"connect_timeout"`
	Schema         string   `yaml:"schema"`

	// Several replicas share the store (lease.Shared). Replica names this
	// broker in the store's claims (default host:pid). IssueTimeout bounds
	// the creation of a user (default 3s); an issuance left by a replica
	// that died is cleaned up by another within twice that plus one claim
	// interval. ClaimInterval is how often each replica asks the store for
	// due leases (default 500ms); ClaimLookahead how far ahead of their
	// expiry leases are claimed (default 1s).
	Replica        string   `yaml:"replica"`
	IssueTimeout   Duration `yaml:"issue_timeout"`
	ClaimInterval  Duration `yaml:"claim_interval"`
	ClaimLookahead Duration `yaml:"claim_lookahead"`

	// Password exists only so that an inline secret is refused with a
	// message that says what to do instead.
	Password string `yaml:"password"`
}

// RevocationConfig tunes the expiry loop.
type RevocationConfig struct {
	Concurrency int      `yaml:"concurrency"`
	RatePerSec  float64  `yaml:"rate_per_second"`
	BackoffBase Duration `yaml:"backoff_base"`
	BackoffMax  Duration `yaml:"backoff_max"`
	// Timeout bounds each drop and extend of a user (0: 30s with a bbolt
	// store, 10s with a shared PostgreSQL one, where a replica that dies
	// during a drop leaves the lease to another after Timeout + 2s).
	Timeout Duration `yaml:"timeout"`
}

// RegistryConfig points the broker at a SPIRE server whose registration
// entries it follows: leases of a SPIFFE ID no entry yields any longer are
// revoked within one poll interval.
type RegistryConfig struct {
	SPIREServerAddress string   `yaml:"spire_server_address"`
	SPIREServerID      string   `yaml:"spire_server_id"`
	PollInterval       Duration `yaml:"poll_interval"`
}

// ReconcilerConfig controls the orphan reconciler (off by default).
type ReconcilerConfig struct {
	Enabled  bool     `yaml:"enabled"`
	Interval Duration `yaml:"interval"`
}

// WatchConfig tunes CredentialService/WatchCredential (docs/watch.md).
type WatchConfig struct {
	// Overlap is how long a replaced credential stays valid after its
	// successor is sent, capped at a third of a lease's life (default 1m).
	Overlap Duration `yaml:"overlap"`
	// DisconnectGrace is how long after a stream's client went away the
	// broker revokes the stream's leases (default 30s); 0 never revokes
	// them: they run out at their expiry, no longer renewed.
	DisconnectGrace *Duration `yaml:"disconnect_grace"`
}

// Settings are the watch settings with their defaults.
func (w WatchConfig) Settings() WatchSettings {
	s := WatchSettings{Overlap: w.Overlap.Duration, DisconnectGrace: DefaultDisconnectGrace}
	if w.DisconnectGrace != nil {
		s.DisconnectGrace = w.DisconnectGrace.Duration
	}
	return s
}

// Defaults of the watch: section.
const (
	DefaultWatchOverlap    = time.Minute
	DefaultDisconnectGrace = 30 * time.Second
)

// AuditConfig turns on the audit log (docs/audit.md): a file, stdout, or
// both; off when neither is set.
type AuditConfig struct {
	// File is the log file; empty: no file.
	File string `yaml:"file"`
	// Stdout copies every record to standard output.
	Stdout bool `yaml:"stdout"`
	// MaxSize rotates File once it holds this many bytes: an integer, or a
	// number with KiB, MiB or GiB (default 64MiB).
	MaxSize ByteSize `yaml:"max_size"`
	// FailClosed refuses issuance (UNAVAILABLE) when the issue record
	// cannot be written. Default true when File is set.
	FailClosed *bool `yaml:"fail_closed"`
	// SyncInterval, when set, returns each record once it is written to
	// File and fdatasyncs File at most this much later (audit.Options.
	// SyncEvery): faster, and a machine crash can lose the records of the
	// last interval. Default 0: every record is synced before the
	// operation it records is answered.
	SyncInterval Duration `yaml:"sync_interval"`
}

// MetricsConfig turns on the Prometheus metrics (docs/metrics.md): a
// listener of their own serving /metrics only; off when Listen is empty.
type MetricsConfig struct {
	// Listen is host:port; empty: no metrics (the default).
	Listen string `yaml:"listen"`
}

// ListenerConfig tunes the gRPC listener's connections (key server:).
// A TLS connection is verified once, at its handshake; recycling it every
// MaxConnectionAge makes every client present its current SVID again
// (grpc keepalive.ServerParameters).
type ListenerConfig struct {
	// MaxConnectionAge is how long a connection may live before the server
	// sends GOAWAY (±10% jitter); default 30m.
	MaxConnectionAge Duration `yaml:"max_connection_age"`
	// MaxConnectionAgeGrace is how long calls running at GOAWAY may still
	// take before the connection is closed; default 1m.
	MaxConnectionAgeGrace Duration `yaml:"max_connection_age_grace"`
}

// Default connection ages of the server: section.
const (
	DefaultMaxConnectionAge      = 30 * time.Minute
	DefaultMaxConnectionAgeGrace = time.Minute
)

// Enabled reports whether the audit log is on.
func (a AuditConfig) Enabled() bool { return a.File != "" || a.Stdout }

// failClosed is FailClosed with its default.
func (a AuditConfig) failClosed() bool {
	if a.FailClosed != nil {
		return *a.FailClosed
	}
	return a.File != ""
}

// ByteSize reads a size in bytes from YAML: 1048576, "512KiB", "64MiB",
// "1GiB". A bad value is kept and reported by Validate, which knows the
// key's name.
type ByteSize struct {
	Bytes int64
	bad   string
}

var byteUnits = []struct {
	suffix string
	mult   int64
}{{"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}

// UnmarshalYAML implements yaml.Unmarshaler.
func (b *ByteSize) UnmarshalYAML(n *yaml.Node) error {
	b.bad = n.Value
	if b.bad == "" {
		b.bad = "(not a scalar)"
	}
	if n.Kind != yaml.ScalarNode {
		return nil
	}
	v := strings.TrimSpace(n.Value)
	for _, u := range byteUnits {
		num, ok := strings.CutSuffix(v, u.suffix)
		if !ok {
			continue
		}
		i, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
		if err != nil || i < 0 || i > math.MaxInt64/u.mult {
			return nil
		}
		b.Bytes, b.bad = i*u.mult, ""
		return nil
	}
	return nil
}

func (b ByteSize) check(key string) error {
	if b.bad != "" {
		return &ConfigError{Key: key, Msg: fmt.Sprintf("want a size in bytes, or with KiB, MiB or GiB such as 64MiB, got %q", b.bad)}
	}
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (b ByteSize) MarshalYAML() (any, error) { return b.Bytes, nil }

// LogConfig selects the log format and level.
type LogConfig struct {
	Format string `yaml:"format"` // json (default) or text
	Level  string `yaml:"level"`  // debug, info (default), warn, error
}

// DatabaseConfig is one database server. The admin password is only ever a
// reference (environment variable or file), never inline.
type DatabaseConfig struct {
	Plugin         string   `yaml:"plugin"`
	Host           string   `yaml:"host"`
	Port           int      `yaml:"port"`
	Database       string   `yaml:"database"`
	Username       string   `yaml:"username"`
	PasswordEnv    string   `yaml:"password_env"`
	PasswordFile   string   `yaml:"password_file"`
	SSLMode        string   `yaml:"sslmode"`
	MaxConnections int      `yaml:"max_connections"`
	ConnectTimeout Duration `yaml:"connect_timeout"`
	// UsernamePrefix starts every user the broker creates here (default
	// "cb"); with the marker comment it is how the broker recognises its own.
	UsernamePrefix string `yaml:"username_prefix"`
	// PingInterval is how often the broker pings the server to report it
	// in the health service (credbroker.database.<name>). Default 10s.
	PingInterval Duration `yaml:"ping_interval"`
	// RotateAdminEvery, if set, rotates the broker's own admin password on
	// this schedule (as AdminService/RotateAdminCredential does); it needs
	// password_file. Default off.
	RotateAdminEvery Duration `yaml:"rotate_admin_every"`
	// Options are the keys only the plugin knows (mysql: user_host;
	// postgres: scram_iterations), checked by its plugins.Factory. Any key
	// not above lands here, so the catalog refuses unknown ones by name.
	Options map[string]any `yaml:",inline"`

	// Password exists only so that an inline secret is refused with a
	// message that says what to do instead.
	Password string `yaml:"password"`
}

// RoleConfig is one role template.
type RoleConfig struct {
	Database             string   `yaml:"database"`
	DefaultTTL           Duration `yaml:"default_ttl"`
	MaxTTL               Duration `yaml:"max_ttl"`
	AllowedSPIFFEIDs     []string `yaml:"allowed_spiffe_ids"`
	CreationStatements   []string `yaml:"creation_statements"`
	RevocationStatements []string `yaml:"revocation_statements"`
	// AllowPrivileged lets the creation statements grant server-wide
	// power (SUPERUSER, ON *.*, …: the engine's PrivilegedClauses), which
	// is refused otherwise; each such clause is a warning at load.
	AllowPrivileged bool `yaml:"allow_privileged"`
	// Quota limits the role's live leases and issuance rate (quota.go).
	Quota Quota `yaml:"quota"`
}

// Duration reads "90s", "1h30m" from YAML. A bad value is kept and reported
// by Validate, which knows the key's name.
type Duration struct {
	time.Duration
	bad string
}

// UnmarshalYAML implements yaml.Unmarshaler.
func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	v, err := time.ParseDuration(n.Value)
	if n.Kind != yaml.ScalarNode || err != nil {
		d.bad = n.Value
		if d.bad == "" {
			d.bad = "(not a scalar)"
		}
		return nil
	}
	d.Duration = v
	return nil
}

func (d Duration) check(key string) error {
	if d.bad != "" {
		return &ConfigError{Key: key, Msg: fmt.Sprintf("want a duration such as 30s or 1h, got %q", d.bad)}
	}
	if d.Duration < 0 {
		return &ConfigError{Key: key, Msg: "must not be negative"}
	}
	return nil
}

// MarshalYAML implements yaml.Marshaler.
func (d Duration) MarshalYAML() (any, error) { return d.String(), nil }

// ConfigError names the offending key.
type ConfigError struct {
	Key string
	Msg string
}

func (e *ConfigError) Error() string { return "config: " + e.Key + ": " + e.Msg }

// LoadConfig reads, parses and validates the file at path (see ParseConfig).
func LoadConfig(path string, catalog *plugins.Catalog) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseConfig(b, catalog)
}

// ParseConfig parses and validates YAML. Unknown keys are refused so that a
// typo cannot silently disable a setting. catalog is the set of database
// engines the plugin keys may name (plugins/builtin.Catalog() in cmd/); the
// Config keeps it so that NewApp opens each database through it.
func ParseConfig(b []byte, catalog *plugins.Catalog) (*Config, error) {
	if catalog == nil {
		return nil, errors.New("config: no plugin catalog")
	}
	c := Config{catalog: catalog}
	dec := yaml.NewDecoder(bytes.NewReader(b))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return nil, fmt.Errorf("config: %s", strings.TrimPrefix(err.Error(), "yaml: "))
	}
	c.applyDefaults()
	if err := c.Validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Config) applyDefaults() {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8443"
	}
	if c.InstanceID == "" {
		c.InstanceID = "default"
	}
	if c.Registry.PollInterval.Duration == 0 {
		c.Registry.PollInterval.Duration = 5 * time.Second
	}
	if c.Watch.Overlap.Duration == 0 {
		c.Watch.Overlap.Duration = DefaultWatchOverlap
	}
	if c.Reconciler.Interval.Duration == 0 {
		c.Reconciler.Interval.Duration = 5 * time.Minute
	}
	if c.SVID.ReloadInterval.Duration == 0 {
		c.SVID.ReloadInterval.Duration = 5 * time.Second
	}
	if c.Server.MaxConnectionAge.Duration == 0 {
		c.Server.MaxConnectionAge.Duration = DefaultMaxConnectionAge
	}
	if c.Server.MaxConnectionAgeGrace.Duration == 0 {
		c.Server.MaxConnectionAgeGrace.Duration = DefaultMaxConnectionAgeGrace
	}
	if c.Revocation.Concurrency == 0 {
		c.Revocation.Concurrency = 4
	}
	if c.Revocation.RatePerSec == 0 {
		c.Revocation.RatePerSec = 50
	}
	if c.Revocation.BackoffBase.Duration == 0 {
		c.Revocation.BackoffBase.Duration = time.Second
	}
	if c.Revocation.BackoffMax.Duration == 0 {
		c.Revocation.BackoffMax.Duration = time.Minute
	}
	if p := c.LeaseStore.Postgres; p != nil {
		if p.Port == 0 {
			p.Port = pgstore.DefaultPort
		}
		if p.SSLMode == "" {
			p.SSLMode = "prefer"
		}
		if p.MaxConnections == 0 {
			p.MaxConnections = pgstore.DefaultMaxConns
		}
		if p.ConnectTimeout.Duration == 0 {
			p.ConnectTimeout.Duration = pgstore.DefaultConnectTimeout
		}
		if p.Schema == "" {
			p.Schema = pgstore.DefaultSchema
		}
		if p.IssueTimeout.Duration == 0 {
			p.IssueTimeout.Duration = 3 * time.Second
		}
		if p.ClaimInterval.Duration == 0 {
			p.ClaimInterval.Duration = 500 * time.Millisecond
		}
		if p.ClaimLookahead.Duration == 0 {
			p.ClaimLookahead.Duration = time.Second
		}
	}
	for name, d := range c.Databases {
		if d.SSLMode == "" {
			d.SSLMode = "prefer"
		}
		if d.MaxConnections == 0 {
			d.MaxConnections = 8
		}
		if d.UsernamePrefix == "" {
			d.UsernamePrefix = "cb"
		}
		if d.ConnectTimeout.Duration == 0 {
			d.ConnectTimeout.Duration = 5 * time.Second
		}
		if d.PingInterval.Duration == 0 {
			d.PingInterval.Duration = DefaultPingInterval
		}
		c.Databases[name] = d
	}
}

// DefaultPingInterval is how often a database is pinged for the health
// service when its ping_interval is not set.
const DefaultPingInterval = 10 * time.Second

// AdminPassword resolves a database's admin password from its reference.
func (d DatabaseConfig) AdminPassword() (string, error) {
	return resolvePassword(d.PasswordEnv, d.PasswordFile)
}

// StoreConfig is the pgstore configuration of the section, with the
// password resolved from its reference.
func (p PostgresStoreConfig) StoreConfig() (pgstore.Config, error) {
	pw, err := resolvePassword(p.PasswordEnv, p.PasswordFile)
	if err != nil {
		return pgstore.Config{}, fmt.Errorf("lease_store.postgres: %w", err)
	}
	c := p.storeConfig()
	c.Password = pw
	return c, nil
}

// storeConfig is StoreConfig without the password, for checks.
func (p PostgresStoreConfig) storeConfig() pgstore.Config {
	return pgstore.Config{
		Host:           p.Host,
		Port:           p.Port,
		Database:       p.Database,
		Username:       p.Username,
		SSLMode:        p.SSLMode,
		MaxConns:       int32(p.MaxConnections),
		ConnectTimeout: p.ConnectTimeout.Duration,
		Schema:         p.Schema,
		Replica:        p.Replica,
	}
}

// resolvePassword reads a password from the environment variable env or,
// if env is empty, from the file at file.
func resolvePassword(env, file string) (string, error) {
	if env != "" {
		v, ok := os.LookupEnv(env)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", env)
		}
		return v, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", fmt.Errorf("read password_file: %w", err)
	}
	v := strings.TrimRight(string(b), "\r\n")
	if v == "" {
		return "", errors.New("password_file is empty")
	}
	return v, nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
