package audit

import (
	"context"
	"path/filepath"
	"testing"
)

// BenchmarkWrite is one goroutine writing issue records one after the
// other: each is its own group commit (write, fdatasync, head). make bench
// prints it beside the store's commits.
func BenchmarkWrite(b *testing.B) {
	w, err := Open(context.Background(), Options{Path: filepath.Join(b.TempDir(), "audit.log"), MaxSize: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	r := Record{Event: EventIssue, Caller: "spiffe://example.org/app", Role: "reader", Database: "main",
		LeaseID: "0123456789abcdef0123456789abcdef", Username: "cb_reader_abcdefgh", Result: "ok"}
	b.ResetTimer()
	for b.Loop() {
		if err := w.Write(context.Background(), r); err != nil {
			b.Fatal(err)
		}
	}
}
