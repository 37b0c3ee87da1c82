package audit

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// clock is a fake clock that moves one millisecond per call.
type clock struct{ t time.Time }

func (c *clock) now() time.Time {
	c.t = c.t.Add(time.Millisecond)
	return c.t
}

func newClock() *clock {
	return &clock{t: time.Date(2026, 12, 1, 11, 0, 0, 0, time.UTC)}
}

func openLog(t *testing.T, opts Options) *Writer {
	t.Helper()
	if opts.Now == nil {
		opts.Now = newClock().now
	}
	w, err := Open(context.Background(), opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func rec(i int) Record {
	return Record{
		Event:    EventIssue,
		Caller:   "spiffe://example.org/orders/api",
		Role:     "orders",
		Database: "main",
		LeaseID:  fmt.Sprintf("lease-%d", i),
		Username: fmt.Sprintf("cb_orders_%d", i),
		Result:   ResultOK,
	}
}

func writeN(t *testing.T, w *Writer, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		if err := w.Write(context.Background(), rec(i)); err != nil {
			t.Fatalf("write %d: %v", i, err)
		}
	}
}

// newLog writes n records to dir/audit.log and closes it.
func newLog(t *testing.T, n int) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	w := openLog(t, Options{Path: path})
	writeN(t, w, 1, n)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return path
}

func readLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(b, []byte("\n"))
}

func writeLines(t *testing.T, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}
