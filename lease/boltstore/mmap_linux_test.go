package boltstore

import (
	"bufio"
	"context"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// mappedRSS is how many bytes of s's memory map are resident in this
// process, from /proc/self/smaps.
func mappedRSS(t *testing.T, s *Store) int64 {
	t.Helper()
	var addr uintptr
	if err := s.db.View(func(tx *bolt.Tx) error {
		addr = tx.DB().Info().Data
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	inMap := false
	for sc.Scan() {
		line := sc.Text()
		if start, _, ok := strings.Cut(strings.Fields(line)[0], "-"); ok {
			a, err := strconv.ParseUint(start, 16, 64)
			inMap = err == nil && uintptr(a) == addr
			continue
		}
		if v, ok := strings.CutPrefix(line, "Rss:"); inMap && ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("smaps line %q: %v", line, err)
			}
			return kb << 10
		}
	}
	t.Fatalf("mapping at %#x not found in smaps (%v)", addr, sc.Err())
	return 0
}

// TestBoltPagesNotKeptResident checks that reading the whole store (Open's
// verification, a Scan) does not leave its pages in this process's RSS,
// and that the store reads and writes as before afterwards.
func TestBoltPagesNotKeptResident(t *testing.T) {
	const n = 20_000
	path := filepath.Join(t.TempDir(), "leases.db")
	fillBolt(t, path, n)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	const limit = 256 << 10 // a few pages: metas, a branch
	if info.Size() < 8*limit {
		t.Fatalf("store of %d bytes too small to tell", info.Size())
	}
	s := openTestBolt(t, path)
	defer s.Close()
	if rss := mappedRSS(t, s); rss > limit {
		t.Errorf("after Open: %d bytes of a %d-byte store resident", rss, info.Size())
	}
	got := scanAll(t, s)
	if len(got) != n {
		t.Fatalf("Scan found %d leases, want %d", len(got), n)
	}
	if rss := mappedRSS(t, s); rss > limit {
		t.Errorf("after Scan: %d bytes of a %d-byte store resident", rss, info.Size())
	}

	// Pages given back in the middle of a scan fault back in unchanged.
	defer func(n int) { scanDropEvery = n }(scanDropEvery)
	scanDropEvery = 64 << 10
	if again := scanAll(t, s); !reflect.DeepEqual(again, got) {
		t.Fatal("a scan that gives pages back as it goes read other leases")
	}

	l := makeLease(t, time.Now(), time.Hour, time.Hour)
	if err := s.Put(context.Background(), l); err != nil {
		t.Fatal(err)
	}
	again := scanAll(t, s)
	if len(again) != n+1 || !reflect.DeepEqual(again[l.ID], normalizeTimes(l)) {
		t.Fatalf("after a Put: %d leases, new one %+v", len(again), again[l.ID])
	}
	for id, want := range got {
		if !reflect.DeepEqual(again[id], want) {
			t.Fatalf("lease %s changed: %+v, was %+v", id, again[id], want)
		}
	}
}
