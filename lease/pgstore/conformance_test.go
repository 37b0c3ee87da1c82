package pgstore

import (
	"sync"
	"testing"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/leasetest"
)

// TestConformance runs the lease.Store suite on a real PostgreSQL with
// password auth, each subtest in a schema of its own, opened as the broker
// opens it (Init once, then Open).
func TestConformance(t *testing.T) {
	serverConfig(t) // skip, with the reason, before any subtest
	var mu sync.Mutex
	configs := map[lease.Store]Config{}
	open := func(t *testing.T, c Config) lease.Store {
		t.Helper()
		s, err := Open(bg, c)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		mu.Lock()
		configs[s] = c
		mu.Unlock()
		return s
	}
	configOf := func(s lease.Store) Config {
		mu.Lock()
		defer mu.Unlock()
		return configs[s]
	}
	leasetest.Run(t, leasetest.Harness{
		Open: func(t *testing.T) lease.Store {
			c := testConfig(t)
			if err := Init(bg, c); err != nil {
				t.Fatalf("Init: %v", err)
			}
			return open(t, c)
		},
		Reopen: func(t *testing.T, s lease.Store) lease.Store {
			c := configOf(s)
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			return open(t, c)
		},
		// The victim's row gets a NULL revocation statement, which no lease
		// has: it cannot be decoded (as a hand edit or a bad write would
		// leave it). Open does not read the rows; Scan refuses it, so Load
		// and DeferLoad (which loads synchronously: no Verifier) do too.
		Corrupt: func(t *testing.T, s lease.Store, id string) (lease.Store, error) {
			c := configOf(s)
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			exec(t, c, `UPDATE `+quoteIdent(c.Schema)+`.leases
				SET revocation_statements = ARRAY['DROP ROLE x', NULL] WHERE id = $1`, id)
			s2, err := Open(bg, c)
			if err != nil {
				return nil, err
			}
			mu.Lock()
			configs[s2] = c
			mu.Unlock()
			return s2, nil
		},
		// A schema nobody initialized: the broker's store with a wrong
		// schema name, or after the schema was dropped.
		OpenMissing: func(t *testing.T) error {
			s, err := Open(bg, testConfig(t))
			if err == nil {
				s.Close()
			}
			return err
		},
	})
}
