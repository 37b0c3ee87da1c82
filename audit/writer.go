package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/credbroker/credbroker/internal/batch"
)

// Errors of the Writer, in one block.
var (
	// ErrUnavailable is wrapped by every error of Write that says the
	// record may not be durable: the sink could not be written or synced,
	// an earlier failure left the Writer failed, or it is closed. The
	// broker refuses the operation it was recording (fail closed).
	ErrUnavailable = errors.New("audit: log unavailable")
	// ErrInvalidRecord is returned by Write for a record it refuses to
	// write (unknown event, malformed result, field too long). Nothing was
	// written; the log stays usable.
	ErrInvalidRecord = errors.New("audit: invalid record")
	// ErrClosed is wrapped, with ErrUnavailable, by Write after Close.
	ErrClosed = errors.New("audit: writer closed")
	// ErrTailMismatch is returned by Open when the log's last record does
	// not match its head file: the tail was cut off or edited since the
	// Writer last wrote it. Run `credbroker audit verify`.
	ErrTailMismatch = errors.New("audit: the log's tail does not match its head file")
)

// DefaultMaxSize is the size at which the file is rotated when
// Options.MaxSize is zero.
const DefaultMaxSize = 64 << 20

// Options configure a Writer. At least one of Path and Stdout is set.
type Options struct {
	// Path is the log file (created 0600, appended to). Empty: no file.
	Path string
	// Stdout, when set, receives every line too, after the file has it.
	// It cannot be synced; with no Path the chain restarts at Genesis each
	// time the Writer is opened.
	Stdout io.Writer
	// MaxSize rotates the file before a group commit once it holds this
	// many bytes (a file can exceed it by one group commit). Zero means
	// DefaultMaxSize; negative, never.
	MaxSize int64
	// Now is the clock of records written with a zero Time (time.Now when
	// nil).
	Now func() time.Time
	// SyncEvery trades durability for speed. Zero (the default): Write
	// returns once its record is fdatasynced. Positive: Write returns once
	// its record is written to the file, which a crash of the process
	// cannot undo (the kernel has it), and the file is fdatasynced at most
	// SyncEvery later; a crash of the machine (power loss, kernel panic)
	// can lose the records of the last SyncEvery. A failed sync fails the
	// Writer as a failed write does.
	SyncEvery time.Duration
}

// Writer appends records to the audit log, chained and durable. It must
// be made with Open; it is safe for concurrent use. It starts no
// goroutine: concurrent Writes share one write and one fdatasync by group
// commit (internal/batch), led by one of the writing goroutines.
type Writer struct {
	path    string
	stdout  io.Writer
	maxSize int64
	now     func() time.Time
	sync    func(*os.File) error // fdatasync; tests count the calls
	q       *batch.Queue[[]Record, error]
	// syncEvery is Options.SyncEvery; with it, dirty says the file holds
	// records not yet synced and syncTimer is the pending sync.
	syncEvery time.Duration
	dirty     bool
	syncTimer *time.Timer

	mu       sync.Mutex // held by the batch that writes, by Close and Head
	f        *os.File
	headF    *os.File // the head file, kept open between commits; nil: (re)open it
	size     int64    // bytes in f
	firstSeq uint64   // seq of f's first record, 0 while f is empty
	seq      uint64   // seq of the last record written
	prev     string   // its line hash (Genesis before the first)
	failed   error    // sticky: once set every Write returns it
	closed   bool
}

// Open opens the log at opts.Path (creating it) and resumes its chain: the
// next record follows the file's last line, or the head file's record when
// the file is empty (just rotated). It refuses (ErrTailMismatch) a file
// whose last record does not match the head file, a file with records but
// no head file, and an empty file with rotated files beside it but no
// head file. A partial last line, left by a
// crash during a write that was never acknowledged, is cut off.
func Open(ctx context.Context, opts Options) (*Writer, error) {
	if opts.Path == "" && opts.Stdout == nil {
		return nil, errors.New("audit: open: neither a file nor stdout given")
	}
	w := &Writer{path: opts.Path, stdout: opts.Stdout, maxSize: opts.MaxSize, now: opts.Now, sync: fdatasync, prev: Genesis, syncEvery: opts.SyncEvery}
	if w.maxSize == 0 {
		w.maxSize = DefaultMaxSize
	}
	if w.now == nil {
		w.now = time.Now
	}
	w.q = batch.New(w.commit, batch.Options{})
	if w.path == "" {
		return w, nil
	}
	if err := w.resume(ctx); err != nil {
		return nil, fmt.Errorf("open audit log %s: %w", w.path, err)
	}
	return w, nil
}

// resume opens the file and sets seq, prev, size and firstSeq from it and
// its head file.
func (w *Writer) resume(ctx context.Context) error {
	h, err := readHead(w.path + HeadSuffix)
	haveHead := err == nil
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	f, err := os.OpenFile(w.path, os.O_RDWR|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if err := lock(f); err != nil {
		return err
	}
	t, err := scanTail(ctx, f, h.Seq)
	if err != nil {
		return err
	}
	switch {
	case t.lines > 0:
		switch {
		case !haveHead:
			// Open writes the head before the first record, so it was
			// removed: the tail could have gone with it.
			return fmt.Errorf("%w: the file has records (last seq %d) but there is no head file %s: run credbroker audit verify, then move the file aside", ErrTailMismatch, t.last.Seq, w.path+HeadSuffix)
		case h.Seq > t.last.Seq:
			return fmt.Errorf("%w: the file ends at seq %d but the head records seq %d: its tail was cut off", ErrTailMismatch, t.last.Seq, h.Seq)
		case h.Seq == t.last.Seq && h.Hash != t.lastHash:
			return fmt.Errorf("%w: the last record (seq %d, line %d) is not the one the head records: edited or replaced", ErrTailMismatch, t.last.Seq, t.lines)
		case h.Seq < t.last.Seq && h.Hash != t.hashAt && (h.Seq+1 != t.first || h.Hash != t.firstPrev):
			// A head behind the file is a power loss before it was
			// rewritten, but the record it names must be in the file
			// unchanged, or be the one the file's first record follows.
			return fmt.Errorf("%w: the head records seq %d, which the file does not hold unchanged", ErrTailMismatch, h.Seq)
		}
		w.seq, w.prev, w.firstSeq = t.last.Seq, t.lastHash, t.first
	case haveHead:
		w.seq, w.prev = h.Seq, h.Hash
	default:
		if rotated, _ := filepath.Glob(w.path + ".[0-9]*"); len(rotated) > 0 {
			return fmt.Errorf("%w: the file is empty, rotated files (%s, …) exist and there is no head file: cannot tell where the chain stands", ErrTailMismatch, rotated[0])
		}
	}
	if t.partial {
		if err := f.Truncate(t.size); err != nil {
			return fmt.Errorf("cut the partial last line: %w", err)
		}
	}
	w.f, w.size = f, t.size
	if err := writeHead(w.path+HeadSuffix, head{Seq: w.seq, Hash: w.prev}, true); err != nil {
		return err
	}
	ok = true
	return nil
}

// tail is what Open needs of an existing file.
type tail struct {
	lines     int    // complete lines
	size      int64  // bytes of the complete lines
	partial   bool   // bytes after the last newline
	first     uint64 // seq of the first line
	firstPrev string // and its prev
	last      Record // the last complete line
	lastHash  string
	hashAt    string // line hash of the record with the seq asked for
}

func scanTail(ctx context.Context, f *os.File, want uint64) (tail, error) {
	var t tail
	r := bufio.NewReaderSize(f, 64<<10)
	var last []byte
	for {
		line, err := r.ReadBytes('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			line = line[:len(line)-1]
			t.lines++
			t.size += int64(len(line)) + 1
			seq, ok := peekSeq(line)
			if !ok {
				return t, fmt.Errorf("%w: line %d is not a record: run credbroker audit verify", ErrTailMismatch, t.lines)
			}
			if t.lines == 1 {
				var r Record
				if err := json.Unmarshal(line, &r); err != nil {
					return t, fmt.Errorf("%w: the first line is not a record: %v", ErrTailMismatch, err)
				}
				t.first, t.firstPrev = seq, r.Prev
			}
			if seq == want {
				t.hashAt = lineHash(line)
			}
			last = line
		} else if len(line) > 0 {
			t.partial = true
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return t, err
		}
		if t.lines%4096 == 0 {
			if err := ctx.Err(); err != nil {
				return t, err
			}
		}
	}
	if t.lines > 0 {
		if err := json.Unmarshal(last, &t.last); err != nil {
			return t, fmt.Errorf("%w: the last line (%d) is not a record: %v", ErrTailMismatch, t.lines, err)
		}
		t.lastHash = lineHash(last)
	}
	return t, nil
}

// peekSeq reads the seq of a line without decoding it: every line the
// Writer writes starts with {"seq":N,.
func peekSeq(line []byte) (uint64, bool) {
	rest, ok := bytes.CutPrefix(line, []byte(`{"seq":`))
	if !ok {
		return 0, false
	}
	i := bytes.IndexByte(rest, ',')
	if i < 0 {
		return 0, false
	}
	n, err := strconv.ParseUint(string(rest[:i]), 10, 64)
	return n, err == nil
}

// Write appends r to the log and returns once it is durable (written and
// fdatasynced, then written to Stdout). The Writer sets r.Seq and r.Prev,
// and r.Time when zero; a Reason that LooksSecret is replaced by
// RedactedReason. An error wraps ErrUnavailable (the log cannot be
// written, is failed or closed: the record may be lost and the caller
// must not go on as if it were recorded), ErrInvalidRecord, or is ctx's
// error when ctx ended before the record was taken into a group commit
// (then it was not written).
func (w *Writer) Write(ctx context.Context, r Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return w.WriteAll(ctx, []Record{r})
}

// WriteAll writes recs, in order and next to each other in the chain, in
// one group commit (one fdatasync for all of them, shared with concurrent
// writers), as Write does one. A record it refuses (ErrInvalidRecord)
// fails the call and nothing of recs is written.
func (w *Writer) WriteAll(ctx context.Context, recs []Record) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(recs) == 0 {
		return nil
	}
	res, err := w.q.Do(ctx, slices.Clone(recs)) // the commit numbers and times its own copies
	if err != nil {
		return err
	}
	return res
}

// commit is one group commit: every valid record of the batch chained
// into one buffer, one write, one fdatasync, the head rewritten.
func (w *Writer) commit(_ context.Context, items [][]Record) []error {
	w.mu.Lock()
	defer w.mu.Unlock()
	out := make([]error, len(items))
	fail := func(err error) []error {
		for i := range out {
			if out[i] == nil {
				out[i] = err
			}
		}
		return out
	}
	if w.closed {
		return fail(fmt.Errorf("%w: %w", ErrUnavailable, ErrClosed))
	}
	if w.failed != nil {
		return fail(w.failed)
	}
	var buf bytes.Buffer
	seq, prev := w.seq, w.prev
items:
	for i, recs := range items {
		for j := range recs {
			if err := recs[j].check(); err != nil {
				out[i] = err
				continue items
			}
		}
		mark, itemSeq, itemPrev := buf.Len(), seq, prev
		for j := range recs {
			r := &recs[j]
			if LooksSecret(r.Reason) {
				r.Reason = RedactedReason
			}
			if r.Time.IsZero() {
				r.Time = w.now()
			}
			r.Time = r.Time.UTC()
			r.Seq, r.Prev = itemSeq+1, itemPrev
			line, err := json.Marshal(r)
			if err != nil {
				// Nothing of the item: back to where it began.
				buf.Truncate(mark)
				out[i] = fmt.Errorf("%w: %v", ErrInvalidRecord, err)
				continue items
			}
			itemSeq, itemPrev = r.Seq, lineHash(line)
			buf.Write(line)
			buf.WriteByte('\n')
		}
		seq, prev = itemSeq, itemPrev
	}
	if buf.Len() == 0 {
		return out
	}
	if w.f != nil {
		if err := w.appendFile(buf.Bytes(), w.seq+1, head{Seq: seq, Hash: prev}); err != nil {
			w.failed = fmt.Errorf("%w: %s: %w", ErrUnavailable, w.path, err)
			return fail(w.failed)
		}
	}
	w.seq, w.prev = seq, prev // in the file: the chain goes on from here whatever stdout does
	if w.stdout != nil {
		if _, err := w.stdout.Write(buf.Bytes()); err != nil {
			w.failed = fmt.Errorf("%w: stdout: %w", ErrUnavailable, err)
			return fail(w.failed)
		}
	}
	return out
}

// appendFile writes lines (whose first record is firstSeq) to the file,
// rotating it first if it is full, syncs it and records h in the head.
func (w *Writer) appendFile(lines []byte, firstSeq uint64, h head) error {
	if w.maxSize > 0 && w.size >= w.maxSize {
		if err := w.rotate(); err != nil {
			return err
		}
	}
	n, err := w.f.Write(lines)
	w.size += int64(n)
	if err != nil {
		return err
	}
	if w.syncEvery > 0 {
		w.dirty = true
		if w.syncTimer == nil {
			w.syncTimer = time.AfterFunc(w.syncEvery, w.syncLater)
		}
	} else if err := w.sync(w.f); err != nil {
		return err
	}
	if w.firstSeq == 0 {
		w.firstSeq = firstSeq
	}
	// Not synced: the log itself is durable, and a head that lags it after
	// a power loss is accepted by Open and Verify when the chain holds.
	if w.headF == nil {
		f, err := os.OpenFile(w.path+HeadSuffix, os.O_RDWR|os.O_CREATE, 0o600)
		if err != nil {
			return fmt.Errorf("open head: %w", err)
		}
		w.headF = f
	}
	return headInPlace(w.headF, h)
}

// syncLater is the deferred sync of SyncEvery: it syncs what was written
// since the last one. A failure fails the Writer (every later Write
// returns it), as a failed sync in Write would.
func (w *Writer) syncLater() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.syncTimer = nil
	if err := w.syncDirty(); err != nil && w.failed == nil {
		w.failed = fmt.Errorf("%w: %s: %w", ErrUnavailable, w.path, err)
	}
}

// syncDirty syncs the file if records written since the last sync may
// not be durable. w.mu is held.
func (w *Writer) syncDirty() error {
	if !w.dirty || w.f == nil || w.failed != nil {
		return nil
	}
	if err := w.sync(w.f); err != nil {
		return err
	}
	w.dirty = false
	return nil
}

// closeHead closes the head file kept open, before writeHead replaces it
// by a rename (the open one would be the old, unlinked file).
func (w *Writer) closeHead() {
	if w.headF != nil {
		_ = w.headF.Close()
		w.headF = nil
	}
}

// RotatedName is the name a full file is renamed to: the log's name and
// the seq of the file's first record, zero-padded so that the rotated
// files of a log sort in chain order (audit.log.000000000001,
// audit.log.000000041213, …, then audit.log itself).
func RotatedName(path string, firstSeq uint64) string {
	return fmt.Sprintf("%s.%012d", path, firstSeq)
}

// rotate renames the full file and starts an empty one. The head, which
// then names the rotated file's last record, is made durable first, so
// that a crash at any point leaves Open either the old file or an empty
// one with a head to resume from.
func (w *Writer) rotate() error {
	if err := w.syncDirty(); err != nil {
		return err
	}
	w.closeHead()
	if err := writeHead(w.path+HeadSuffix, head{Seq: w.seq, Hash: w.prev}, true); err != nil {
		return err
	}
	old := RotatedName(w.path, w.firstSeq)
	if _, err := os.Lstat(old); err == nil {
		return fmt.Errorf("rotate: %s exists", old)
	}
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	w.f = nil
	if err := os.Rename(w.path, old); err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	f, err := os.OpenFile(w.path, os.O_RDWR|os.O_CREATE|os.O_EXCL|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	w.f, w.size, w.firstSeq = f, 0, 0
	if err := lock(f); err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	if err := syncDir(filepath.Dir(w.path)); err != nil {
		return fmt.Errorf("rotate: %w", err)
	}
	return nil
}

// Head returns the seq and line hash of the last record written (0 and
// Genesis before the first).
func (w *Writer) Head() (seq uint64, hash string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.seq, w.prev
}

// Close makes the head file durable and closes the file. Writes after
// Close return an error wrapping ErrClosed and ErrUnavailable.
func (w *Writer) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil
	}
	w.closed = true
	if w.syncTimer != nil {
		w.syncTimer.Stop()
		w.syncTimer = nil
	}
	w.closeHead()
	if w.f == nil {
		return nil
	}
	err := w.syncDirty()
	if err == nil && w.failed == nil {
		err = writeHead(w.path+HeadSuffix, head{Seq: w.seq, Hash: w.prev}, true)
	}
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("audit: close %s: %w", w.path, cerr)
	}
	return err
}
