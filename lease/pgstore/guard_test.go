package pgstore

import (
	"errors"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/lease"
)

// Any number of brokers open one store, each holding the serving lock
// (shared); each sees what the others write.
func TestReplicasOpenTogether(t *testing.T) {
	c := testConfig(t)
	a := initOpen(t, c)
	b := mustOpen(t, c)
	l := testLease(t, lease.StateActive)
	if err := a.Put(bg, l); err != nil {
		t.Fatalf("Put on the first store: %v", err)
	}
	if got, err := b.Get(bg, l.ID); err != nil || got.ID != l.ID {
		t.Fatalf("Get on the second store = %+v, %v", got, err)
	}
	k1, k2 := ServingLockKeys(c.Schema)
	var holders int
	if err := adminPool(t, c).QueryRow(bg, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
		AND classid = $1::int4::oid AND objid = $2::int4::oid AND objsubid = 2 AND granted`, k1, k2).Scan(&holders); err != nil {
		t.Fatal(err)
	}
	if holders != 2 {
		t.Errorf("%d sessions hold the serving lock, want 2 (one per open store)", holders)
	}
}

// Migrate refuses to change a schema under any broker serving it, and runs
// once they are all closed; a broker does not start during a migration.
func TestMigrateRefusedWhileServing(t *testing.T) {
	c := testConfig(t)
	a := initOpen(t, c)
	b := mustOpen(t, c)
	withMigrations(t, append(migrations[:len(migrations):len(migrations)],
		`ALTER TABLE {{schema}}.leases ADD COLUMN note text`))
	err := Migrate(bg, c)
	if !errors.Is(err, lease.ErrStoreUnavailable) || !strings.Contains(err.Error(), "a broker is serving this store") {
		t.Errorf("Migrate under serving brokers = %v, want ErrStoreUnavailable", err)
	}
	if got := storedVersions(t, c); len(got) != SchemaVersion()-1 {
		t.Errorf("schema_version = %v, want 1 to %d (unchanged)", got, SchemaVersion()-1)
	}
	a.Close()
	if err := Migrate(bg, c); err == nil {
		t.Error("Migrate ran while one broker still served the store")
	}
	b.Close()
	if err := Migrate(bg, c); err != nil {
		t.Fatalf("Migrate once every broker is closed: %v", err)
	}
	if got := storedVersions(t, c); len(got) != SchemaVersion() {
		t.Errorf("schema_version = %v after the migration, want 1 to %d", got, SchemaVersion())
	}
}

// A broker opening the store while a migration holds the serving lock
// exclusively is refused, saying so.
func TestOpenDuringMigration(t *testing.T) {
	c := testConfig(t)
	initOpen(t, c).Close()
	conn := adminPool(t, c)
	tx, err := conn.Begin(bg)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(bg)
	k1, k2 := ServingLockKeys(c.Schema)
	if _, err := tx.Exec(bg, `SELECT pg_advisory_xact_lock($1, $2)`, k1, k2); err != nil {
		t.Fatal(err)
	}
	s, err := Open(bg, c)
	if err == nil {
		s.Close()
		t.Fatal("Open during a migration succeeded")
	}
	if !errors.Is(err, lease.ErrStoreUnavailable) || !strings.Contains(err.Error(), "being migrated") {
		t.Errorf("Open during a migration = %v", err)
	}
	if strings.Contains(err.Error(), c.Password) {
		t.Error("the error quotes the password (error not shown)")
	}
}
