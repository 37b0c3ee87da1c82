package broker

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/boltstore"
)

func openBolt(t *testing.T, path string) *boltstore.Store {
	t.Helper()
	s, err := boltstore.Open(path)
	if err != nil {
		t.Fatalf("open store: %v", err)
	}
	return s
}

func writeLegacy(t *testing.T, path string, denied map[string]time.Time) {
	t.Helper()
	b, err := json.Marshal(denied)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func wantDenied(t *testing.T, s lease.Store, want map[string]time.Time) {
	t.Helper()
	got, err := s.Denied(context.Background())
	if err != nil {
		t.Fatalf("Denied: %v", err)
	}
	if len(got) != len(want) {
		t.Fatalf("store holds %d deregistrations %v, want %v", len(got), got, want)
	}
	for id, at := range want {
		if !got[id].Equal(at) {
			t.Errorf("deregistration of %s at %v, want %v", id, got[id], at)
		}
	}
}

// An upgraded broker finds the deregistrations an older one kept in
// <store>.deregistered.json: they are imported into the store once,
// durably, and the file is renamed so that it is never imported again.
func TestRegistryImportsLegacyDenylist(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	path := filepath.Join(dir, "leases.db")
	legacy := path + legacyDenylistSuffix
	at := time.Date(2026, 2, 1, 10, 0, 0, 5, time.UTC)
	old := map[string]time.Time{
		"spiffe://example.org/orders/api": at,
		"spiffe://example.org/billing":    at.Add(time.Hour),
	}
	writeLegacy(t, legacy, old)

	s := openBolt(t, path)
	r, err := openRegistry(ctx, s, legacy)
	if err != nil {
		t.Fatalf("openRegistry: %v", err)
	}
	for id := range old {
		if err := r.allowed(id); !errors.Is(err, errDeregistered) {
			t.Errorf("imported %s: allowed = %v, want errDeregistered", id, err)
		}
	}
	if _, err := os.Stat(legacy); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("legacy file still in place after the import: %v", err)
	}
	if _, err := os.Stat(legacy + importedSuffix); err != nil {
		t.Errorf("legacy file not kept as %s: %v", importedSuffix, err)
	}
	// Lifting one after the import is not undone by a restart.
	if was, err := r.allow(ctx, "spiffe://example.org/billing"); err != nil || !was {
		t.Fatalf("allow = %v, %v", was, err)
	}
	s.Close()

	s = openBolt(t, path)
	defer s.Close()
	wantDenied(t, s, map[string]time.Time{"spiffe://example.org/orders/api": at})
	r, err = openRegistry(ctx, s, legacy)
	if err != nil {
		t.Fatalf("openRegistry after restart: %v", err)
	}
	if err := r.allowed("spiffe://example.org/orders/api"); !errors.Is(err, errDeregistered) {
		t.Errorf("after restart: allowed = %v, want errDeregistered", err)
	}
	if err := r.allowed("spiffe://example.org/billing"); err != nil {
		t.Errorf("lifted deregistration came back after restart: %v", err)
	}
}

// A crash after the import but before the rename imports the file again
// at the next start, which changes nothing.
func TestRegistryImportIsIdempotent(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "leases.db")
	legacy := path + legacyDenylistSuffix
	at := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	old := map[string]time.Time{"spiffe://example.org/orders/api": at}
	s := openBolt(t, path)
	defer s.Close()
	for range 2 {
		writeLegacy(t, legacy, old)
		if _, err := openRegistry(ctx, s, legacy); err != nil {
			t.Fatalf("openRegistry: %v", err)
		}
	}
	wantDenied(t, s, old)
}

// A legacy file that cannot be read, or an import the store refuses,
// fails the start and leaves the file where it is.
func TestRegistryImportFailuresKeepTheFile(t *testing.T) {
	ctx := context.Background()
	t.Run("unreadable", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "leases.db")
		legacy := path + legacyDenylistSuffix
		if err := os.WriteFile(legacy, []byte("{not json"), 0o600); err != nil {
			t.Fatal(err)
		}
		s := openBolt(t, path)
		defer s.Close()
		if _, err := openRegistry(ctx, s, legacy); err == nil {
			t.Fatal("openRegistry accepted an unreadable deregistrations file")
		}
		if _, err := os.Stat(legacy); err != nil {
			t.Errorf("unreadable file moved: %v", err)
		}
	})
	t.Run("store fails", func(t *testing.T) {
		legacy := filepath.Join(t.TempDir(), "leases.db"+legacyDenylistSuffix)
		writeLegacy(t, legacy, map[string]time.Time{"spiffe://example.org/a": time.Now()})
		s := lease.NewMemStore()
		s.Close()
		if _, err := openRegistry(ctx, s, legacy); !errors.Is(err, lease.ErrStoreUnavailable) {
			t.Fatalf("openRegistry on a failing store = %v, want ErrStoreUnavailable", err)
		}
		if _, err := os.Stat(legacy); err != nil {
			t.Errorf("file moved although the import failed: %v", err)
		}
	})
}

// Deregistrations go through the store: what deny, allow and observe
// change is what a restarted broker finds.
func TestRegistryPersistsThroughStore(t *testing.T) {
	ctx := context.Background()
	s := lease.NewMemStore()
	r, err := openRegistry(ctx, s, "")
	if err != nil {
		t.Fatal(err)
	}
	at := time.Date(2026, 2, 1, 10, 0, 0, 0, time.UTC)
	a, b, c := "spiffe://example.org/a", "spiffe://example.org/b", "spiffe://example.org/c"
	for _, id := range []string{a, b, c} {
		if err := r.deny(ctx, id, at); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.deny(ctx, a, at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if was, err := r.allow(ctx, b); err != nil || !was {
		t.Fatalf("allow = %v, %v", was, err)
	}
	if was, err := r.allow(ctx, b); err != nil || was {
		t.Fatalf("second allow = %v, %v; want false", was, err)
	}
	// c registered again in SPIRE after its deregistration; a before it.
	again, stale, err := r.observe(ctx, at, map[string]time.Time{a: at.Add(-time.Hour), c: at.Add(time.Minute)})
	if err != nil || stale || len(again) != 1 || again[0] != c {
		t.Fatalf("observe = %v, %v, %v; want [%s]", again, stale, err, c)
	}
	wantDenied(t, s, map[string]time.Time{a: at})
	r2, err := openRegistry(ctx, s, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.allowed(a); !errors.Is(err, errDeregistered) {
		t.Errorf("reopened registry: %s allowed = %v", a, err)
	}

	// A store that fails a deny leaves the ID admitted, and says so.
	s.Close()
	if err := r.deny(ctx, b, at); !errors.Is(err, lease.ErrStoreUnavailable) {
		t.Errorf("deny on a failing store = %v, want ErrStoreUnavailable", err)
	}
	if err := r.allowed(b); errors.Is(err, errDeregistered) {
		t.Errorf("a deny the store refused is in force: %v", err)
	}
}
