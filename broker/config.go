package broker

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"gopkg.in/yaml.v3"

	"github.com/credbroker/credbroker/identity"
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

	Databases map[string]DatabaseConfig `yaml:"databases"`
	Roles     map[string]RoleConfig     `yaml:"roles"`

	// catalog knows the engines the databases name; NewApp opens them
	// through it.
	catalog *plugins.Catalog
}

// SVIDConfig says where the broker's own X.509-SVID comes from: the SPIFFE
// Workload API, or files that are re-read when they change.
type SVIDConfig struct {
	WorkloadAPISocket string   `yaml:"workload_api_socket"`
	CertFile          string   `yaml:"cert_file"`
	KeyFile           string   `yaml:"key_file"`
	BundleFile        string   `yaml:"bundle_file"`
	ReloadInterval    Duration `yaml:"reload_interval"`
}

// LeaseStoreConfig locates the embedded lease store.
type LeaseStoreConfig struct {
	Path string `yaml:"path"`
}

// RevocationConfig tunes the expiry loop.
type RevocationConfig struct {
	Concurrency int      `yaml:"concurrency"`
	RatePerSec  float64  `yaml:"rate_per_second"`
	BackoffBase Duration `yaml:"backoff_base"`
	BackoffMax  Duration `yaml:"backoff_max"`
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

var (
	roleNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	dbNameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	prefixRE   = regexp.MustCompile(`^` + plugins.PrefixPattern + `$`)
	instanceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
)

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
	if c.Reconciler.Interval.Duration == 0 {
		c.Reconciler.Interval.Duration = 5 * time.Minute
	}
	if c.SVID.ReloadInterval.Duration == 0 {
		c.SVID.ReloadInterval.Duration = 5 * time.Second
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
		c.Databases[name] = d
	}
}

// Validate checks every key and reports the first problem, naming the key.
func (c *Config) Validate() error {
	bad := func(key, format string, args ...any) error {
		return &ConfigError{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	durations := map[string]Duration{
		"svid.reload_interval":    c.SVID.ReloadInterval,
		"revocation.backoff_base": c.Revocation.BackoffBase,
		"revocation.backoff_max":  c.Revocation.BackoffMax,
		"registry.poll_interval":  c.Registry.PollInterval,
		"reconciler.interval":     c.Reconciler.Interval,
	}
	for name, d := range c.Databases {
		durations["databases."+name+".connect_timeout"] = d.ConnectTimeout
	}
	for name, r := range c.Roles {
		durations["roles."+name+".default_ttl"] = r.DefaultTTL
		durations["roles."+name+".max_ttl"] = r.MaxTTL
	}
	for _, key := range sortedKeys(durations) {
		if err := durations[key].check(key); err != nil {
			return err
		}
	}
	if _, _, err := net.SplitHostPort(c.Listen); err != nil {
		return bad("listen", "want host:port, got %q", c.Listen)
	}
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil || c.TrustDomain == "" {
		return bad("trust_domain", "want a trust domain name such as example.org, got %q", c.TrustDomain)
	}
	s := c.SVID
	files := s.CertFile != "" || s.KeyFile != "" || s.BundleFile != ""
	switch {
	case s.WorkloadAPISocket != "" && files:
		return bad("svid", "set either workload_api_socket or cert_file/key_file/bundle_file, not both")
	case s.WorkloadAPISocket == "" && !files:
		return bad("svid", "set workload_api_socket, or cert_file, key_file and bundle_file")
	case files && s.CertFile == "":
		return bad("svid.cert_file", "required with key_file/bundle_file")
	case files && s.KeyFile == "":
		return bad("svid.key_file", "required with cert_file/bundle_file")
	case files && s.BundleFile == "":
		return bad("svid.bundle_file", "required with cert_file/key_file")
	case s.WorkloadAPISocket != "" && !strings.HasPrefix(s.WorkloadAPISocket, "unix://") && !strings.HasPrefix(s.WorkloadAPISocket, "tcp://"):
		return bad("svid.workload_api_socket", "want unix:///path or tcp://host:port, got %q", s.WorkloadAPISocket)
	}
	if !instanceRE.MatchString(c.InstanceID) {
		return bad("instance_id", "must match %s", instanceRE)
	}
	if r := c.Registry; r.SPIREServerAddress != "" {
		if _, _, err := net.SplitHostPort(r.SPIREServerAddress); err != nil {
			return bad("registry.spire_server_address", "want host:port, got %q", r.SPIREServerAddress)
		}
		id, err := spiffeid.FromString(r.SPIREServerID)
		if err != nil {
			return bad("registry.spire_server_id", "want the SPIRE server's SPIFFE ID (spiffe://%s/spire/server): %v", c.TrustDomain, err)
		}
		if id.TrustDomain() != td {
			return bad("registry.spire_server_id", "%q is outside trust domain %q", r.SPIREServerID, c.TrustDomain)
		}
		if r.PollInterval.Duration < 100*time.Millisecond {
			return bad("registry.poll_interval", "must be at least 100ms")
		}
	} else if r.SPIREServerID != "" {
		return bad("registry.spire_server_address", "required with spire_server_id")
	}
	if c.Reconciler.Interval.Duration < time.Second {
		return bad("reconciler.interval", "must be at least 1s")
	}
	for i, a := range c.Admins {
		id, err := spiffeid.FromString(a)
		if err != nil {
			return bad(fmt.Sprintf("admins[%d]", i), "not a SPIFFE ID: %v", err)
		}
		if id.TrustDomain() != td {
			return bad(fmt.Sprintf("admins[%d]", i), "%q is outside trust domain %q", a, c.TrustDomain)
		}
	}
	if c.LeaseStore.Path == "" {
		return bad("lease_store.path", "required")
	}
	if c.Revocation.Concurrency < 1 || c.Revocation.Concurrency > 256 {
		return bad("revocation.concurrency", "want 1..256, got %d", c.Revocation.Concurrency)
	}
	if c.Revocation.RatePerSec < 0 {
		return bad("revocation.rate_per_second", "must be positive")
	}
	if c.Revocation.BackoffMax.Duration < c.Revocation.BackoffBase.Duration {
		return bad("revocation.backoff_max", "must be at least backoff_base")
	}
	if c.Log.Format != "" && c.Log.Format != "json" && c.Log.Format != "text" {
		return bad("log.format", "want json or text, got %q", c.Log.Format)
	}
	if _, err := parseLevel(c.Log.Level); err != nil {
		return bad("log.level", "%v", err)
	}
	if len(c.Databases) == 0 {
		return bad("databases", "at least one database is required")
	}
	if c.catalog == nil {
		return bad("databases", "no plugin catalog (build the Config with ParseConfig or LoadConfig)")
	}
	for _, name := range sortedKeys(c.Databases) {
		d := c.Databases[name]
		key := "databases." + name
		if !dbNameRE.MatchString(name) {
			return bad(key, "name must match %s", dbNameRE)
		}
		factory, err := c.catalog.Lookup(d.Plugin)
		if err != nil {
			return bad(key+".plugin", "%v", err)
		}
		if d.Password != "" {
			return bad(key+".password", "inline secrets are not allowed; use password_env or password_file")
		}
		if d.Host == "" {
			return bad(key+".host", "required")
		}
		if d.Port < 1 || d.Port > 65535 {
			return bad(key+".port", "want 1..65535, got %d", d.Port)
		}
		if d.Database == "" {
			return bad(key+".database", "required")
		}
		if d.Username == "" {
			return bad(key+".username", "required")
		}
		if (d.PasswordEnv == "") == (d.PasswordFile == "") {
			return bad(key, "set exactly one of password_env or password_file")
		}
		switch d.SSLMode {
		case "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
		default:
			return bad(key+".sslmode", "unknown mode %q", d.SSLMode)
		}
		if !prefixRE.MatchString(d.UsernamePrefix) {
			return bad(key+".username_prefix", "must match %s", prefixRE)
		}
		if d.MaxConnections < 1 {
			return bad(key+".max_connections", "must be at least 1")
		}
		if err := c.catalog.CheckOptions(factory.Type(), d.Options); err != nil {
			if oe, ok := errors.AsType[*plugins.OptionError](err); ok {
				return bad(key+"."+oe.Key, "%s", oe.Msg)
			}
			return bad(key, "%v", err)
		}
	}
	if len(c.Roles) == 0 {
		return bad("roles", "at least one role is required")
	}
	for _, name := range sortedKeys(c.Roles) {
		r := c.Roles[name]
		key := "roles." + name
		if !roleNameRE.MatchString(name) {
			return bad(key, "name must match %s", roleNameRE)
		}
		if _, ok := c.Databases[r.Database]; !ok {
			return bad(key+".database", "no database named %q", r.Database)
		}
		if r.DefaultTTL.Duration <= 0 {
			return bad(key+".default_ttl", "required and positive")
		}
		if r.MaxTTL.Duration < r.DefaultTTL.Duration {
			return bad(key+".max_ttl", "must be at least default_ttl (%s)", r.DefaultTTL)
		}
		if len(r.AllowedSPIFFEIDs) == 0 {
			return bad(key+".allowed_spiffe_ids", "at least one pattern is required (deny is the default)")
		}
		for i, p := range r.AllowedSPIFFEIDs {
			pat, err := identity.ParsePattern(p)
			if err != nil {
				return bad(fmt.Sprintf("%s.allowed_spiffe_ids[%d]", key, i), "%v", err)
			}
			if pat.TrustDomain() != td {
				return bad(fmt.Sprintf("%s.allowed_spiffe_ids[%d]", key, i), "%q is outside trust domain %q", p, c.TrustDomain)
			}
		}
		if len(r.CreationStatements) == 0 {
			return bad(key+".creation_statements", "required")
		}
		if err := plugins.ValidateStatements(r.CreationStatements, true); err != nil {
			return bad(key+".creation_statements", "%v", err)
		}
		factory, err := c.catalog.Lookup(c.Databases[r.Database].Plugin)
		if err != nil {
			return bad(key+".database", "%v", err) // unreachable: databases are checked first
		}
		if err := factory.CheckStatements(r.CreationStatements); err != nil {
			return bad(key+".creation_statements", "%v", err)
		}
		if err := plugins.ValidateStatements(r.RevocationStatements, false); err != nil {
			return bad(key+".revocation_statements", "%v", err)
		}
		for i, s := range r.RevocationStatements {
			if strings.Contains(s, "{{password}}") || strings.Contains(s, "{{expiration}}") {
				return bad(fmt.Sprintf("%s.revocation_statements[%d]", key, i), "only {{name}} is available in revocation statements")
			}
		}
	}
	return nil
}

// AdminPassword resolves a database's admin password from its reference.
func (d DatabaseConfig) AdminPassword() (string, error) {
	if d.PasswordEnv != "" {
		v, ok := os.LookupEnv(d.PasswordEnv)
		if !ok {
			return "", fmt.Errorf("environment variable %s is not set", d.PasswordEnv)
		}
		return v, nil
	}
	b, err := os.ReadFile(d.PasswordFile)
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
