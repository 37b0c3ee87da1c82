package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestAuditWriteAndVerify(t *testing.T) {
	path := newLog(t, 10)
	rep, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 10 || rep.Files != 1 || rep.FirstSeq != 1 || rep.LastSeq != 10 || !rep.Head || rep.BeyondHead != 0 {
		t.Fatalf("report %+v", rep)
	}
	if want := time.Date(2026, 12, 1, 11, 0, 0, int(time.Millisecond), time.UTC); !rep.First.Equal(want) {
		t.Fatalf("first time %v, want %v (the injected clock)", rep.First, want)
	}
	lines := readLines(t, path)
	if !bytes.HasPrefix(lines[0], []byte(`{"seq":1,"time":"2026-12-01T11:00:00.001Z","event":"issue",`)) ||
		!bytes.HasSuffix(lines[0], []byte(`"prev":"`+Genesis+"\"}\n")) {
		t.Fatalf("first line %s", lines[0])
	}
	var second Record
	if err := json.Unmarshal(lines[1], &second); err != nil {
		t.Fatal(err)
	}
	if second.Prev != lineHash(bytes.TrimSuffix(lines[0], []byte("\n"))) {
		t.Fatal("prev of the second record is not the hash of the first line")
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v, want 0600", fi.Mode().Perm())
	}
}

func TestAuditConcurrentWritersShareSyncs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w := openLog(t, Options{Path: path})
	var syncs atomic.Int64
	w.sync = func(f *os.File) error {
		syncs.Add(1)
		time.Sleep(2 * time.Millisecond) // a disk's fsync, so that writers pile up
		return fdatasync(f)
	}
	const writers, each = 16, 25
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for g := range writers {
		wg.Go(func() {
			for i := range each {
				errs <- w.Write(context.Background(), rec(g*each+i))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if seq, _ := w.Head(); seq != writers*each {
		t.Fatalf("head seq %d, want %d", seq, writers*each)
	}
	if n := syncs.Load(); n >= writers*each/2 {
		t.Fatalf("%d fdatasyncs for %d records: the group commit does not share them", n, writers*each)
	} else {
		t.Logf("%d records, %d fdatasyncs", writers*each, n)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != writers*each {
		t.Fatalf("verified %d records", rep.Records)
	}
}

func TestAuditResumeAfterReopen(t *testing.T) {
	path := newLog(t, 5)
	w := openLog(t, Options{Path: path})
	if seq, _ := w.Head(); seq != 5 {
		t.Fatalf("resumed at seq %d, want 5", seq)
	}
	writeN(t, w, 6, 5)
	w.Close()
	rep, err := Verify(path)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 10 || rep.LastSeq != 10 {
		t.Fatalf("report %+v", rep)
	}
}

// A crash during a write that was never acknowledged leaves a partial
// line; Open cuts it off and the chain goes on.
func TestAuditResumeCutsPartialLine(t *testing.T) {
	path := newLog(t, 3)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":4,"time":"2026-`)
	f.Close()
	if _, err := Verify(path); !isBreak(err, KindTruncated) {
		t.Fatalf("verify before reopen: %v, want a truncated tail", err)
	}
	w := openLog(t, Options{Path: path})
	writeN(t, w, 4, 2)
	w.Close()
	if rep, err := Verify(path); err != nil || rep.Records != 5 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
}

// A head that lags the file (a power loss before it was rewritten) is
// accepted when its record is in the file unchanged.
func TestAuditHeadBehindFile(t *testing.T) {
	path := newLog(t, 6)
	lines := readLines(t, path)
	if err := writeHead(path+HeadSuffix, head{Seq: 4, Hash: lineHash(bytes.TrimSuffix(lines[3], []byte("\n")))}, false); err != nil {
		t.Fatal(err)
	}
	rep, err := Verify(path)
	if err != nil || rep.BeyondHead != 2 {
		t.Fatalf("verify: %+v, %v", rep, err)
	}
	w := openLog(t, Options{Path: path})
	if seq, _ := w.Head(); seq != 6 {
		t.Fatalf("resumed at %d, want 6", seq)
	}
}

func TestAuditOpenRefusesBrokenTail(t *testing.T) {
	for _, tc := range []struct {
		name   string
		tamper func(t *testing.T, path string)
	}{
		{"tail cut off", func(t *testing.T, path string) {
			lines := readLines(t, path)
			writeLines(t, path, lines[:len(lines)-2])
		}},
		{"last record edited", func(t *testing.T, path string) {
			lines := readLines(t, path)
			lines[len(lines)-2] = bytes.Replace(lines[len(lines)-2], []byte("cb_orders"), []byte("cb_ORDERS"), 1)
			writeLines(t, path, lines)
		}},
		{"head removed", func(t *testing.T, path string) {
			os.Remove(path + HeadSuffix)
		}},
		{"file emptied", func(t *testing.T, path string) {
			writeLines(t, path, nil)
			os.WriteFile(RotatedName(path, 1), nil, 0o600)
			os.Remove(path + HeadSuffix)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := newLog(t, 5)
			tc.tamper(t, path)
			w, err := Open(context.Background(), Options{Path: path})
			if !errors.Is(err, ErrTailMismatch) {
				if w != nil {
					w.Close()
				}
				t.Fatalf("open: %v, want ErrTailMismatch", err)
			}
			t.Log(err)
		})
	}
}

func TestAuditRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	w := openLog(t, Options{Path: path, MaxSize: 1000})
	writeN(t, w, 1, 30)
	w.Close()
	files := rotatedFiles(t, path)
	if len(files) < 4 {
		t.Fatalf("%d files after rotation, want several: %v", len(files), files)
	}
	rep, err := Verify(files...)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Records != 30 || rep.Files != len(files) || !rep.Head {
		t.Fatalf("report %+v", rep)
	}
	// Reopening resumes across the rotation.
	w = openLog(t, Options{Path: path, MaxSize: 1000})
	writeN(t, w, 31, 10)
	w.Close()
	if rep, err := Verify(rotatedFiles(t, path)...); err != nil || rep.Records != 40 {
		t.Fatalf("verify after reopen: %+v, %v", rep, err)
	}
}

// rotatedFiles returns the rotated files of path in chain order, then path.
func rotatedFiles(t *testing.T, path string) []string {
	t.Helper()
	files, err := filepath.Glob(path + ".[0-9]*")
	if err != nil {
		t.Fatal(err)
	}
	return append(files, path)
}

func TestAuditUnavailable(t *testing.T) {
	ctx := context.Background()
	t.Run("closed file", func(t *testing.T) {
		w := openLog(t, Options{Path: filepath.Join(t.TempDir(), "audit.log")})
		writeN(t, w, 1, 1)
		w.f.Close()
		for range 2 { // and it stays failed
			if err := w.Write(ctx, rec(2)); !errors.Is(err, ErrUnavailable) {
				t.Fatalf("write: %v, want ErrUnavailable", err)
			}
		}
	})
	t.Run("sync fails", func(t *testing.T) {
		w := openLog(t, Options{Path: filepath.Join(t.TempDir(), "audit.log")})
		w.sync = func(*os.File) error { return errors.New("EIO") }
		if err := w.Write(ctx, rec(1)); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "EIO") {
			t.Fatalf("write: %v, want ErrUnavailable and the cause", err)
		}
	})
	t.Run("disk full", func(t *testing.T) {
		full, err := os.OpenFile("/dev/full", os.O_WRONLY, 0)
		if err != nil {
			t.Skip(err)
		}
		defer full.Close()
		w := openLog(t, Options{Stdout: full})
		if err := w.Write(ctx, rec(1)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("write: %v, want ErrUnavailable", err)
		}
	})
	t.Run("closed writer", func(t *testing.T) {
		w := openLog(t, Options{Path: filepath.Join(t.TempDir(), "audit.log")})
		w.Close()
		if err := w.Write(ctx, rec(1)); !errors.Is(err, ErrUnavailable) || !errors.Is(err, ErrClosed) {
			t.Fatalf("write: %v, want ErrUnavailable and ErrClosed", err)
		}
	})
	t.Run("directory gone", func(t *testing.T) {
		dir := filepath.Join(t.TempDir(), "logs")
		os.Mkdir(dir, 0o700)
		w := openLog(t, Options{Path: filepath.Join(dir, "audit.log")})
		os.RemoveAll(dir)
		if err := w.Write(ctx, rec(1)); !errors.Is(err, ErrUnavailable) {
			t.Fatalf("write: %v, want ErrUnavailable (the head cannot be written)", err)
		}
	})
}

func TestAuditInvalidRecords(t *testing.T) {
	var out bytes.Buffer
	w := openLog(t, Options{Stdout: &out})
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		edit func(*Record)
	}{
		{"unknown event", func(r *Record) { r.Event = "login" }},
		{"unknown by", func(r *Record) { r.By = "someone" }},
		{"empty result", func(r *Record) { r.Result = "" }},
		{"result with text", func(r *Record) { r.Result = "failed: password=x" }},
		{"long field", func(r *Record) { r.Role = strings.Repeat("r", maxField+1) }},
		{"not utf-8", func(r *Record) { r.Username = "\xff" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := rec(1)
			tc.edit(&r)
			if err := w.Write(ctx, r); !errors.Is(err, ErrInvalidRecord) || errors.Is(err, ErrUnavailable) {
				t.Fatalf("write: %v, want ErrInvalidRecord only", err)
			}
		})
	}
	// Nothing was written and the log goes on at seq 1.
	if err := w.Write(ctx, rec(1)); err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(out.Bytes(), []byte(`{"seq":1,`)) || bytes.Count(out.Bytes(), []byte("\n")) != 1 {
		t.Fatalf("stdout %s", out.Bytes())
	}
}

func TestAuditReasonRedacted(t *testing.T) {
	var out bytes.Buffer
	w := openLog(t, Options{Stdout: &out})
	r := rec(1)
	r.Result, r.Reason = "UNAVAILABLE", "connect postgres://broker:hunter2@db:5432/app: refused"
	if err := w.Write(context.Background(), r); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(out.Bytes(), []byte("hunter2")) || !bytes.Contains(out.Bytes(), []byte("redacted by audit")) {
		t.Fatalf("line %s", out.Bytes())
	}
}

func TestAuditLooksSecret(t *testing.T) {
	for _, tc := range []struct {
		s    string
		want bool
	}{
		{"", false},
		{"role not allowed for caller", false},
		{`password authentication failed for user "cb_x"`, false},
		{"the lease expired", false},
		{"host=db password=hunter2", true},
		{"PASSWORD: hunter2", true},
		{`{"pwd":"x"}`, true},
		{"postgres://broker:hunter2@db/app", true},
		{"mysql://root@db/app (no password)", false},
		{"see https://example.org/docs", false},
		{"token=abc", true},
	} {
		if got := LooksSecret(tc.s); got != tc.want {
			t.Errorf("LooksSecret(%q) = %v, want %v", tc.s, got, tc.want)
		}
	}
}

func TestAuditCtxEndedBeforeWrite(t *testing.T) {
	w := openLog(t, Options{Path: filepath.Join(t.TempDir(), "audit.log")})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := w.Write(ctx, rec(1)); !errors.Is(err, context.Canceled) {
		t.Fatalf("write: %v", err)
	}
	if seq, _ := w.Head(); seq != 0 {
		t.Fatalf("seq %d after a cancelled write", seq)
	}
}

// A power loss can leave the head at any commit since it was last synced:
// at seq 0 (before the first record), or at the last record of a rotated
// file. Open and Verify accept both.
func TestAuditHeadLagsAfterPowerLoss(t *testing.T) {
	for _, tc := range []struct {
		name    string
		maxSize int64
		seq     func(files []string) uint64 // the seq the head is set back to
	}{
		{"before the first record", 0, func([]string) uint64 { return 0 }},
		{"at the end of a rotated file", 1000, func(files []string) uint64 {
			var live Record
			json.Unmarshal(readLines(t, files[len(files)-1])[0], &live)
			return live.Seq - 1
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "audit.log")
			w := openLog(t, Options{Path: path, MaxSize: tc.maxSize})
			writeN(t, w, 1, 30)
			w.Close()
			files := rotatedFiles(t, path)
			seq := tc.seq(files)
			hash := Genesis
			if seq > 0 {
				prev := readLines(t, files[len(files)-2])
				hash = lineHash(bytes.TrimSuffix(prev[len(prev)-2], []byte("\n")))
			}
			if err := writeHead(path+HeadSuffix, head{Seq: seq, Hash: hash}, false); err != nil {
				t.Fatal(err)
			}
			rep, err := Verify(files...)
			if err != nil || rep.BeyondHead != 30-int(seq) {
				t.Fatalf("verify: %+v, %v", rep, err)
			}
			w = openLog(t, Options{Path: path, MaxSize: tc.maxSize})
			if got, _ := w.Head(); got != 30 {
				t.Fatalf("resumed at %d, want 30", got)
			}
		})
	}
}

func TestAuditSecondWriterRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	openLog(t, Options{Path: path})
	if w, err := Open(context.Background(), Options{Path: path}); err == nil {
		w.Close()
		t.Fatal("a second Writer opened the same file")
	} else {
		t.Log(err)
	}
}

func TestAuditFileAndStdout(t *testing.T) {
	var out bytes.Buffer
	path := filepath.Join(t.TempDir(), "audit.log")
	w := openLog(t, Options{Path: path, Stdout: &out})
	writeN(t, w, 1, 3)
	w.Close()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, out.Bytes()) {
		t.Fatalf("stdout differs from the file:\n%s\n%s", out.Bytes(), b)
	}
}
