package boltstore

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	bolt "go.etcd.io/bbolt"
)

// The write-ahead log. A write is durable once its frame is in the log and
// the log is fdatasynced: one small write and one fdatasync per group
// commit, where a bbolt commit is two (its pages, then its meta page) plus
// the page rewrites. The writes reach the bbolt file later, many at a time,
// in a checkpoint: one ordinary, fsynced bbolt transaction that also
// records the sequence number of the last frame it applied (walBucket).
//
// The log is two files, segments, used in turn: frames are appended to the
// active one while the other's writes are checkpointed in the background;
// once that checkpoint is durable the other segment is free, and the next
// rotation makes it active and overwrites it from its start. Open empties
// both and preallocates rotateBytes of blocks to each (fallocate: they read
// as zeros), so a frame overwrites blocks the file already has, which needs
// no metadata update: the fdatasync writes the frame and nothing else.
//
// # Frames
//
//	length  uint32, little endian: of the payload
//	crc     uint32: CRC-32C of the store's log id (walID), seq and payload
//	seq     uint64: one more than the previous frame's, across segments
//	payload uvarint count, then count × (kind byte, uvarint len, key,
//	        uvarint len, value)
//
// # Replay (Open)
//
// Each segment is read from its start while the frames are whole (a zero
// length, the preallocated blocks past the last frame, is none), their
// CRC matches and each seq is one more than the one before: a torn frame
// (a crash during its write) or an older frame left from the segment's
// previous use ends it. The frames of both segments above the applied
// sequence number must then follow it without a gap; they are applied in
// one transaction before the store is verified and served, and the log is
// then emptied. A gap, a frame that does not decode, or a missing log of a
// store not closed cleanly is lease.ErrStoreCorrupt: an acknowledged write
// would be lost. The log of a store closed cleanly is not read but emptied
// (it is older than the bbolt file: a backup put back in place), and a
// frame of another store's log fails its CRC.

// Operations, as logged and as applied.
const (
	opPut    byte = 1 + iota // leases bucket: key → val
	opDelete                 // leases bucket: remove key
	opDeny                   // deregistrations: key → val, unless present
	opAllow                  // deregistrations: remove key
)

// op is one write of a frame.
type op struct {
	kind     byte
	key, val []byte
}

// apply performs o in tx, whose leases bucket exists.
func (o op) apply(tx *bolt.Tx) error {
	switch o.kind {
	case opPut:
		return leases(tx).Put(o.key, o.val)
	case opDelete:
		return leases(tx).Delete(o.key)
	case opDeny:
		b, err := tx.CreateBucketIfNotExists(deniedName)
		if err != nil || b.Get(o.key) != nil {
			return err
		}
		return b.Put(o.key, o.val)
	case opAllow:
		if b := tx.Bucket(deniedName); b != nil {
			return b.Delete(o.key)
		}
		return nil
	}
	return fmt.Errorf("unknown operation %d", o.kind)
}

// check refuses what bbolt would refuse when the op is applied: a
// checkpoint must not fail on a write that was acknowledged.
func (o op) check() error {
	switch {
	case len(o.key) == 0:
		return errors.New("empty key")
	case len(o.key) > bolt.MaxKeySize:
		return fmt.Errorf("key of %d bytes", len(o.key))
	case len(o.val) > bolt.MaxValueSize:
		return fmt.Errorf("value of %d bytes", len(o.val))
	}
	return nil
}

const frameHeader = 16

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// appendFrame appends the frame of ops with sequence number seq to b. id
// is the store's (walID): it seeds the CRC, so that a frame of another
// store's log never passes for one of this store's.
func appendFrame(b, id []byte, seq uint64, ops []op) []byte {
	start := len(b)
	b = append(b, make([]byte, frameHeader)...)
	b = binary.AppendUvarint(b, uint64(len(ops)))
	for _, o := range ops {
		b = append(b, o.kind)
		b = binary.AppendUvarint(b, uint64(len(o.key)))
		b = append(b, o.key...)
		b = binary.AppendUvarint(b, uint64(len(o.val)))
		b = append(b, o.val...)
	}
	h := b[start : start+frameHeader]
	binary.LittleEndian.PutUint32(h[0:], uint32(len(b)-start-frameHeader))
	binary.LittleEndian.PutUint64(h[8:], seq)
	crc := crc32.Update(crc32.Update(0, castagnoli, id), castagnoli, h[8:16])
	binary.LittleEndian.PutUint32(h[4:], crc32.Update(crc, castagnoli, b[start+frameHeader:]))
	return b
}

// frame is a frame read back from a segment.
type frame struct {
	seq uint64
	ops []op
}

// readFrames returns the run of frames of the store id at the start of
// segment data (see Replay above). A frame whose CRC matches but whose
// payload does not decode is an error: no crash writes that.
func readFrames(data, id []byte) ([]frame, error) {
	var out []frame
	for len(data) >= frameHeader {
		n := binary.LittleEndian.Uint32(data[0:])
		if n == 0 || uint64(n) > uint64(len(data)-frameHeader) {
			break // every payload holds at least its count: zeros end the run
		}
		seq := binary.LittleEndian.Uint64(data[8:])
		payload := data[frameHeader : frameHeader+int(n)]
		crc := crc32.Update(crc32.Update(crc32.Update(0, castagnoli, id), castagnoli, data[8:16]), castagnoli, payload)
		if crc != binary.LittleEndian.Uint32(data[4:]) {
			break
		}
		if len(out) > 0 && seq != out[len(out)-1].seq+1 {
			break
		}
		ops, err := decodeOps(payload)
		if err != nil {
			return nil, fmt.Errorf("frame %d: %w", seq, err)
		}
		out = append(out, frame{seq: seq, ops: ops})
		data = data[frameHeader+int(n):]
	}
	return out, nil
}

func decodeOps(p []byte) ([]op, error) {
	count, k := binary.Uvarint(p)
	if k <= 0 || count > uint64(len(p)) {
		return nil, errors.New("bad operation count")
	}
	p = p[k:]
	bytesOf := func() ([]byte, bool) {
		n, k := binary.Uvarint(p)
		if k <= 0 || n > uint64(len(p)-k) {
			return nil, false
		}
		b := p[k : k+int(n)]
		p = p[k+int(n):]
		return b, true
	}
	ops := make([]op, 0, count)
	for range count {
		if len(p) == 0 {
			return nil, errors.New("truncated operation")
		}
		o := op{kind: p[0]}
		p = p[1:]
		var ok1, ok2 bool
		o.key, ok1 = bytesOf()
		o.val, ok2 = bytesOf()
		if !ok1 || !ok2 || o.kind < opPut || o.kind > opAllow {
			return nil, errors.New("bad operation")
		}
		ops = append(ops, o)
	}
	if len(p) != 0 {
		return nil, errors.New("trailing bytes")
	}
	return ops, nil
}

// walBucket holds the log's state in the bbolt file: walApplied, the seq
// of the last frame a checkpoint applied (8 bytes), and walClean, 1 if the
// store was closed with every frame applied (then the log files may be
// missing: a copy of a closed store is just its bbolt file), and walID,
// 8 random bytes naming the store's log (appendFrame). A store without the
// bucket predates the log and is clean.
var (
	walBucket  = []byte("wal")
	walApplied = []byte("applied")
	walClean   = []byte("clean")
	walID      = []byte("id")
)

func readWALMeta(tx *bolt.Tx) (applied uint64, clean bool, id []byte) {
	b := tx.Bucket(walBucket)
	if b == nil {
		return 0, true, nil
	}
	if v := b.Get(walApplied); len(v) == 8 {
		applied = binary.LittleEndian.Uint64(v)
	}
	if v := b.Get(walID); len(v) == 8 {
		id = bytes.Clone(v)
	}
	v := b.Get(walClean)
	return applied, len(v) == 1 && v[0] == 1, id
}

// putWALMeta records applied and clean, and id unless it is nil.
func putWALMeta(tx *bolt.Tx, applied uint64, clean bool, id []byte) error {
	b, err := tx.CreateBucketIfNotExists(walBucket)
	if err != nil {
		return err
	}
	if id != nil {
		if err := b.Put(walID, id); err != nil {
			return err
		}
	}
	if err := b.Put(walApplied, binary.LittleEndian.AppendUint64(nil, applied)); err != nil {
		return err
	}
	c := byte(0)
	if clean {
		c = 1
	}
	return b.Put(walClean, []byte{c})
}

// segmentPaths are the files of the log of the store at path.
func segmentPaths(path string) [2]string {
	return [2]string{path + ".wal0", path + ".wal1"}
}

// replay applies the frames of the log of the store at path that its last
// checkpoint had not, empties the log, marks the store as in use (not
// clean) and returns the log as it left it. db is open and not yet served.
//
// The log of a clean store is not read: Close applied all of it, and what
// it holds is older than the bbolt file, or belongs to another copy of it
// (a backup put back in place). It is emptied before the store is marked
// in use, so that its frames can never be replayed later.
func replay(db *bolt.DB, path string) (replayed, error) {
	var (
		segs  [2]*os.File
		last  uint64
		id    []byte
		clean bool
	)
	if err := db.View(func(tx *bolt.Tx) error {
		last, clean, id = readWALMeta(tx)
		return nil
	}); err != nil {
		return replayed{}, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	newID := id == nil
	if newID {
		id = make([]byte, 8)
		if _, err := rand.Read(id); err != nil {
			return replayed{}, fmt.Errorf("boltstore: open %s: %w", path, err)
		}
	}
	fail := func(err error) (replayed, error) {
		_ = closeSegs(segs)
		return replayed{}, err
	}
	var pending []frame
	created := false
	for i, p := range segmentPaths(path) {
		f, err := os.OpenFile(p, os.O_RDWR, 0)
		if errors.Is(err, fs.ErrNotExist) {
			if !clean {
				return fail(fmt.Errorf("boltstore: open %s: its write-ahead log %s is missing and the store was not closed cleanly; refusing to start without its latest writes: %w", path, p, errCorrupt))
			}
			f, err = os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
			created = true
		}
		if err != nil {
			return fail(fmt.Errorf("boltstore: open %s: %w", p, err))
		}
		segs[i] = f
		if clean {
			continue
		}
		data, err := io.ReadAll(f) // f was just opened: from its start
		if err != nil {
			return fail(fmt.Errorf("boltstore: open %s: %w", p, err))
		}
		frames, err := readFrames(data, id)
		if err != nil {
			return fail(fmt.Errorf("boltstore: open %s: %w: %w", p, errCorrupt, err))
		}
		for _, fr := range frames {
			if fr.seq > last {
				pending = append(pending, fr)
			}
		}
	}
	if created {
		if err := syncDir(filepath.Dir(path)); err != nil {
			return fail(err)
		}
	}
	slices.SortFunc(pending, func(a, b frame) int { return cmp.Compare(a.seq, b.seq) })
	var ops []op
	for _, fr := range pending {
		if fr.seq != last+1 {
			return fail(fmt.Errorf("boltstore: open %s: write-ahead log has frame %d after %d, the frames between are lost: %w", path, fr.seq, last, errCorrupt))
		}
		ops = append(ops, fr.ops...)
		last = fr.seq
	}
	// Clean: the old log goes before the store is marked in use. Not
	// clean: only once its frames are durably applied.
	if clean {
		if err := truncate(segs); err != nil {
			return fail(fmt.Errorf("boltstore: open %s: %w", path, err))
		}
	}
	idArg := []byte(nil)
	if newID {
		idArg = id
	}
	if err := update(db, ops, last, false, 0, idArg); err != nil {
		return fail(fmt.Errorf("boltstore: open %s: replaying %d writes of the write-ahead log: %w", path, len(ops), err))
	}
	if !clean {
		if err := truncate(segs); err != nil {
			return fail(fmt.Errorf("boltstore: open %s: %w", path, err))
		}
	}
	return replayed{segs: segs, seq: last, id: id}, nil
}

// replayed is the log as replay left it: its open segments, the seq of its
// last frame (all applied) and the store's log id.
type replayed struct {
	segs [2]*os.File
	seq  uint64
	id   []byte
}

// closeSegs closes the segments that are open and returns the first error.
func closeSegs(segs [2]*os.File) error {
	var err error
	for _, f := range segs {
		if f != nil {
			err = cmp.Or(err, f.Close())
		}
	}
	return err
}

// maxPrealloc caps the blocks preallocated to a segment: rotateBytes, its
// expected use, unless tuned larger.
const maxPrealloc int64 = 4 << 20

// truncate empties the segments durably, and preallocates each one's
// blocks for its frames.
func truncate(segs [2]*os.File) error {
	for _, f := range segs {
		if err := f.Truncate(0); err != nil {
			return fmt.Errorf("write-ahead log: %w", err)
		}
		preallocate(f, min(int64(rotateBytes), maxPrealloc))
		if err := f.Sync(); err != nil {
			return fmt.Errorf("write-ahead log: %w", err)
		}
	}
	return nil
}

// update applies ops and records applied and clean (and id, unless nil),
// in one fsynced bbolt transaction. fill, if not 0, is the leases bucket's FillPercent (a bulk
// import in key order fills pages to 90% instead of half). A panic inside
// bbolt (a corrupt page) becomes an error.
func update(db *bolt.DB, ops []op, applied uint64, clean bool, fill float64, id []byte) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bbolt: %v: %w", r, errCorrupt)
		}
	}()
	return db.Update(func(tx *bolt.Tx) error {
		if tx.Bucket(bucketName) == nil {
			return fmt.Errorf("no %q bucket: %w", bucketName, errCorrupt)
		}
		if fill != 0 {
			leases(tx).FillPercent = fill
		}
		for _, o := range ops {
			if err := o.apply(tx); err != nil {
				return err
			}
		}
		return putWALMeta(tx, applied, clean, id)
	})
}
