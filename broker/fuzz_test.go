package broker

import (
	"testing"

	"gopkg.in/yaml.v3"

	"github.com/credbroker/credbroker/plugins/builtin"
)

// FuzzParseConfig: no input makes ParseConfig panic; a config it accepts
// validates again, and written back as YAML parses to a config that
// validates and writes the same YAML.
func FuzzParseConfig(f *testing.F) {
	f.Add([]byte(goodConfig))
	f.Add([]byte(""))
	f.Add([]byte("listen: [\n"))
	f.Add([]byte("roles: {r: {database: x, default_ttl: -1s}}"))
	f.Add([]byte(goodConfig + "audit: {file: /tmp/a.log, max_size: 10MiB}\n"))
	f.Add([]byte(goodConfig + "metrics: {listen: 127.0.0.1:9090}\n"))
	catalog := builtin.Catalog()
	f.Fuzz(func(t *testing.T, b []byte) {
		c, err := ParseConfig(b, catalog)
		if err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			t.Fatalf("accepted config does not validate again: %v", err)
		}
		out, err := yaml.Marshal(c)
		if err != nil {
			t.Fatalf("accepted config does not marshal: %v", err)
		}
		c2, err := ParseConfig(out, catalog)
		if err != nil {
			t.Fatalf("accepted config written back does not parse: %v\n%s", err, out)
		}
		out2, err := yaml.Marshal(c2)
		if err != nil || string(out2) != string(out) {
			t.Fatalf("config changes when written back twice: %v\n%s\n---\n%s", err, out, out2)
		}
	})
}
