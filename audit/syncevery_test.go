package audit

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// TestSyncEvery: with Options.SyncEvery, Write returns once the record is
// in the file (readable by another process before any sync), one deferred
// sync covers the records of its interval, Close syncs what is left, and
// the chain verifies.
func TestSyncEvery(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w := openLog(t, Options{Path: path, SyncEvery: 200 * time.Millisecond})
	var syncs atomic.Int64
	w.sync = func(f *os.File) error {
		syncs.Add(1)
		return fdatasync(f)
	}
	writeN(t, w, 1, 20)
	if n := syncs.Load(); n != 0 {
		t.Fatalf("%d syncs right after 20 writes, want 0 (deferred)", n)
	}
	if rep, err := Verify(path); err != nil || rep.Records != 20 {
		t.Fatalf("before any sync: %d records, %v; want all 20 in the file", rep.Records, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for syncs.Load() == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := syncs.Load(); n != 1 {
		t.Fatalf("%d syncs after the interval, want 1 for the 20 records", n)
	}
	writeN(t, w, 21, 5)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := syncs.Load(); n != 2 {
		t.Fatalf("%d syncs after Close, want 2 (Close syncs the last 5)", n)
	}
	if rep, err := Verify(path); err != nil || rep.Records != 25 || !rep.Head {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
}

// TestSyncEveryFailure: a deferred sync that fails fails the Writer: the
// next Write returns ErrUnavailable (the broker then refuses issuance).
func TestSyncEveryFailure(t *testing.T) {
	w := openLog(t, Options{Path: filepath.Join(t.TempDir(), "audit.log"), SyncEvery: 20 * time.Millisecond})
	failed := make(chan struct{}, 1)
	w.sync = func(*os.File) error {
		select {
		case failed <- struct{}{}:
		default:
		}
		return errors.New("EIO")
	}
	if err := w.Write(context.Background(), rec(1)); err != nil {
		t.Fatalf("write before the sync: %v", err)
	}
	select {
	case <-failed:
	case <-time.After(5 * time.Second):
		t.Fatal("the deferred sync never ran")
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := w.Write(context.Background(), rec(2))
		if errors.Is(err, ErrUnavailable) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("write after the failed sync: %v, want ErrUnavailable", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
