package boltstore

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestCommitObserver: every write is reported in exactly one commit.
func TestCommitObserver(t *testing.T) {
	var (
		mu      sync.Mutex
		writes  int
		commits int
	)
	s, err := Open(filepath.Join(t.TempDir(), "leases.db"), WithCommitObserver(func(n int, took time.Duration, err error) {
		mu.Lock()
		defer mu.Unlock()
		if n < 1 || took < 0 || err != nil {
			t.Errorf("commit of %d writes in %s: %v", n, took, err)
		}
		writes += n
		commits++
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	const puts = 40
	var wg sync.WaitGroup
	for range puts {
		wg.Go(func() {
			if err := s.Put(context.Background(), makeLease(t, time.Now(), time.Minute, time.Hour)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if writes != puts || commits < 1 || commits > puts {
		t.Errorf("observed %d writes in %d commits, want %d writes in 1..%d commits", writes, commits, puts, puts)
	}
	t.Logf("%d writes in %d commits", writes, commits)
}
