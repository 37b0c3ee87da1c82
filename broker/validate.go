package broker

import (
	"errors"
	"fmt"
	"net"
	"regexp"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/plugins"
)

// The names the config may give; request role names are checked against
// the same pattern (admission.go).
var (
	roleNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	dbNameRE   = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)
	prefixRE   = regexp.MustCompile(`^` + plugins.PrefixPattern + `$`)
	instanceRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)
	// pgSchemaRE is stricter than PostgreSQL (which quotes anything): a
	// name an operator can type unquoted in psql.
	pgSchemaRE = regexp.MustCompile(`^[a-z_][a-z0-9_]{0,62}$`)
)

// Validate checks every key and reports the first problem, naming the key.
func (c *Config) Validate() error {
	c.warnings = nil
	bad := func(key, format string, args ...any) error {
		return &ConfigError{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	durations := map[string]Duration{
		"svid.reload_interval":            c.SVID.ReloadInterval,
		"revocation.backoff_base":         c.Revocation.BackoffBase,
		"revocation.backoff_max":          c.Revocation.BackoffMax,
		"revocation.timeout":              c.Revocation.Timeout,
		"registry.poll_interval":          c.Registry.PollInterval,
		"reconciler.interval":             c.Reconciler.Interval,
		"server.max_connection_age":       c.Server.MaxConnectionAge,
		"server.max_connection_age_grace": c.Server.MaxConnectionAgeGrace,
		"watch.overlap":                   c.Watch.Overlap,
	}
	if c.Watch.DisconnectGrace != nil {
		durations["watch.disconnect_grace"] = *c.Watch.DisconnectGrace
	}
	for name, d := range c.Databases {
		durations["databases."+name+".connect_timeout"] = d.ConnectTimeout
		durations["databases."+name+".ping_interval"] = d.PingInterval
		durations["databases."+name+".rotate_admin_every"] = d.RotateAdminEvery
	}
	if p := c.LeaseStore.Postgres; p != nil {
		durations["lease_store.postgres.connect_timeout"] = p.ConnectTimeout
		durations["lease_store.postgres.issue_timeout"] = p.IssueTimeout
		durations["lease_store.postgres.claim_interval"] = p.ClaimInterval
		durations["lease_store.postgres.claim_lookahead"] = p.ClaimLookahead
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
	if c.Server.MaxConnectionAge.Duration < 100*time.Millisecond {
		return bad("server.max_connection_age", "must be at least 100ms")
	}
	if c.Reconciler.Interval.Duration < time.Second {
		return bad("reconciler.interval", "must be at least 1s")
	}
	if err := c.Audit.validate(); err != nil {
		return err
	}
	if l := c.Metrics.Listen; l != "" {
		_, port, err := net.SplitHostPort(l)
		if err != nil || port == "" {
			return bad("metrics.listen", "want host:port such as 127.0.0.1:9090, got %q", l)
		}
		if l == c.Listen && port != "0" {
			return bad("metrics.listen", "must differ from listen (%q)", c.Listen)
		}
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
	if err := c.LeaseStore.validate(); err != nil {
		return err
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
	if t := c.Revocation.Timeout.Duration; t != 0 && (t < 100*time.Millisecond || t > 5*time.Minute) {
		return bad("revocation.timeout", "want 100ms..5m (or unset), got %s", t)
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
		if d.PingInterval.Duration < 100*time.Millisecond {
			return bad(key+".ping_interval", "must be at least 100ms")
		}
		if e := d.RotateAdminEvery.Duration; e != 0 {
			if e < time.Minute {
				return bad(key+".rotate_admin_every", "must be at least 1m (or unset: no scheduled rotation)")
			}
			if d.PasswordFile == "" {
				return bad(key+".rotate_admin_every", "needs password_file: the broker writes the new password there")
			}
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
		for _, p := range factory.PrivilegedClauses(r.CreationStatements) {
			if !r.AllowPrivileged {
				return bad(key+".creation_statements", "role %q: %s; set allow_privileged: true on the role if you mean it", name, p)
			}
			c.warnings = append(c.warnings, fmt.Sprintf("%s: role %q: %s (allowed by allow_privileged)", key, name, p))
		}
		if err := plugins.ValidateStatements(r.RevocationStatements, false); err != nil {
			return bad(key+".revocation_statements", "%v", err)
		}
		if err := r.Quota.validate(key + ".quota"); err != nil {
			return err
		}
		for i, s := range r.RevocationStatements {
			if strings.Contains(s, "{{password}}") || strings.Contains(s, "{{expiration}}") {
				return bad(fmt.Sprintf("%s.revocation_statements[%d]", key, i), "only {{name}} is available in revocation statements")
			}
		}
	}
	return nil
}

// validate checks the lease_store section: a bbolt path or a postgres
// section, never both.
func (s LeaseStoreConfig) validate() error {
	bad := func(key, format string, args ...any) error {
		return &ConfigError{Key: key, Msg: fmt.Sprintf(format, args...)}
	}
	p := s.Postgres
	switch {
	case s.Path != "" && p != nil:
		return bad("lease_store", "set either path (bbolt) or postgres, not both")
	case p == nil && s.Path == "":
		return bad("lease_store.path", "required (or a lease_store.postgres section)")
	case p == nil:
		return nil
	}
	const key = "lease_store.postgres"
	switch {
	case p.Password != "":
		return bad(key+".password", "inline secrets are not allowed; use password_env or password_file")
	case p.Host == "":
		return bad(key+".host", "required")
	case p.Port < 1 || p.Port > 65535:
		return bad(key+".port", "want 1..65535, got %d", p.Port)
	case p.Database == "":
		return bad(key+".database", "required")
	case p.Username == "":
		return bad(key+".username", "required")
	case (p.PasswordEnv == "") == (p.PasswordFile == ""):
		return bad(key, "set exactly one of password_env or password_file")
	case p.MaxConnections < 1 || p.MaxConnections > 1000:
		return bad(key+".max_connections", "want 1..1000, got %d", p.MaxConnections)
	case !pgSchemaRE.MatchString(p.Schema):
		return bad(key+".schema", "must match %s", pgSchemaRE)
	case p.IssueTimeout.Duration < 100*time.Millisecond || p.IssueTimeout.Duration > time.Minute:
		return bad(key+".issue_timeout", "want 100ms..1m, got %s", p.IssueTimeout.Duration)
	case p.ClaimInterval.Duration < 10*time.Millisecond || p.ClaimInterval.Duration > 30*time.Second:
		return bad(key+".claim_interval", "want 10ms..30s, got %s", p.ClaimInterval.Duration)
	case p.ClaimLookahead.Duration > time.Minute:
		return bad(key+".claim_lookahead", "want at most 1m, got %s", p.ClaimLookahead.Duration)
	case len(p.Replica) > 200:
		return bad(key+".replica", "at most 200 characters")
	}
	switch p.SSLMode {
	case "disable", "allow", "prefer", "require", "verify-ca", "verify-full":
	default:
		return bad(key+".sslmode", "unknown mode %q", p.SSLMode)
	}
	// What pgstore itself checks before it connects.
	if err := p.storeConfig().Check(); err != nil {
		return bad(key, "%s", strings.TrimPrefix(err.Error(), "pgstore: "))
	}
	return nil
}

func (a AuditConfig) validate() error {
	bad := func(key, msg string) error { return &ConfigError{Key: "audit." + key, Msg: msg} }
	if err := a.MaxSize.check("audit.max_size"); err != nil {
		return err
	}
	switch {
	case a.MaxSize.Bytes != 0 && a.File == "":
		return bad("max_size", "only with audit.file (stdout is not rotated)")
	case a.MaxSize.Bytes != 0 && a.MaxSize.Bytes < 4096:
		return bad("max_size", fmt.Sprintf("must be at least 4KiB, got %d bytes", a.MaxSize.Bytes))
	case a.FailClosed != nil && !a.Enabled():
		return bad("fail_closed", "needs audit.file or audit.stdout")
	case a.File != "" && strings.HasSuffix(a.File, "/"):
		return bad("file", fmt.Sprintf("want a file path, got the directory %q", a.File))
	case a.SyncInterval.Duration < 0:
		return bad("sync_interval", "must not be negative")
	case a.SyncInterval.Duration != 0 && a.File == "":
		return bad("sync_interval", "only with audit.file (stdout is not synced)")
	case a.SyncInterval.Duration > 10*time.Second:
		return bad("sync_interval", fmt.Sprintf("at most 10s (it bounds the records a machine crash can lose), got %s", a.SyncInterval.Duration))
	}
	return nil
}
