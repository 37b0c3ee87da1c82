package pgstore

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// openRefused checks that Open of c is refused because another broker
// holds the store.
func openRefused(t *testing.T, c Config) {
	t.Helper()
	s, err := Open(bg, c)
	if err == nil {
		s.Close()
		t.Fatal("a second Open of a store held by another broker succeeded")
	}
	if !errors.Is(err, lease.ErrStoreUnavailable) {
		t.Errorf("second Open = %v, want ErrStoreUnavailable", err)
	}
	for _, want := range []string{"another broker holds the store", "HA mode", "not available yet"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("second Open = %q, want it to say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), c.Password) {
		t.Error("second Open's error quotes the password (error not shown)")
	}
}

// One broker per store: a second Open is refused while the first holds
// the store, and allowed once it is closed.
func TestSecondOpenRefused(t *testing.T) {
	c := testConfig(t)
	s := initOpen(t, c)
	openRefused(t, c)
	// The first store is unharmed by the refused one.
	l := testLease(t, lease.StateActive)
	if err := s.Put(bg, l); err != nil {
		t.Fatalf("Put on the first store: %v", err)
	}
	s.Close()
	s2 := mustOpen(t, c)
	if got, err := s2.Get(bg, l.ID); err != nil || got.ID != l.ID {
		t.Errorf("Get after reopening = %+v, %v", got, err)
	}
	// Another schema is another store.
	other := c
	other.Schema = c.Schema + "_other"
	t.Cleanup(func() { dropSchema(t, other) })
	initOpen(t, other)
}

// The first broker's lock session ends (pg_terminate_backend, as when its
// connection dies or it is kill -9ed): a second broker may open the store,
// and the first writes nothing more, though its pool still works.
func TestLostLockFencesWrites(t *testing.T) {
	c := testConfig(t)
	s := initOpen(t, c)
	l := testLease(t, lease.StateActive)
	if err := s.Put(bg, l); err != nil {
		t.Fatal(err)
	}
	exec(t, c, `SELECT pg_terminate_backend($1)`, int32(s.guard.pid()))

	// The server ends the session a moment after the signal.
	var s2 *Store
	for deadline := time.Now().Add(10 * time.Second); ; {
		var err error
		if s2, err = Open(bg, c); err == nil {
			t.Cleanup(func() { s2.Close() })
			break
		}
		if !errors.Is(err, lease.ErrStoreUnavailable) || time.Now().After(deadline) {
			t.Fatalf("Open after the first's lock session ended: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}

	writes := map[string]func() error{
		"Put":    func() error { return s.Put(bg, testLease(t, lease.StateActive)) },
		"PutAll": func() error { return s.PutAll(bg, []lease.Lease{testLease(t, lease.StateActive)}) },
		"Delete": func() error { return s.Delete(bg, l.ID) },
		"Deny":   func() error { return s.Deny(bg, "spiffe://example.org/x", time.Now()) },
		"Allow":  func() error { return s.Allow(bg, "spiffe://example.org/x") },
		"PutIfVersion": func() error {
			_, err := s.PutIfVersion(bg, l, 1, 0)
			return err
		},
		"Create": func() error {
			_, err := s.Create(bg, testLease(t, lease.StateCreating), time.Minute)
			return err
		},
		"ClaimDue": func() error {
			_, err := s.ClaimDue(bg, lease.ClaimRequest{Limit: 1, TTL: time.Minute})
			return err
		},
		"DeleteIfVersion": func() error { return s.DeleteIfVersion(bg, l.ID, 1) },
	}
	for name, write := range writes {
		if err := write(); !errors.Is(err, lease.ErrStoreUnavailable) || !errors.Is(err, lease.ErrStoreFenced) || !strings.Contains(err.Error(), "lock is lost") {
			t.Errorf("%s on the store that lost its lock = %v, want ErrStoreUnavailable and ErrStoreFenced saying the lock is lost", name, err)
		}
	}
	if _, err := s2.Get(bg, l.ID); err != nil {
		t.Errorf("the lease, read by the second store: %v (the first's Delete must not have run)", err)
	}
	// Reads still work on the first: they change nothing.
	if _, err := s.Get(bg, l.ID); err != nil {
		t.Errorf("Get on the store that lost its lock: %v", err)
	}
	// The second writes.
	if err := s2.Put(bg, testLease(t, lease.StateActive)); err != nil {
		t.Errorf("Put on the second store: %v", err)
	}
	s.Close()
}

// Migrate refuses to change a schema under a broker serving it.
func TestMigrateRefusedWhileServing(t *testing.T) {
	c := testConfig(t)
	initOpen(t, c)
	withMigrations(t, append(migrations[:len(migrations):len(migrations)],
		`ALTER TABLE {{schema}}.leases ADD COLUMN note text`))
	err := Migrate(bg, c)
	if !errors.Is(err, lease.ErrStoreUnavailable) || !strings.Contains(err.Error(), "a broker is serving this store") {
		t.Errorf("Migrate under a serving broker = %v, want ErrStoreUnavailable", err)
	}
	if got := storedVersions(t, c); len(got) != SchemaVersion()-1 {
		t.Errorf("schema_version = %v, want 1 to %d (unchanged)", got, SchemaVersion()-1)
	}
}
