package audit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

func isBreak(err error, kind Kind) bool {
	var b *BreakError
	return errors.As(err, &b) && b.Kind == kind
}

func TestAuditVerifyTampering(t *testing.T) {
	const n = 10
	// lines[i] is line i+1; the last element is the empty rest after the
	// final newline.
	for _, tc := range []struct {
		name   string
		tamper func(lines [][]byte) [][]byte
		kind   Kind
		line   int
		seq    uint64
	}{
		{"field edited", func(l [][]byte) [][]byte {
			l[3] = bytes.Replace(l[3], []byte("cb_orders_4"), []byte("cb_orders_9"), 1)
			return l
		}, KindEdited, 4, 4},
		{"first record edited", func(l [][]byte) [][]byte {
			l[0] = bytes.Replace(l[0], []byte(`"role":"orders"`), []byte(`"role":"admin"`), 1)
			return l
		}, KindEdited, 1, 1},
		{"last record edited (head)", func(l [][]byte) [][]byte {
			l[n-1] = bytes.Replace(l[n-1], []byte(`"result":"ok"`), []byte(`"result":"PERMISSION_DENIED"`), 1)
			return l
		}, KindEdited, 10, 10},
		{"seq edited", func(l [][]byte) [][]byte {
			l[5] = bytes.Replace(l[5], []byte(`"seq":6`), []byte(`"seq":60`), 1)
			return l
		}, KindEdited, 6, 60},
		{"not json", func(l [][]byte) [][]byte {
			l[2] = []byte("hello\n")
			return l
		}, KindEdited, 3, 0},
		{"line deleted", func(l [][]byte) [][]byte {
			return append(l[:4:4], l[5:]...)
		}, KindDeleted, 5, 5},
		{"two lines deleted", func(l [][]byte) [][]byte {
			return append(l[:4:4], l[6:]...)
		}, KindDeleted, 5, 5},
		{"lines swapped", func(l [][]byte) [][]byte {
			l[2], l[3] = l[3], l[2]
			return l
		}, KindReordered, 3, 4},
		{"line repeated", func(l [][]byte) [][]byte {
			return append(l[:5:5], append([][]byte{l[3]}, l[5:]...)...)
		}, KindReordered, 6, 4},
		{"tail cut off", func(l [][]byte) [][]byte {
			return append(l[:n-1:n-1], l[n])
		}, KindTruncated, 10, 10},
		{"partial last line", func(l [][]byte) [][]byte {
			l[n-1] = l[n-1][:len(l[n-1])/2]
			return l
		}, KindTruncated, 10, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := newLog(t, n)
			writeLines(t, path, tc.tamper(readLines(t, path)))
			_, err := Verify(path)
			var b *BreakError
			if !errors.As(err, &b) {
				t.Fatalf("verify: %v, want a BreakError", err)
			}
			if b.Kind != tc.kind || b.Line != tc.line || b.Seq != tc.seq || b.File != path {
				t.Fatalf("verify: %v\nwant %s at line %d seq %d", err, tc.kind, tc.line, tc.seq)
			}
			t.Log(err)
		})
	}
}

func TestAuditVerifyHead(t *testing.T) {
	for _, tc := range []struct {
		name string
		head string
		kind Kind
		line int
		seq  uint64
	}{
		{"hash differs", `{"seq":5,"hash":"` + Genesis + `"}`, KindEdited, 5, 5},
		{"head ahead", `{"seq":7,"hash":"` + Genesis + `"}`, KindTruncated, 6, 6},
		{"head behind, unknown hash", `{"seq":3,"hash":"` + Genesis + `"}`, KindEdited, 1, 3},
		{"garbage", `not a head`, KindHead, 1, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := newLog(t, 5)
			if err := os.WriteFile(path+HeadSuffix, []byte(tc.head), 0o600); err != nil {
				t.Fatal(err)
			}
			_, err := Verify(path)
			var b *BreakError
			if !errors.As(err, &b) || b.Kind != tc.kind || b.Line != tc.line || b.Seq != tc.seq {
				t.Fatalf("verify: %v\nwant %s at line %d seq %d", err, tc.kind, tc.line, tc.seq)
			}
			t.Log(err)
		})
	}
	t.Run("no head", func(t *testing.T) {
		path := newLog(t, 5)
		os.Remove(path + HeadSuffix)
		rep, err := Verify(path)
		if err != nil || rep.Head {
			t.Fatalf("verify: %+v, %v", rep, err)
		}
	})
}

func TestAuditVerifyMissingFile(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(files []string) []string // the files given to Verify
		file   int                           // index, in the files given, of the one named
		seq    uint64
	}{
		{"middle file not given", func(f []string) []string { return append(f[:1:1], f[2:]...) }, 1, 0},
		{"middle file removed", func(f []string) []string { os.Remove(f[1]); return f }, 1, 0},
		{"first file not given", func(f []string) []string { return f[1:] }, 0, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			w := openLog(t, Options{Path: path, MaxSize: 1000})
			writeN(t, w, 1, 30)
			w.Close()
			all := rotatedFiles(t, path)
			var secondFirst uint64 // seq of the second file's first record
			if _, err := fmtSscan(all[1], path, &secondFirst); err != nil {
				t.Fatal(err)
			}
			files := tc.tamper(all)
			_, err := Verify(files...)
			var b *BreakError
			if !errors.As(err, &b) || b.Kind != KindMissingFile || b.File != files[tc.file] {
				t.Fatalf("verify: %v, want a missing file at %s", err, files[tc.file])
			}
			if want := tc.seq; want == 0 && b.Seq != secondFirst || want != 0 && b.Seq != want {
				t.Fatalf("verify: %v: wrong seq (second file starts at %d)", err, secondFirst)
			}
			t.Log(err)
		})
	}
}

// fmtSscan reads the first seq from a rotated file's name.
func fmtSscan(name, path string, seq *uint64) (int, error) {
	return fmt.Sscanf(name[len(path)+1:], "%d", seq)
}

func TestAuditVerifyLiveFileEmptied(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w := openLog(t, Options{Path: path, MaxSize: 1000})
	writeN(t, w, 1, 30)
	w.Close()
	files := rotatedFiles(t, path)
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	_, err := Verify(files...)
	var b *BreakError
	if !errors.As(err, &b) || b.Kind != KindTruncated || b.File != path || b.Line != 1 {
		t.Fatalf("verify: %v, want a truncated tail at %s:1", err, path)
	}
	t.Log(err)
}
