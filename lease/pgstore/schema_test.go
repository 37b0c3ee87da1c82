package pgstore

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// withMigrations makes the package know ms for the rest of t, as a later
// release would.
func withMigrations(t *testing.T, ms []string) {
	old := migrations
	migrations = ms
	t.Cleanup(func() { migrations = old })
}

func storedVersions(t *testing.T, c Config) []int {
	t.Helper()
	rows, err := adminPool(t, c).Query(bg, `SELECT version FROM `+quoteIdent(c.Schema)+`.schema_version ORDER BY version`)
	if err != nil {
		t.Fatal(err)
	}
	var vs []int
	for rows.Next() {
		var v int
		if err := rows.Scan(&v); err != nil {
			t.Fatal(err)
		}
		vs = append(vs, v)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return vs
}

func wantErr(t *testing.T, what string, err, sentinel error, hint string) {
	t.Helper()
	if !errors.Is(err, sentinel) {
		t.Errorf("%s = %v, want %v", what, err, sentinel)
		return
	}
	if !strings.Contains(err.Error(), hint) {
		t.Errorf("%s = %q, want it to say %q", what, err, hint)
	}
}

func TestInitIsIdempotent(t *testing.T) {
	c := testConfig(t)
	s := initOpen(t, c)
	l := testLease(t, lease.StateActive)
	if err := s.Put(bg, l); err != nil {
		t.Fatal(err)
	}
	if err := Init(bg, c); err != nil {
		t.Fatalf("Init of a store at the current version: %v", err)
	}
	if _, err := s.Get(bg, l.ID); err != nil {
		t.Errorf("after a second Init: %v", err)
	}
	if got := storedVersions(t, c); len(got) != SchemaVersion() || got[len(got)-1] != SchemaVersion() {
		t.Errorf("schema_version = %v, want 1 to %d", got, SchemaVersion())
	}
}

func TestOpenMissingSaysInitStore(t *testing.T) {
	c := testConfig(t)
	_, err := Open(bg, c)
	wantErr(t, "Open of a schema never initialized", err, lease.ErrStoreMissing, "credbroker init-store")
	wantErr(t, "Migrate of a schema never initialized", Migrate(bg, c), lease.ErrStoreMissing, "credbroker init-store")
	// Migrate created nothing.
	_, err = Open(bg, c)
	wantErr(t, "Open after Migrate", err, lease.ErrStoreMissing, "credbroker init-store")
}

// A schema whose tables are there without a version is not mistaken for a
// missing store (which init-store would then create over).
func TestOpenWithoutVersionsIsCorrupt(t *testing.T) {
	c := testConfig(t)
	initOpen(t, c).Close()
	exec(t, c, `DROP TABLE `+quoteIdent(c.Schema)+`.schema_version`)
	_, err := Open(bg, c)
	wantErr(t, "Open", err, lease.ErrStoreCorrupt, "schema_version")
	wantErr(t, "Init", Init(bg, c), lease.ErrStoreCorrupt, "schema_version")
}

func TestSchemaNewer(t *testing.T) {
	c := testConfig(t)
	initOpen(t, c).Close()
	exec(t, c, `INSERT INTO `+quoteIdent(c.Schema)+`.schema_version (version) VALUES ($1)`, SchemaVersion()+1)
	_, err := Open(bg, c)
	wantErr(t, "Open of a newer schema", err, ErrSchemaNewer, "upgrade the broker")
	wantErr(t, "Init of a newer schema", Init(bg, c), ErrSchemaNewer, "upgrade the broker")
	wantErr(t, "Migrate of a newer schema", Migrate(bg, c), ErrSchemaNewer, "upgrade the broker")
}

// A release with a version 2: Open refuses the old schema, Init too, and
// Migrate brings it forward keeping the leases.
func TestMigrate(t *testing.T) {
	c := testConfig(t)
	s := initOpen(t, c)
	l := testLease(t, lease.StateActive)
	if err := s.Put(bg, l); err != nil {
		t.Fatal(err)
	}
	s.Close()

	withMigrations(t, append(migrations[:len(migrations):len(migrations)],
		`ALTER TABLE {{schema}}.leases ADD COLUMN note text NOT NULL DEFAULT 'migrated'`))
	_, err := Open(bg, c)
	wantErr(t, "Open of an older schema", err, ErrSchemaOlder, "credbroker migrate")
	wantErr(t, "Init of an older schema", Init(bg, c), ErrSchemaOlder, "credbroker migrate")

	if err := Migrate(bg, c); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if got := storedVersions(t, c); len(got) != SchemaVersion() || got[len(got)-1] != SchemaVersion() {
		t.Errorf("schema_version = %v, want 1 to %d", got, SchemaVersion())
	}
	var note string
	if err := adminPool(t, c).QueryRow(bg, `SELECT note FROM `+quoteIdent(c.Schema)+`.leases WHERE id = $1`, l.ID).Scan(&note); err != nil || note != "migrated" {
		t.Errorf("the new column: %q, %v", note, err)
	}
	s = mustOpen(t, c)
	if got, err := s.Get(bg, l.ID); err != nil || got.ID != l.ID {
		t.Errorf("Get after Migrate = %+v, %v", got, err)
	}
	if err := Migrate(bg, c); err != nil {
		t.Errorf("Migrate of a current schema: %v", err)
	}
}

// A migration that fails leaves the schema at its version: they run in one
// transaction.
func TestMigrateFailureRollsBack(t *testing.T) {
	c := testConfig(t)
	initOpen(t, c).Close()
	withMigrations(t, append(migrations[:len(migrations):len(migrations)],
		`ALTER TABLE {{schema}}.leases ADD COLUMN half text; SELECT no_such_function()`))
	if err := Migrate(bg, c); err == nil {
		t.Fatal("Migrate with a failing migration succeeded")
	}
	if got := storedVersions(t, c); len(got) != SchemaVersion()-1 {
		t.Errorf("schema_version after a failed Migrate = %v, want 1 to %d", got, SchemaVersion()-1)
	}
	var n int
	if err := adminPool(t, c).QueryRow(bg, `SELECT count(*) FROM information_schema.columns
		WHERE table_schema = $1 AND column_name = 'half'`, c.Schema).Scan(&n); err != nil || n != 0 {
		t.Errorf("the failed migration's column: %d, %v", n, err)
	}
}

// No error quotes the password: neither a refused login nor an unreachable
// server.
func TestNoPasswordInErrors(t *testing.T) {
	base := serverConfig(t)
	wrong := base
	wrong.Password = "wrong-pw-Zq7x9-" + randomHex(t)
	down := base
	down.Port = 1 // nothing listens there
	down.ConnectTimeout = time.Second
	quoted := base
	quoted.Host = "no such host' password='" + base.Password
	for _, tt := range []struct {
		name string
		c    Config
	}{
		{"wrong password", wrong},
		{"server down", down},
		{"bad host", quoted},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Open(bg, tt.c)
			if !errors.Is(err, lease.ErrStoreUnavailable) {
				t.Errorf("Open = %v, want ErrStoreUnavailable", err)
			}
			if err == nil {
				return
			}
			for _, pw := range []string{tt.c.Password, base.Password} {
				if strings.Contains(err.Error(), pw) {
					t.Fatal("Open's error quotes a password (error not shown)")
				}
			}
			t.Logf("error: %v", err) // shown only once known to be clean
		})
	}
}

func TestConfigCheck(t *testing.T) {
	ok := Config{Host: "db", Username: "cb"}
	for _, tt := range []struct {
		name string
		edit func(*Config)
		want string // "" for no error
	}{
		{"defaults", func(*Config) {}, ""},
		{"no host", func(c *Config) { c.Host = "" }, "host is required"},
		{"no user", func(c *Config) { c.Username = "" }, "username is required"},
		{"port", func(c *Config) { c.Port = 70000 }, "port"},
		{"pool", func(c *Config) { c.MaxConns = -1 }, "max conns"},
		{"long schema", func(c *Config) { c.Schema = strings.Repeat("s", 64) }, "schema name"},
		{"NUL", func(c *Config) { c.Database = "a\x00b" }, "NUL"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := ok
			tt.edit(&c)
			err := c.Check()
			if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
				t.Errorf("Check = %v, want %q", err, tt.want)
			}
		})
	}
}

// Replicas running init-store at once: one creates, the others find it
// done (the advisory lock serializes them).
func TestConcurrentInit(t *testing.T) {
	c := testConfig(t)
	errs := make(chan error, 3)
	for range 3 {
		go func() { errs <- Init(bg, c) }()
	}
	for range 3 {
		if err := <-errs; err != nil {
			t.Errorf("concurrent Init: %v", err)
		}
	}
	if got := storedVersions(t, c); len(got) != SchemaVersion() {
		t.Errorf("schema_version = %v, want one row per version up to %d", got, SchemaVersion())
	}
	mustOpen(t, c)
}

// Version 2 (request ids): a store made at version 1 with a lease in it is
// refused until migrated; Migrate keeps the lease (no request id), and then
// request ids are stored, read back, and unique per owner.
func TestMigrateToRequestIDs(t *testing.T) {
	c := testConfig(t)
	full := migrations
	withMigrations(t, full[:1])
	if err := Init(bg, c); err != nil {
		t.Fatalf("Init at version 1: %v", err)
	}
	old := testLease(t, lease.StateActive)
	exec(t, c, `INSERT INTO `+quoteIdent(c.Schema)+`.leases (id, state, owner, role, database, username, expire_time, max_expire_time)
		VALUES ($1, 'ACTIVE', $2, $3, $4, $5, $6, $7)`, old.ID, old.Owner, old.Role, old.Database, old.Username,
		old.ExpireTime.Truncate(time.Microsecond), old.MaxExpireTime.Truncate(time.Microsecond))
	migrations = full

	_, err := Open(bg, c)
	wantErr(t, "Open of a version 1 store", err, ErrSchemaOlder, "credbroker migrate")
	if err := Migrate(bg, c); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if got := storedVersions(t, c); len(got) != SchemaVersion() || got[1] != 2 {
		t.Errorf("schema_version = %v, want 1 to %d", got, SchemaVersion())
	}
	s := mustOpen(t, c)
	if got, err := s.Get(bg, old.ID); err != nil || got.RequestID != "" || got.Username != old.Username {
		t.Errorf("lease of version 1 after Migrate = %+v, %v", got, err)
	}

	withID := testLease(t, lease.StateActive)
	withID.RequestID = "req-0001"
	if err := s.Put(bg, withID); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Get(bg, withID.ID); err != nil || got.RequestID != "req-0001" {
		t.Errorf("Get = %+v, %v; want request id req-0001", got, err)
	}
	// The database refuses a second lease of one owner with the request id
	// (the Manager never tries: FindRequest comes first).
	dup := testLease(t, lease.StateActive)
	dup.RequestID = withID.RequestID
	if err := s.Put(bg, dup); err == nil {
		t.Error("a second lease with the owner's request id was stored")
	}
	other := dup
	other.Owner = "spiffe://example.org/other"
	if err := s.Put(bg, other); err != nil {
		t.Errorf("another owner's lease with the same request id: %v", err)
	}
}

// Version 3 (shared stores): a store made at version 2 with leases in it is
// refused until migrated; Migrate keeps the leases, counts the REVOKING
// ones from the migration (revoking_since), compares ids bytewise, and the
// store then serves as a lease.SharedStore.
func TestMigrateToShared(t *testing.T) {
	c := testConfig(t)
	full := migrations
	withMigrations(t, full[:2])
	if err := Init(bg, c); err != nil {
		t.Fatalf("Init at version 2: %v", err)
	}
	insert := func(l lease.Lease) {
		exec(t, c, `INSERT INTO `+quoteIdent(c.Schema)+`.leases (id, state, owner, role, database, username, expire_time, max_expire_time, request_id)
			VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)`, l.ID, l.State.String(), l.Owner, l.Role, l.Database, l.Username,
			l.ExpireTime.Truncate(time.Microsecond), l.MaxExpireTime.Truncate(time.Microsecond), l.RequestID)
	}
	active, revoking := testLease(t, lease.StateActive), testLease(t, lease.StateRevoking)
	active.RequestID = "req-1"
	insert(active)
	insert(revoking)
	migrations = full

	_, err := Open(bg, c)
	wantErr(t, "Open of a version 2 store", err, ErrSchemaOlder, "credbroker migrate")
	before := time.Now()
	if err := Migrate(bg, c); err != nil {
		t.Fatalf("Migrate: %v", err)
	}
	if got := storedVersions(t, c); len(got) != 3 || got[2] != 3 {
		t.Errorf("schema_version = %v, want [1 2 3]", got)
	}
	s, err := Open(bg, c)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, l := range []lease.Lease{active, revoking} {
		if got, err := s.Get(bg, l.ID); err != nil || got.State != l.State || got.Username != l.Username {
			t.Errorf("lease of version 2 after Migrate = %+v, %v", got, err)
		}
	}
	if got, err := s.FindRequest(bg, active.Owner, "req-1"); err != nil || got.ID != active.ID {
		t.Errorf("FindRequest after Migrate = %+v, %v", got, err)
	}
	st, err := s.Stats(bg)
	if err != nil {
		t.Fatal(err)
	}
	if st.ByState[lease.StateRevoking] != 1 || st.ByState[lease.StateActive] != 1 ||
		st.OldestRevoking.Before(before.Add(-time.Minute)) || st.OldestRevoking.After(time.Now().Add(time.Minute)) {
		t.Errorf("Stats after Migrate = %+v, want the REVOKING lease counted from the migration", st)
	}
	var collation string
	var indexes int
	if err := adminPool(t, c).QueryRow(bg, `SELECT collation_name FROM information_schema.columns
		WHERE table_schema = $1 AND table_name = 'leases' AND column_name = 'id'`, c.Schema).Scan(&collation); err != nil || collation != "C" {
		t.Errorf("id collation = %q, %v; want C", collation, err)
	}
	if err := adminPool(t, c).QueryRow(bg, `SELECT count(*) FROM pg_indexes
		WHERE schemaname = $1 AND indexname IN ('leases_creating', 'leases_role')`, c.Schema).Scan(&indexes); err != nil || indexes != 2 {
		t.Errorf("indexes of version 3: %d, %v; want 2", indexes, err)
	}
}
