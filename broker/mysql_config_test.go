package broker

import (
	"github.com/credbroker/credbroker/plugins/builtin"

	"strings"
	"testing"
)

const mysqlConfig = `
trust_domain: example.org
svid: {cert_file: s.pem, key_file: k.pem, bundle_file: b.pem}
lease_store: {path: /tmp/leases.db}
databases:
  shop:
    plugin: mysql
    host: 127.0.0.1
    port: 3306
    database: shop
    username: credbroker
    password_env: PW
    user_host: 10.0.%
roles:
  shop-readonly:
    database: shop
    default_ttl: 1h
    max_ttl: 24h
    allowed_spiffe_ids: ["spiffe://example.org/shop/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT SELECT ON shop.orders TO {{name}}
`

func TestParseConfigMySQL(t *testing.T) {
	c, err := ParseConfig([]byte(mysqlConfig), builtin.Catalog())
	if err != nil {
		t.Fatal(err)
	}
	if d := c.Databases["shop"]; d.Plugin != "mysql" || d.Options["user_host"] != "10.0.%" {
		t.Fatalf("unexpected parse: %+v", d)
	}
	// user_host is optional: the plugin defaults it to '%'.
	if _, err := ParseConfig([]byte(strings.Replace(mysqlConfig, "    user_host: 10.0.%\n", "", 1)), builtin.Catalog()); err != nil {
		t.Fatalf("config without user_host: %v", err)
	}
}

func TestParseConfigMySQLRefusals(t *testing.T) {
	cases := []struct {
		name    string
		old     string
		new     string
		wantKey string
	}{
		{"quote in user_host", "user_host: 10.0.%", `user_host: "10.0.%'"`, "databases.shop.user_host"},
		{"account syntax in user_host", "user_host: 10.0.%", `user_host: "'@'%"`, "databases.shop.user_host"},
		{"backslash in user_host", "user_host: 10.0.%", `user_host: '10.0.\%'`, "databases.shop.user_host"},
		{"NUL in user_host", "user_host: 10.0.%", `user_host: "10.0.\0"`, "databases.shop.user_host"},
		{"long user_host", "user_host: 10.0.%", "user_host: " + strings.Repeat("h", 256), "databases.shop.user_host"},
		{"user_host on postgres", "plugin: mysql", "plugin: postgres", "databases.shop.user_host"},
		{"scram_iterations on mysql", "user_host: 10.0.%", "user_host: 10.0.%\n    scram_iterations: 16", "databases.shop.scram_iterations"},
		{"plaintext password clause", "IDENTIFIED BY PASSWORD {{password}}", "IDENTIFIED BY {{password}}", "roles.shop-readonly.creation_statements"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if !strings.Contains(mysqlConfig, tc.old) {
				t.Fatalf("test case does not apply: %q not in config", tc.old)
			}
			_, err := ParseConfig([]byte(strings.Replace(mysqlConfig, tc.old, tc.new, 1)), builtin.Catalog())
			if err == nil {
				t.Fatal("bad config accepted")
			}
			if !strings.Contains(err.Error(), tc.wantKey) {
				t.Fatalf("error %q does not name key %q", err, tc.wantKey)
			}
		})
	}
}
