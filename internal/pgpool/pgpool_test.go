package pgpool

import (
	"strings"
	"testing"
	"time"
)

func TestConfig(t *testing.T) {
	const pw = `p'w\"Secr3t`
	tests := []struct {
		name string
		s    Settings
		want func(*testing.T, Settings)
	}{
		{"quoted values", Settings{Host: "db.example", Port: 5433, Database: "my db", Username: `o'brien`, Password: pw,
			SSLMode: "require", ApplicationName: "credbroker", MaxConns: 7, ConnectTimeout: 3 * time.Second}, nil},
		{"defaults kept", Settings{Host: "127.0.0.1", Port: 5432, Username: "u", Password: pw}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			pc, err := Config(tc.s)
			if err != nil {
				t.Fatalf("Config: %v", err)
			}
			cc := pc.ConnConfig
			if cc.Host != tc.s.Host || int(cc.Port) != tc.s.Port || cc.User != tc.s.Username || cc.Password != pw {
				t.Errorf("host/port/user/password not as given: %s:%d %q", cc.Host, cc.Port, cc.User)
			}
			if tc.s.Database != "" && cc.Database != tc.s.Database {
				t.Errorf("database %q, want %q", cc.Database, tc.s.Database)
			}
			if tc.s.ApplicationName != "" && cc.RuntimeParams["application_name"] != tc.s.ApplicationName {
				t.Errorf("application_name %q", cc.RuntimeParams["application_name"])
			}
			if tc.s.MaxConns > 0 && pc.MaxConns != tc.s.MaxConns {
				t.Errorf("MaxConns %d, want %d", pc.MaxConns, tc.s.MaxConns)
			}
			if tc.s.ConnectTimeout > 0 && cc.ConnectTimeout != tc.s.ConnectTimeout {
				t.Errorf("ConnectTimeout %s, want %s", cc.ConnectTimeout, tc.s.ConnectTimeout)
			}
			if strings.Contains(pc.ConnString(), "Secr3t") {
				t.Error("the password is in the connection string")
			}
		})
	}
}

func TestConfigErrorHidesPassword(t *testing.T) {
	const pw = "Secr3tPassw0rd"
	_, err := Config(Settings{Host: "h", Port: 5432, Username: "u", Password: pw, SSLMode: "bogus-" + pw})
	if err == nil {
		t.Fatal("a bad sslmode was accepted")
	}
	if strings.Contains(err.Error(), pw) {
		t.Error("the error quotes the password")
	}
}
