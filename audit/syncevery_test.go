package audit

import (
	"bytes"
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

// TestWriteAll: a WriteAll's records are written next to each other, in
// order, with one sync, while other writers write; one invalid record
// fails the call and writes none of its records.
func TestWriteAll(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w := openLog(t, Options{Path: path})
	var syncs atomic.Int64
	w.sync = func(f *os.File) error {
		syncs.Add(1)
		return fdatasync(f)
	}
	ctx := context.Background()
	bulk := make([]Record, 100)
	for i := range bulk {
		bulk[i] = rec(1000 + i)
	}
	done := make(chan error, 1)
	go func() {
		for i := range 20 {
			if err := w.Write(ctx, rec(i)); err != nil {
				done <- err
				return
			}
		}
		done <- nil
	}()
	if err := w.WriteAll(ctx, bulk); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if n := syncs.Load(); n > 21 {
		t.Errorf("%d syncs for 1 WriteAll of 100 and 20 Writes, want at most 21", n)
	}
	bad := []Record{rec(5000), {Event: "no-such-event"}}
	if err := w.WriteAll(ctx, bad); !errors.Is(err, ErrInvalidRecord) {
		t.Fatalf("WriteAll with an invalid record: %v, want ErrInvalidRecord", err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(path)
	if err != nil || rep.Records != 120 {
		t.Fatalf("verify: %d records, %v; want 120", rep.Records, err)
	}
	// The bulk's records are contiguous and in order.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	first := bytes.Index(b, []byte(bulk[0].LeaseID))
	last := bytes.Index(b, []byte(bulk[99].LeaseID))
	if first < 0 || last < 0 {
		t.Fatal("bulk records not found by lease id")
	}
	if lines := bytes.Count(b[first:last], []byte("\n")); lines != 99 {
		t.Errorf("the bulk's first and last records are %d lines apart, want 99", lines)
	}
}
