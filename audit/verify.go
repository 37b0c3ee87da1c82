package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"
)

// Kind classifies a break in the chain.
type Kind string

// The kinds of break Verify reports.
const (
	// KindEdited: a record's bytes changed (its hash no longer matches the
	// next record's prev or the head), or a line is not a record.
	KindEdited Kind = "edited"
	// KindDeleted: records are missing inside a file.
	KindDeleted Kind = "deleted"
	// KindReordered: records are out of seq order (swapped, moved, repeated).
	KindReordered Kind = "reordered"
	// KindTruncated: the tail is cut off: a partial last line, or fewer
	// records than the head file records.
	KindTruncated Kind = "truncated tail"
	// KindMissingFile: a file of the chain is missing (not given, or
	// absent), seen as a seq gap between two files or before the first.
	KindMissingFile Kind = "missing file"
	// KindHead: the head file cannot be read.
	KindHead Kind = "bad head file"
)

// BreakError is the error of Verify when the chain is broken: where the
// first broken record is and what kind of break it is.
type BreakError struct {
	File   string
	Line   int    // 1-based line in File; for a deleted or cut-off record, where it should be
	Seq    uint64 // seq of the broken record (for deleted ones, the first missing seq); 0 if unknown
	Kind   Kind
	Detail string
}

func (e *BreakError) Error() string {
	seq := ""
	if e.Seq > 0 {
		seq = fmt.Sprintf(" (seq %d)", e.Seq)
	}
	at := e.File
	if e.Line > 0 {
		at = fmt.Sprintf("%s:%d", e.File, e.Line)
	}
	return fmt.Sprintf("audit: chain broken at %s%s: %s: %s", at, seq, e.Kind, e.Detail)
}

// Report sums up an intact chain.
type Report struct {
	Records     int
	Files       int
	FirstSeq    uint64
	LastSeq     uint64
	First, Last time.Time // times of the first and last records
	Head        bool      // a head file was found beside the last file and matched
	BeyondHead  int       // records after the head's: written, but the head not rewritten before a crash
}

// Verify checks the chain across files, given in chain order (rotated
// files first, oldest first, then the live file): every line a record,
// seqs 1, 2, … without gap or repeat, every prev the hash of the line
// before, and the last record against the head file beside the last file
// (<file>.head) when there is one. Each file is read as a stream.
//
// The error is a *BreakError naming the first broken record, or an I/O
// error. Edits of the last record are caught only through the head file;
// the chain is not a signature: someone who can rewrite the files and the
// head can forge a consistent log (see docs/audit.md).
func Verify(files ...string) (Report, error) {
	var rep Report
	if len(files) == 0 {
		return rep, errors.New("audit: verify: no file given")
	}
	last := files[len(files)-1]
	h, herr := readHead(last + HeadSuffix)
	v := &verifier{prevHash: Genesis, next: 1, headSeq: h.Seq, headHash: Genesis}
	for _, name := range files {
		if err := v.file(name); err != nil {
			return rep, err
		}
	}
	rep = v.rep
	rep.Files = len(files)
	switch {
	case errors.Is(herr, os.ErrNotExist):
		return rep, nil
	case herr != nil:
		return rep, &BreakError{File: last + HeadSuffix, Line: 1, Kind: KindHead, Detail: herr.Error()}
	}
	switch {
	case h.Seq > v.prevSeq:
		line := 1
		if v.lastFile == last {
			line = v.lastLine + 1
		}
		return rep, &BreakError{File: last, Line: line, Seq: v.prevSeq + 1, Kind: KindTruncated,
			Detail: fmt.Sprintf("the head records seq %d, the chain ends at seq %d", h.Seq, v.prevSeq)}
	case h.Seq == v.prevSeq && h.Hash != v.prevHash:
		return rep, &BreakError{File: v.lastFile, Line: v.lastLine, Seq: v.prevSeq, Kind: KindEdited,
			Detail: "the last record's hash does not match the head file"}
	case h.Seq < v.prevSeq:
		// A head that lags: a power loss before it was rewritten. The
		// record it names must be in the chain unchanged.
		if v.headHash != h.Hash {
			return rep, &BreakError{File: last + HeadSuffix, Line: 1, Seq: h.Seq, Kind: KindEdited,
				Detail: fmt.Sprintf("the head records seq %d with a hash that is not that record's", h.Seq)}
		}
		rep.BeyondHead = int(v.prevSeq - h.Seq)
	}
	rep.Head = true
	return rep, nil
}

// verifier walks the records of the chain in order.
type verifier struct {
	rep      Report
	next     uint64 // seq expected next
	prevSeq  uint64
	prevHash string // hash of the last accepted line
	lastFile string // where the last accepted line is
	lastLine int
	// the head's seq, and the hash of the line with that seq (Genesis
	// for seq 0), to check a head that lags
	headSeq  uint64
	headHash string
}

// entry is one line of a file.
type entry struct {
	line    int
	raw     []byte
	rec     Record
	bad     error // not a record
	partial bool  // no newline at the end: the last bytes of the file
}

func (v *verifier) file(name string) error {
	f, err := os.Open(name)
	if errors.Is(err, os.ErrNotExist) {
		return &BreakError{File: name, Kind: KindMissingFile, Seq: v.next, Detail: "no such file"}
	}
	if err != nil {
		return fmt.Errorf("audit: verify: %w", err)
	}
	defer f.Close()
	r := bufio.NewReaderSize(f, 64<<10)
	n := 0
	read := func() (*entry, error) {
		raw, err := r.ReadBytes('\n')
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("audit: verify %s: %w", name, err)
		}
		if len(raw) == 0 {
			return nil, nil
		}
		n++
		e := &entry{line: n}
		if raw[len(raw)-1] == '\n' {
			raw = raw[:len(raw)-1]
		} else {
			e.partial = true
		}
		e.raw = raw
		dec := json.NewDecoder(bytes.NewReader(raw))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&e.rec); err != nil {
			e.bad = err
		} else if e.rec.Seq == 0 || len(e.rec.Prev) != len(Genesis) {
			e.bad = errors.New("no seq or prev")
		}
		return e, nil
	}
	cur, err := read()
	if err != nil {
		return err
	}
	first := true
	for cur != nil {
		nxt, err := read()
		if err != nil {
			return err
		}
		if err := v.check(name, cur, nxt, first); err != nil {
			return err
		}
		first = false
		h := lineHash(cur.raw)
		if cur.rec.Seq == v.headSeq {
			v.headHash = h
		}
		if v.rep.Records == 0 {
			v.rep.FirstSeq, v.rep.First = cur.rec.Seq, cur.rec.Time
		}
		v.rep.Records++
		v.rep.LastSeq, v.rep.Last = cur.rec.Seq, cur.rec.Time
		v.prevSeq, v.prevHash, v.next = cur.rec.Seq, h, cur.rec.Seq+1
		v.lastFile, v.lastLine = name, cur.line
		cur = nxt
	}
	return nil
}

// check checks entry e of file name against the chain so far; nxt is the
// entry after it in the same file (nil at its end), first says e is the
// file's first.
func (v *verifier) check(name string, e, nxt *entry, first bool) error {
	brk := func(kind Kind, seq uint64, format string, args ...any) error {
		return &BreakError{File: name, Line: e.line, Seq: seq, Kind: kind, Detail: fmt.Sprintf(format, args...)}
	}
	if e.partial {
		return brk(KindTruncated, 0, "the last line is partial (no newline): cut off, or a crash during a write the Writer had not acknowledged (opening the Writer removes it)")
	}
	if e.bad != nil {
		return brk(KindEdited, 0, "not a record: %v", e.bad)
	}
	seq := e.rec.Seq
	switch {
	case seq == v.next && e.rec.Prev == v.prevHash:
		return nil
	case seq == v.next && v.prevSeq == 0:
		return brk(KindEdited, seq, "the first record's prev is not the genesis value")
	case seq == v.next:
		return &BreakError{File: v.lastFile, Line: v.lastLine, Seq: v.prevSeq, Kind: KindEdited,
			Detail: fmt.Sprintf("its hash does not match the prev of seq %d (%s:%d): this record, or that prev, was changed", seq, name, e.line)}
	case e.rec.Prev == v.prevHash:
		return brk(KindEdited, seq, "seq is %d where %d follows seq %d, though its prev matches", seq, v.next, v.prevSeq)
	case seq < v.next:
		return brk(KindReordered, seq, "seq %d after seq %d", seq, v.prevSeq)
	case v.prevSeq == 0:
		return brk(KindMissingFile, 1, "the chain starts at seq %d, not 1: the files before %s are missing (give them first)", seq, name)
	case first:
		return brk(KindMissingFile, v.next, "%s starts at seq %d but %s ended at seq %d: a file between them is missing", name, seq, v.lastFile, v.prevSeq)
	case nxt != nil && nxt.bad == nil && !nxt.partial && nxt.rec.Seq < seq:
		return brk(KindReordered, seq, "seq %d comes before seq %d", seq, nxt.rec.Seq)
	default:
		if seq == v.next+1 {
			return brk(KindDeleted, v.next, "seq %d is missing: the record here is seq %d", v.next, seq)
		}
		return brk(KindDeleted, v.next, "seqs %d to %d are missing: the record here is seq %d", v.next, seq-1, seq)
	}
}
