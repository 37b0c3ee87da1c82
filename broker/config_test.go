package broker

import (
	"github.com/credbroker/credbroker/plugins/builtin"

	"os"
	"strings"
	"testing"
	"time"
)

const goodConfig = `
listen: 127.0.0.1:8443
trust_domain: example.org
svid: {cert_file: s.pem, key_file: k.pem, bundle_file: b.pem}
admins: [spiffe://example.org/ops/admin]
lease_store: {path: /tmp/leases.db}
databases:
  orders:
    plugin: postgres
    host: 127.0.0.1
    port: 5432
    database: orders
    username: credbroker
    password_env: PW
roles:
  orders-readonly:
    database: orders
    default_ttl: 1h
    max_ttl: 24h
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE orders_reader;
`

func TestParseConfigGood(t *testing.T) {
	c, err := ParseConfig([]byte(goodConfig), builtin.Catalog())
	if err != nil {
		t.Fatal(err)
	}
	if c.Roles["orders-readonly"].MaxTTL.Hours() != 24 || c.Databases["orders"].SSLMode != "prefer" || c.Databases["orders"].UsernamePrefix != "cb" {
		t.Fatalf("unexpected parse: %+v", c)
	}
}

func TestParseConfigRefusals(t *testing.T) {
	cases := []struct {
		name    string
		old     string
		new     string
		wantKey string
	}{
		{"inline password", "password_env: PW", "password: hunter2", "databases.orders.password"},
		{"no password reference", "password_env: PW", "", "databases.orders"},
		{"both password references", "password_env: PW", "password_env: PW\n    password_file: /x", "databases.orders"},
		{"unknown key", "listen:", "lisen:", "lisen"},
		{"bad listen", "127.0.0.1:8443", "nowhere", "listen"},
		{"bad trust domain", "trust_domain: example.org", "trust_domain: 'Ex ample'", "trust_domain"},
		{"admin outside trust domain", "spiffe://example.org/ops/admin", "spiffe://other.org/ops/admin", "admins[0]"},
		{"admin not an id", "spiffe://example.org/ops/admin", "ops-admin", "admins[0]"},
		{"both svid sources", "svid: {", "svid: {workload_api_socket: unix:///x, ", "svid"},
		{"no svid source", "svid: {cert_file: s.pem, key_file: k.pem, bundle_file: b.pem}", "", "svid"},
		{"missing key file", "key_file: k.pem, ", "", "svid.key_file"},
		{"no lease store", "lease_store: {path: /tmp/leases.db}", "", "lease_store.path"},
		{"unknown plugin", "plugin: postgres", "plugin: oracle", "databases.orders.plugin"},
		{"bad port", "port: 5432", "port: 70000", "databases.orders.port"},
		{"role on unknown database", "    database: orders\n    default_ttl", "    database: nope\n    default_ttl", "roles.orders-readonly.database"},
		{"max below default", "max_ttl: 24h", "max_ttl: 1m", "roles.orders-readonly.max_ttl"},
		{"bad duration", "default_ttl: 1h", "default_ttl: soon", "default_ttl"},
		{"no patterns", `allowed_spiffe_ids: ["spiffe://example.org/orders/*"]`, "allowed_spiffe_ids: []", "roles.orders-readonly.allowed_spiffe_ids"},
		{"foreign pattern", "spiffe://example.org/orders/*", "spiffe://evil.org/orders/*", "roles.orders-readonly.allowed_spiffe_ids[0]"},
		{"wildcard mid-path", "spiffe://example.org/orders/*", "spiffe://example.org/*/api", "roles.orders-readonly.allowed_spiffe_ids[0]"},
		{"unknown placeholder", "{{expiration}}", "{{expiry}}", "roles.orders-readonly.creation_statements"},
		{"no name placeholder", "CREATE ROLE {{name}}", "CREATE ROLE fixed", "roles.orders-readonly.creation_statements"},
		{"bad role name", "  orders-readonly:", "  'Orders Readonly':", "roles.Orders Readonly"},
		{"bad prefix", "password_env: PW", "password_env: PW\n    username_prefix: 'x-y'", "databases.orders.username_prefix"},
		{"negative scram iterations", "password_env: PW", "password_env: PW\n    scram_iterations: -1", "databases.orders.scram_iterations"},
		{"huge scram iterations", "password_env: PW", "password_env: PW\n    scram_iterations: 100000000", "databases.orders.scram_iterations"},
		{"tiny ping interval", "password_env: PW", "password_env: PW\n    ping_interval: 10ms", "databases.orders.ping_interval"},
		{"rotation without password_file", "password_env: PW", "password_env: PW\n    rotate_admin_every: 720h", "databases.orders.rotate_admin_every"},
		{"rotation too often", "password_env: PW", "password_file: /x\n    rotate_admin_every: 1s", "databases.orders.rotate_admin_every"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(goodConfig, tc.old) {
				t.Fatalf("test case does not apply: %q not in config", tc.old)
			}
			_, err := ParseConfig([]byte(strings.Replace(goodConfig, tc.old, tc.new, 1)), builtin.Catalog())
			if err == nil {
				t.Fatal("bad config accepted")
			}
			if !strings.Contains(err.Error(), tc.wantKey) {
				t.Fatalf("error %q does not name key %q", err, tc.wantKey)
			}
		})
	}
}

func TestRevocationStatementsOnlyName(t *testing.T) {
	cfg := strings.Replace(goodConfig, "IN ROLE orders_reader;\n", "IN ROLE orders_reader;\n    revocation_statements: [\"ALTER ROLE {{name}} PASSWORD {{password}}\"]\n", 1)
	_, err := ParseConfig([]byte(cfg), builtin.Catalog())
	if err == nil || !strings.Contains(err.Error(), "revocation_statements") {
		t.Fatalf("got %v, want a revocation_statements error", err)
	}
}

// TestParseConfigPluginKeys: engine-specific keys reach the plugin's
// factory through the catalog; the operator sees the whole message.
func TestParseConfigPluginKeys(t *testing.T) {
	cases := []struct {
		name, old, new, want string
	}{
		{"unknown plugin", "plugin: postgres", "plugin: oracle",
			`config: databases.orders.plugin: unknown plugin "oracle" (known: mysql, postgres)`},
		{"key of the other engine", "password_env: PW", "password_env: PW\n    user_host: '%'",
			"config: databases.orders.user_host: only applies to plugin mysql"},
		{"unknown key", "password_env: PW", "password_env: PW\n    sslmod: disable",
			"config: databases.orders.sslmod: unknown key for plugin postgres"},
		{"bad value", "password_env: PW", "password_env: PW\n    scram_iterations: 0x7fffffff",
			"config: databases.orders.scram_iterations: must be between 1 and 1048576"},
		{"not a number", "password_env: PW", "password_env: PW\n    scram_iterations: lots",
			`config: databases.orders.scram_iterations: want an integer, got lots`},
		{"prefix too long", "password_env: PW", "password_env: PW\n    username_prefix: abcdefghi",
			"config: databases.orders.username_prefix: must match ^[a-z][a-z0-9]{0,7}$"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(goodConfig, tc.old) {
				t.Fatalf("test case does not apply: %q not in config", tc.old)
			}
			_, err := ParseConfig([]byte(strings.Replace(goodConfig, tc.old, tc.new, 1)), builtin.Catalog())
			if err == nil || err.Error() != tc.want {
				t.Fatalf("ParseConfig = %v, want %q", err, tc.want)
			}
		})
	}
	c, err := ParseConfig([]byte(strings.Replace(goodConfig, "password_env: PW", "password_env: PW\n    scram_iterations: 16\n    username_prefix: abcdefgh", 1)), builtin.Catalog())
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Databases["orders"]; d.Options["scram_iterations"] != 16 || d.UsernamePrefix != "abcdefgh" {
		t.Errorf("parsed %+v", d)
	}
	if _, err := ParseConfig([]byte(goodConfig), nil); err == nil {
		t.Error("ParseConfig without a catalog succeeded")
	}
}

// pgStoreConfig is goodConfig with its lease store in PostgreSQL.
var pgStoreConfig = strings.Replace(goodConfig, "lease_store: {path: /tmp/leases.db}\n", `lease_store:
  postgres:
    host: db.internal
    database: credbroker
    username: credbroker
    password_env: STORE_PW
`, 1)

func TestParseConfigPostgresStore(t *testing.T) {
	c, err := ParseConfig([]byte(pgStoreConfig), builtin.Catalog())
	if err != nil {
		t.Fatal(err)
	}
	p := c.LeaseStore.Postgres
	if p == nil || c.LeaseStore.Path != "" {
		t.Fatalf("lease_store = %+v", c.LeaseStore)
	}
	if p.Port != 5432 || p.Schema != "credbroker" || p.SSLMode != "prefer" || p.MaxConnections != 8 || p.ConnectTimeout.Seconds() != 5 {
		t.Errorf("defaults: %+v", p)
	}
	t.Setenv("STORE_PW", "s3cret-store")
	sc, err := p.StoreConfig()
	if err != nil || sc.Password != "s3cret-store" || sc.Host != "db.internal" || sc.MaxConns != 8 {
		t.Errorf("StoreConfig = %+v, %v", sc, err)
	}
}

// Each refusal names its key, in the words the databases.* checks use.
func TestParseConfigPostgresStoreRefusals(t *testing.T) {
	const key = "    password_env: STORE_PW\n"
	cases := []struct {
		name, old, new, want string
	}{
		{"both path and postgres", "lease_store:\n", "lease_store:\n  path: /tmp/leases.db\n",
			"config: lease_store: set either path (bbolt) or postgres, not both"},
		{"inline password", key, "    password: hunter2\n",
			"config: lease_store.postgres.password: inline secrets are not allowed; use password_env or password_file"},
		{"no password reference", key, "",
			"config: lease_store.postgres: set exactly one of password_env or password_file"},
		{"both password references", key, key + "    password_file: /run/pw\n",
			"config: lease_store.postgres: set exactly one of password_env or password_file"},
		{"no host", "    host: db.internal\n", "",
			"config: lease_store.postgres.host: required"},
		{"bad port", "    host: db.internal\n", "    host: db.internal\n    port: 70000\n",
			"config: lease_store.postgres.port: want 1..65535, got 70000"},
		{"no database", "    database: credbroker\n", "",
			"config: lease_store.postgres.database: required"},
		{"no username", "    username: credbroker\n", "",
			"config: lease_store.postgres.username: required"},
		{"bad sslmode", key, key + "    sslmode: sometimes\n",
			`config: lease_store.postgres.sslmode: unknown mode "sometimes"`},
		{"negative pool", key, key + "    max_connections: -1\n",
			"config: lease_store.postgres.max_connections: want 1..1000, got -1"},
		{"bad timeout", key, key + "    connect_timeout: soon\n",
			`config: lease_store.postgres.connect_timeout: want a duration such as 30s or 1h, got "soon"`},
		{"bad schema", key, key + "    schema: Leases-1\n",
			"config: lease_store.postgres.schema: must match ^[a-z_][a-z0-9_]{0,62}$"},
		{"unknown key", key, key + "    pool_size: 3\n",
			"config: unmarshal errors:\n  line 12: field pool_size not found in type broker.PostgresStoreConfig"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(pgStoreConfig, tc.old) {
				t.Fatalf("test case does not apply: %q not in config", tc.old)
			}
			_, err := ParseConfig([]byte(strings.Replace(pgStoreConfig, tc.old, tc.new, 1)), builtin.Catalog())
			if err == nil || err.Error() != tc.want {
				t.Fatalf("ParseConfig = %v, want %q", err, tc.want)
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatal("the error quotes the inline password")
			}
		})
	}
}

// An unset password reference is reported when the store is opened, by
// name, without a value.
func TestPostgresStorePasswordUnset(t *testing.T) {
	c, err := ParseConfig([]byte(pgStoreConfig), builtin.Catalog())
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("STORE_PW", "")
	os.Unsetenv("STORE_PW")
	_, err = c.LeaseStore.Postgres.StoreConfig()
	if err == nil || err.Error() != "lease_store.postgres: environment variable STORE_PW is not set" {
		t.Errorf("StoreConfig = %v", err)
	}
}

func TestParseConfigAudit(t *testing.T) {
	cases := []struct {
		name       string
		section    string
		enabled    bool
		failClosed bool
		maxSize    int64
	}{
		{"absent", "", false, false, 0},
		{"file", "audit: {file: /var/log/cb/audit.log}", true, true, 0},
		{"stdout only", "audit: {stdout: true}", true, false, 0},
		{"file fail open", "audit: {file: /a.log, fail_closed: false}", true, false, 0},
		{"stdout fail closed", "audit: {stdout: true, fail_closed: true}", true, true, 0},
		{"bytes", "audit: {file: /a.log, max_size: 1048576}", true, true, 1 << 20},
		{"MiB", "audit: {file: /a.log, max_size: 64MiB}", true, true, 64 << 20},
		{"KiB", "audit: {file: /a.log, max_size: 512KiB}", true, true, 512 << 10},
		{"GiB", "audit: {file: /a.log, max_size: 2GiB}", true, true, 2 << 30},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(goodConfig+tc.section+"\n"), builtin.Catalog())
			if err != nil {
				t.Fatal(err)
			}
			a := c.Audit
			if a.Enabled() != tc.enabled || a.failClosed() != tc.failClosed || a.MaxSize.Bytes != tc.maxSize {
				t.Fatalf("audit = enabled %v, fail_closed %v, max_size %d; want %v, %v, %d",
					a.Enabled(), a.failClosed(), a.MaxSize.Bytes, tc.enabled, tc.failClosed, tc.maxSize)
			}
		})
	}
}

func TestParseConfigAuditRefusals(t *testing.T) {
	cases := []struct{ name, section, want string }{
		{"bad size", "audit: {file: /a.log, max_size: lots}",
			`config: audit.max_size: want a size in bytes, or with KiB, MiB or GiB such as 64MiB, got "lots"`},
		{"bad unit", "audit: {file: /a.log, max_size: 64MB}",
			`config: audit.max_size: want a size in bytes, or with KiB, MiB or GiB such as 64MiB, got "64MB"`},
		{"negative size", "audit: {file: /a.log, max_size: -1}",
			`config: audit.max_size: want a size in bytes, or with KiB, MiB or GiB such as 64MiB, got "-1"`},
		{"size without file", "audit: {stdout: true, max_size: 64MiB}",
			"config: audit.max_size: only with audit.file (stdout is not rotated)"},
		{"size too small", "audit: {file: /a.log, max_size: 100}",
			"config: audit.max_size: must be at least 4KiB, got 100 bytes"},
		{"fail_closed without sink", "audit: {fail_closed: true}",
			"config: audit.fail_closed: needs audit.file or audit.stdout"},
		{"directory", "audit: {file: /var/log/}",
			`config: audit.file: want a file path, got the directory "/var/log/"`},
		{"sync_interval without file", "audit: {stdout: true, sync_interval: 100ms}",
			"config: audit.sync_interval: only with audit.file (stdout is not synced)"},
		{"sync_interval too long", "audit: {file: /a.log, sync_interval: 1m}",
			"config: audit.sync_interval: at most 10s (it bounds the records a machine crash can lose), got 1m0s"},
		{"unknown key", "audit: {path: /a.log}", "field path not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(goodConfig+tc.section+"\n"), builtin.Catalog())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseConfig = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseConfigMetrics(t *testing.T) {
	cases := []struct{ name, section, listen string }{
		{"absent: off", "", ""},
		{"empty: off", "metrics: {}", ""},
		{"loopback", "metrics: {listen: 127.0.0.1:9090}", "127.0.0.1:9090"},
		{"all interfaces", `metrics: {listen: ":9090"}`, ":9090"},
		{"ipv6", `metrics: {listen: "[::1]:9090"}`, "[::1]:9090"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(goodConfig+tc.section+"\n"), builtin.Catalog())
			if err != nil {
				t.Fatal(err)
			}
			if c.Metrics.Listen != tc.listen {
				t.Fatalf("metrics.listen = %q, want %q", c.Metrics.Listen, tc.listen)
			}
		})
	}
}

func TestParseConfigMetricsRefusals(t *testing.T) {
	cases := []struct{ name, section, want string }{
		{"no port", "metrics: {listen: 127.0.0.1}",
			`config: metrics.listen: want host:port such as 127.0.0.1:9090, got "127.0.0.1"`},
		{"empty port", `metrics: {listen: "127.0.0.1:"}`,
			`config: metrics.listen: want host:port such as 127.0.0.1:9090, got "127.0.0.1:"`},
		{"same as grpc", "metrics: {listen: 127.0.0.1:8443}",
			`config: metrics.listen: must differ from listen ("127.0.0.1:8443")`},
		{"unknown key", "metrics: {address: 127.0.0.1:9090}", "field address not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseConfig([]byte(goodConfig+tc.section+"\n"), builtin.Catalog())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseConfig = %v, want %q", err, tc.want)
			}
		})
	}
}

func TestParseConfigServer(t *testing.T) {
	cases := []struct {
		name, section string
		age, grace    time.Duration
		want          string // error, if any
	}{
		{"absent: defaults", "", 30 * time.Minute, time.Minute, ""},
		{"set", "server: {max_connection_age: 10m, max_connection_age_grace: 30s}", 10 * time.Minute, 30 * time.Second, ""},
		{"only age", "server: {max_connection_age: 2h}", 2 * time.Hour, time.Minute, ""},
		{"too short", "server: {max_connection_age: 10ms}", 0, 0, "config: server.max_connection_age: must be at least 100ms"},
		{"negative grace", "server: {max_connection_age_grace: -1s}", 0, 0, "config: server.max_connection_age_grace: must not be negative"},
		{"bad duration", "server: {max_connection_age: soon}", 0, 0, "config: server.max_connection_age: want a duration"},
		{"unknown key", "server: {max_age: 1m}", 0, 0, "field max_age not found"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(goodConfig+tc.section+"\n"), builtin.Catalog())
			if tc.want != "" {
				if err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Fatalf("ParseConfig = %v, want %q", err, tc.want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Server.MaxConnectionAge.Duration != tc.age || c.Server.MaxConnectionAgeGrace.Duration != tc.grace {
				t.Fatalf("server = %+v, want age %s grace %s", c.Server, tc.age, tc.grace)
			}
		})
	}
}

// TestParseConfigPrivilegedTemplates: a role whose creation statements
// grant server-wide power is refused at load (both engines), with the
// role, the statement and the clause; allow_privileged accepts it and
// turns each clause into a warning.
func TestParseConfigPrivilegedTemplates(t *testing.T) {
	pgRole := "IN ROLE orders_reader;"
	myRole := "      - GRANT SELECT ON shop.orders TO {{name}}"
	cases := []struct {
		name, config, old, new, want string
	}{
		{"postgres superuser", goodConfig, pgRole, "SUPERUSER;",
			`config: roles.orders-readonly.creation_statements: role "orders-readonly": creation statement 1 grants SUPERUSER; set allow_privileged: true on the role if you mean it`},
		{"postgres second statement", goodConfig, pgRole, pgRole + "\n      - GRANT pg_execute_server_program TO {{name}}",
			`role "orders-readonly": creation statement 2 grants membership of pg_execute_server_program; set allow_privileged: true`},
		{"postgres alter system", goodConfig, pgRole, pgRole + "\n      - ALTER SYSTEM SET fsync = off",
			`role "orders-readonly": creation statement 2 runs ALTER SYSTEM; set allow_privileged: true`},
		{"mysql all on *.*", mysqlConfig, myRole, "      - GRANT ALL PRIVILEGES ON *.* TO {{name}}",
			`config: roles.shop-readonly.creation_statements: role "shop-readonly": creation statement 2 grants ALL PRIVILEGES ON *.* (every database); set allow_privileged: true on the role if you mean it`},
		{"mysql super", mysqlConfig, myRole, "      - GRANT SUPER ON *.* TO {{name}}",
			`role "shop-readonly": creation statement 2 grants SUPER; set allow_privileged: true`},
		{"mysql with grant option", mysqlConfig, myRole, myRole + " WITH GRANT OPTION",
			`role "shop-readonly": creation statement 2 grants WITH GRANT OPTION`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(tc.config, tc.old) {
				t.Fatalf("test case does not apply: %q not in config", tc.old)
			}
			bad := strings.Replace(tc.config, tc.old, tc.new, 1)
			_, err := ParseConfig([]byte(bad), builtin.Catalog())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseConfig = %v, want %q", err, tc.want)
			}
			// The opt-out: accepted, and said.
			allowed := strings.Replace(bad, "    creation_statements:", "    allow_privileged: true\n    creation_statements:", 1)
			c, err := ParseConfig([]byte(allowed), builtin.Catalog())
			if err != nil {
				t.Fatalf("with allow_privileged: %v", err)
			}
			clause := strings.SplitN(strings.SplitN(tc.want, "creation statement ", 2)[1], ";", 2)[0]
			if w := c.Warnings(); len(w) != 1 || !strings.Contains(w[0], "creation statement "+clause) || !strings.Contains(w[0], "allow_privileged") {
				t.Fatalf("warnings = %q, want one naming %q", w, clause)
			}
		})
	}
	// A clean config has no warnings, and allow_privileged alone changes nothing.
	for _, cfg := range []string{goodConfig, strings.Replace(goodConfig, "    creation_statements:", "    allow_privileged: true\n    creation_statements:", 1)} {
		c, err := ParseConfig([]byte(cfg), builtin.Catalog())
		if err != nil {
			t.Fatalf("clean config: %v", err)
		}
		if w := c.Warnings(); len(w) != 0 {
			t.Fatalf("clean config: warnings %q", w)
		}
	}
}

func TestParseConfigQuota(t *testing.T) {
	const at = "    creation_statements:"
	c, err := ParseConfig([]byte(strings.Replace(goodConfig, at, "    quota: {max_leases_per_role: 100, max_leases_per_caller: 5, issue_rate_per_caller: 0.5, issue_burst: 3}\n"+at, 1)), builtin.Catalog())
	if err != nil {
		t.Fatal(err)
	}
	if q := c.Roles["orders-readonly"].Quota; q != (Quota{MaxLeasesPerRole: 100, MaxLeasesPerCaller: 5, IssueRatePerCaller: 0.5, IssueBurst: 3}) {
		t.Fatalf("quota = %+v", q)
	}
	for _, tc := range []struct{ quota, want string }{
		{"{max_leases_per_role: -1}", "config: roles.orders-readonly.quota.max_leases_per_role: want 0 (no limit) or a positive count"},
		{"{max_leases_per_caller: -2}", "config: roles.orders-readonly.quota.max_leases_per_caller:"},
		{"{issue_rate_per_caller: -1}", "config: roles.orders-readonly.quota.issue_rate_per_caller:"},
		{"{issue_burst: 5}", "config: roles.orders-readonly.quota.issue_burst: only with issue_rate_per_caller"},
		{"{max_leases: 5}", "field max_leases not found"},
	} {
		_, err := ParseConfig([]byte(strings.Replace(goodConfig, at, "    quota: "+tc.quota+"\n"+at, 1)), builtin.Catalog())
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("quota %s: %v, want %q", tc.quota, err, tc.want)
		}
	}
}

// TestDeployExampleConfig: the example config in deploy/ loads, and none of
// its templates needs allow_privileged.
func TestDeployExampleConfig(t *testing.T) {
	c, err := LoadConfig("../deploy/credbroker.yaml", builtin.Catalog())
	if err != nil {
		t.Fatal(err)
	}
	if w := c.Warnings(); len(w) != 0 {
		t.Fatalf("warnings: %q", w)
	}
	if c.Server.MaxConnectionAge.Duration != DefaultMaxConnectionAge {
		t.Errorf("server.max_connection_age = %s", c.Server.MaxConnectionAge)
	}
}
