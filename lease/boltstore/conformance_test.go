package boltstore

import (
	"errors"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/leasetest"
)

// TestConformance runs the lease.Store suite on a bbolt file, opened as
// the broker opens it.
func TestConformance(t *testing.T) {
	paths := map[lease.Store]string{}
	open := func(t *testing.T, path string, opts ...Option) lease.Store {
		t.Helper()
		s, err := Open(path, opts...)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		paths[s] = path
		return s
	}
	leasetest.Run(t, leasetest.Harness{
		Open: func(t *testing.T) lease.Store {
			return open(t, filepath.Join(t.TempDir(), "leases.db"))
		},
		Reopen: func(t *testing.T, s lease.Store) lease.Store {
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			return open(t, paths[s], WithMustExist())
		},
		// The record of id is overwritten with bytes that do not decode, as
		// a bad write would leave it; Open finds it (Verified), Scan
		// refuses it.
		Corrupt: func(t *testing.T, s lease.Store, id string) (lease.Store, error) {
			path := paths[s]
			if err := s.Close(); err != nil {
				t.Fatalf("Close: %v", err)
			}
			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(func(tx *bolt.Tx) error {
				return tx.Bucket(bucketName).Put([]byte(id), []byte{codecV2, 9, 'x'})
			}); err != nil {
				t.Fatal(err)
			}
			if err := db.Close(); err != nil {
				t.Fatal(err)
			}
			s2, err := Open(path, WithMustExist())
			if err != nil {
				return nil, err
			}
			paths[s2] = path
			return s2, nil
		},
		OpenMissing: func(t *testing.T) error {
			s, err := Open(filepath.Join(t.TempDir(), "leases.db"), WithMustExist())
			if err == nil {
				s.Close()
			}
			return err
		},
	})
}

// A store with a record that would not load is refused by DeferLoad at
// once, before anything is served: Open checked every record.
func TestDeferLoadRefusesUndecodableRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	l := makeLease(t, time.Now(), time.Hour, 2*time.Hour)
	l.State = lease.StateActive
	if err := s.Put(bg, l); err != nil {
		t.Fatal(err)
	}
	if err := s.db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketName).Put([]byte("00000000000000000000000000000000"), []byte{codecV2, 9, 'x'})
	}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// The damage is found when the store is opened.
	s, err := Open(path)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer s.Close()
	if err := s.Verified(); !errors.Is(err, lease.ErrStoreCorrupt) {
		t.Errorf("Verified = %v, want ErrStoreCorrupt", err)
	}
	m, err := lease.NewManager(lease.Config{Store: s, Backend: leasetest.NewBackend()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.DeferLoad(bg); !errors.Is(err, lease.ErrStoreCorrupt) {
		t.Errorf("DeferLoad = %v, want ErrStoreCorrupt", err)
	}
}

// A store made before the denylist moved into it has no bucket for it:
// reading finds none, the first Deny makes it.
func TestDenylistOnOldStore(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(deniedName) }); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
		t.Fatal(err)
	}
	if d, err := s.Denied(bg); err != nil || len(d) != 0 {
		t.Fatalf("Denied on an old store = %v, %v", d, err)
	}
	if err := s.Allow(bg, "spiffe://example.org/a"); err != nil {
		t.Fatalf("Allow on an old store: %v", err)
	}
	if err := s.Deny(bg, "spiffe://example.org/a", time.Now()); err != nil {
		t.Fatalf("Deny on an old store: %v", err)
	}
	s.Close()
	s = openTestBolt(t, path)
	defer s.Close()
	if d, err := s.Denied(bg); err != nil || len(d) != 1 {
		t.Fatalf("Denied after reopening = %v, %v", d, err)
	}
}
