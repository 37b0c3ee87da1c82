package boltstore

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/lease/leasetest"
)

func openTestBolt(t *testing.T, path string) *Store {
	t.Helper()
	s, err := Open(path, WithBatchDelay(time.Millisecond))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return s
}

func scanAll(t *testing.T, s lease.Store) map[string]lease.Lease {
	t.Helper()
	got := map[string]lease.Lease{}
	if err := s.Scan(context.Background(), lease.Filter{}, func(l lease.Lease) error {
		got[l.ID] = l
		return nil
	}); err != nil {
		t.Fatalf("Scan: %v", err)
	}
	return got
}

func TestBoltRoundTrip(t *testing.T) {
	base := time.Date(2026, 2, 3, 4, 5, 6, 789012345, time.UTC)
	berlin := time.FixedZone("CET", 3600)
	tests := []struct {
		name string
		in   lease.Lease
		want lease.Lease // zero: same as in
	}{
		{
			name: "every field",
			in: lease.Lease{
				ID: "0123456789abcdef0123456789abcdef", Role: "rw", Owner: "spiffe://example.org/ns/a/sa/b",
				Database: "pg-main", Username: "cb_rw_x1", IssueTime: base,
				ExpireTime: base.Add(time.Hour + 1), MaxExpireTime: base.Add(24*time.Hour + 2),
				State: lease.StateRevoking, RevocationStatements: []string{`REVOKE ALL ON "x" FROM "{{name}}"`, "DROP ROLE \"{{name}}\";\n-- ü"},
				LastError: "connection refused", Attempts: 7, Expired: true,
			},
		},
		{
			name: "minimal",
			in:   lease.Lease{ID: "ffffffffffffffffffffffffffffffff", State: lease.StateCreating, ExpireTime: base, MaxExpireTime: base},
		},
		{
			name: "times in another zone come back in UTC",
			in: lease.Lease{ID: "11111111111111111111111111111111", State: lease.StateActive,
				IssueTime: base.In(berlin), ExpireTime: base.Add(time.Nanosecond).In(berlin), MaxExpireTime: base.Add(time.Hour).In(berlin)},
			want: lease.Lease{ID: "11111111111111111111111111111111", State: lease.StateActive,
				IssueTime: base, ExpireTime: base.Add(time.Nanosecond), MaxExpireTime: base.Add(time.Hour)},
		},
		{
			name: "monotonic reading dropped",
			in:   lease.Lease{ID: "22222222222222222222222222222222", State: lease.StateActive, IssueTime: time.Now()},
		},
	}
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	ctx := context.Background()
	for _, tt := range tests {
		if err := s.Put(ctx, tt.in); err != nil {
			t.Fatalf("%s: Put: %v", tt.name, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTestBolt(t, path)
	defer s.Close()
	got := scanAll(t, s)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want.ID == "" {
				want = tt.in
				want.IssueTime = want.IssueTime.Round(0).UTC()
			}
			if !reflect.DeepEqual(got[tt.in.ID], want) {
				t.Errorf("round trip:\n got %#v\nwant %#v", got[tt.in.ID], want)
			}
		})
	}
}

func TestBoltDurableAcrossReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	ctx := context.Background()
	now := time.Now().UTC().Round(0)
	var all []lease.Lease
	for i := 0; i < 5; i++ {
		all = append(all, makeLease(t, now, time.Hour, 2*time.Hour))
	}

	s := openTestBolt(t, path)
	for _, l := range all {
		if err := s.Put(ctx, l); err != nil {
			t.Fatal(err)
		}
	}
	all[1].State = lease.StateRevoking // overwrite
	if err := s.Put(ctx, all[1]); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, all[2].ID); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "00000000000000000000000000000000"); err != nil {
		t.Errorf("Delete of absent id: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = openTestBolt(t, path)
	defer s.Close()
	got := scanAll(t, s)
	want := map[string]lease.Lease{}
	for i, l := range all {
		if i != 2 {
			want[l.ID] = l
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("after reopen:\n got %v\nwant %v", got, want)
	}
}

func TestBoltConcurrentPuts(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	now := time.Now().UTC()
	var wg sync.WaitGroup
	leases := make([]lease.Lease, 64)
	for i := range leases {
		leases[i] = makeLease(t, now, time.Hour, time.Hour)
	}
	for _, l := range leases {
		wg.Go(func() {
			if err := s.Put(context.Background(), l); err != nil {
				t.Errorf("Put: %v", err)
			}
		})
	}
	wg.Wait()
	s.Close()
	s = openTestBolt(t, path)
	defer s.Close()
	if got := len(scanAll(t, s)); got != len(leases) {
		t.Errorf("stored %d leases, want %d", got, len(leases))
	}
}

func TestBoltCreatesNoLeftovers(t *testing.T) {
	dir := t.TempDir()
	s := openTestBolt(t, filepath.Join(dir, "leases.db"))
	s.Close()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"leases.db", "leases.db.wal0", "leases.db.wal1"}; !slices.Equal(names, want) {
		t.Errorf("directory holds %v, want only %v (the store and its log)", names, want)
	}
}

func TestBoltCorruptRefused(t *testing.T) {
	// good writes a valid store with a few leases and returns its bytes.
	good := func(t *testing.T) []byte {
		path := filepath.Join(t.TempDir(), "good.db")
		s := openTestBolt(t, path)
		for i := 0; i < 50; i++ {
			if err := s.Put(context.Background(), makeLease(t, time.Now(), time.Hour, time.Hour)); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name  string
		write func(t *testing.T, path string)
	}{
		{"empty file", func(t *testing.T, path string) { writeFile(t, path, nil) }},
		{"garbage", func(t *testing.T, path string) {
			writeFile(t, path, []byte(strings.Repeat("not a bolt file ", 1024)))
		}},
		{"zeroed", func(t *testing.T, path string) { writeFile(t, path, make([]byte, 64<<10)) }},
		{"truncated", func(t *testing.T, path string) {
			// Cut below the pages in use (50 leases fill more than the two
			// meta pages, the freelist and a root page).
			b := good(t)
			writeFile(t, path, b[:4*os.Getpagesize()])
		}},
		{"both meta pages damaged", func(t *testing.T, path string) {
			b := good(t)
			pageSize := os.Getpagesize()
			for _, off := range []int{32, pageSize + 32} {
				b[off] ^= 0xff
			}
			writeFile(t, path, b)
		}},
		{"data pages scrambled", func(t *testing.T, path string) {
			b := good(t)
			r := rand.New(rand.NewPCG(1, 1))
			for i := 2 * os.Getpagesize(); i < len(b); i++ {
				b[i] = byte(r.Uint32())
			}
			writeFile(t, path, b)
		}},
		{"bolt file without leases bucket", func(t *testing.T, path string) {
			db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(func(tx *bolt.Tx) error {
				_, err := tx.CreateBucket([]byte("other"))
				return err
			}); err != nil {
				t.Fatal(err)
			}
			db.Close()
		}},
		{"a directory", func(t *testing.T, path string) {
			if err := os.Mkdir(path, 0o700); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "leases.db")
			tt.write(t, path)
			s, err := Open(path, WithLockTimeout(100*time.Millisecond))
			if err == nil {
				s.Close()
				t.Fatal("Open accepted a corrupt file")
			}
			if !errors.Is(err, lease.ErrStoreCorrupt) {
				t.Errorf("err = %v, want lease.ErrStoreCorrupt", err)
			}
			if !strings.Contains(err.Error(), path) {
				t.Errorf("err = %q does not name the file", err)
			}
		})
	}
}

// TestBoltTruncatedAnywhere cuts a store at every page boundary: each cut
// must either open and scan cleanly or be refused, never crash.
func TestBoltTruncatedAnywhere(t *testing.T) {
	dir := t.TempDir()
	full := filepath.Join(dir, "full.db")
	s := openTestBolt(t, full)
	for i := 0; i < 100; i++ {
		if err := s.Put(context.Background(), makeLease(t, time.Now(), time.Hour, time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	b, err := os.ReadFile(full)
	if err != nil {
		t.Fatal(err)
	}
	ps := os.Getpagesize()
	for n := ps; n < len(b); n += ps {
		path := filepath.Join(dir, fmt.Sprintf("cut-%d.db", n))
		writeFile(t, path, b[:n])
		s, err := Open(path, WithLockTimeout(100*time.Millisecond))
		if err != nil {
			if !errors.Is(err, lease.ErrStoreCorrupt) {
				t.Errorf("cut at %d: err = %v, want lease.ErrStoreCorrupt", n, err)
			}
			continue
		}
		if got := len(scanAll(t, s)); got != 100 {
			t.Errorf("cut at %d: opened with %d leases, want 100", n, got)
		}
		s.Close()
	}
}

func TestBoltUndecodableRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	s.Close()
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Update(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketName).Put([]byte("00000000000000000000000000000000"), []byte{codecV1, '{', 'x'})
	}); err != nil {
		t.Fatal(err)
	}
	db.Close()

	s = openTestBolt(t, path)
	defer s.Close()
	err = s.Scan(context.Background(), lease.Filter{}, func(lease.Lease) error { return nil })
	if !errors.Is(err, lease.ErrStoreCorrupt) || !errors.Is(err, lease.ErrStoreUnavailable) {
		t.Errorf("Scan err = %v, want lease.ErrStoreCorrupt and lease.ErrStoreUnavailable", err)
	}
	m, err := lease.NewManager(lease.Config{Store: s, Backend: leasetest.NewBackend()})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Load(context.Background()); !errors.Is(err, lease.ErrStoreCorrupt) {
		t.Errorf("Load err = %v, want lease.ErrStoreCorrupt", err)
	}
}

func TestBoltLockTimeout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	first := openTestBolt(t, path)
	second, err := Open(path, WithLockTimeout(50*time.Millisecond))
	if err == nil {
		second.Close()
		t.Fatal("second Open of a locked file succeeded")
	}
	if !errors.Is(err, lease.ErrStoreUnavailable) || !strings.Contains(err.Error(), "locked") {
		t.Errorf("err = %v, want lease.ErrStoreUnavailable saying locked", err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	third, err := Open(path, WithLockTimeout(time.Second))
	if err != nil {
		t.Fatalf("Open after the holder closed: %v", err)
	}
	third.Close()
}

func TestBoltErrorsWrapUnavailable(t *testing.T) {
	s := openTestBolt(t, filepath.Join(t.TempDir(), "leases.db"))
	l := makeLease(t, time.Now(), time.Hour, time.Hour)
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	if err := s.Put(cancelled, l); !errors.Is(err, lease.ErrStoreUnavailable) {
		t.Errorf("Put with cancelled ctx: %v", err)
	}
	s.Close()
	tests := []struct {
		name string
		op   func() error
	}{
		{"put", func() error { return s.Put(context.Background(), l) }},
		{"delete", func() error { return s.Delete(context.Background(), l.ID) }},
		{"scan", func() error {
			return s.Scan(context.Background(), lease.Filter{}, func(lease.Lease) error { return nil })
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name+" after close", func(t *testing.T) {
			if err := tt.op(); !errors.Is(err, lease.ErrStoreUnavailable) {
				t.Errorf("err = %v, want lease.ErrStoreUnavailable", err)
			}
		})
	}
}

func TestBoltScanPassesCallbackError(t *testing.T) {
	s := openTestBolt(t, filepath.Join(t.TempDir(), "leases.db"))
	defer s.Close()
	if err := s.Put(context.Background(), makeLease(t, time.Now(), time.Hour, time.Hour)); err != nil {
		t.Fatal(err)
	}
	stop := errors.New("stop")
	if err := s.Scan(context.Background(), lease.Filter{}, func(lease.Lease) error { return stop }); err != stop {
		t.Errorf("Scan err = %v, want the callback's error as is", err)
	}
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}
