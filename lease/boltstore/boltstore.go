package boltstore

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime/debug"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"

	"github.com/credbroker/credbroker/lease"
)

// Sentinels of package lease, which every Store error wraps.
var (
	errUnavailable = lease.ErrStoreUnavailable
	errCorrupt     = lease.ErrStoreCorrupt
)

// DefaultLockTimeout is how long Open waits for another process to
// release the file lock before giving up.
const DefaultLockTimeout = 2 * time.Second

var (
	// bucketName is the bucket of the leases: lease id → encoded Lease.
	bucketName = []byte("leases")
	// deniedName is the bucket of the deregistrations: SPIFFE ID → time
	// (encodeTime). Stores made before it existed lack it until the first
	// Deny.
	deniedName = []byte("deregistered")
)

// Store is the embedded lease.Store: one bbolt file and its write-ahead
// log. Every write is in the log and fdatasynced before it returns;
// concurrent writes share a frame and its sync (group commit, see
// commit.go), and reach the bbolt file in batches (wal.go).
type Store struct {
	db        *bolt.DB
	writes    *groupCommit
	closeOnce sync.Once
	closeErr  error
	opened    int // records found when opened: Load's size hint
	// invalid is why a record found when opened would not load (nil: all
	// would). Open still succeeds, and Scan reports the record; Verified
	// tells Manager.DeferLoad.
	invalid error
}

var (
	_ lease.Store      = (*Store)(nil)
	_ lease.Verifier   = (*Store)(nil)
	_ lease.SizeHinter = (*Store)(nil)
	_ lease.BulkPutter = (*Store)(nil)
)

// Option tunes Open.
type Option func(*boltConfig)

type boltConfig struct {
	lockTimeout time.Duration
	batchDelay  time.Duration
	mustExist   bool
	observe     lease.CommitObserver
}

// WithMustExist makes Open fail with lease.ErrStoreMissing instead of
// creating a missing file: the broker starts only on a store it created
// explicitly (credbroker init-store), so a deleted or unmounted store is
// never mistaken for one without leases.
func WithMustExist() Option {
	return func(c *boltConfig) { c.mustExist = true }
}

// WithLockTimeout sets how long Open waits for the file lock
// (default DefaultLockTimeout). It must be positive: bbolt would wait
// forever on zero.
func WithLockTimeout(d time.Duration) Option {
	return func(c *boltConfig) { c.lockTimeout = d }
}

// WithBatchDelay sets how long a committing Put waits for others to share
// its transaction and fsync (default 0: writes that arrive during a commit
// share the next one anyway). More latency for one Put, bigger commits.
func WithBatchDelay(d time.Duration) Option {
	return func(c *boltConfig) { c.batchDelay = d }
}

// WithCommitObserver has observe told of every group commit: the writes it
// carried, the time of its frame's write and fdatasync in the log, and its
// error; and of every checkpoint of the log into the bbolt file that
// failed (its writes are safe in the log, but the log fills until one
// succeeds).
func WithCommitObserver(observe lease.CommitObserver) Option {
	return func(c *boltConfig) { c.observe = observe }
}

// Open opens the store at path, creating it if the file does not exist.
//
// It never silently starts empty over lost data: an existing file that is
// empty, truncated, not a bbolt file, without the leases bucket, or with a
// page of that bucket that cannot be read is refused with an error wrapping
// lease.ErrStoreCorrupt. A file locked by another process yields an error
// wrapping lease.ErrStoreUnavailable after the lock timeout.
func Open(path string, opts ...Option) (*Store, error) {
	cfg := boltConfig{lockTimeout: DefaultLockTimeout}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.lockTimeout <= 0 {
		return nil, fmt.Errorf("boltstore: open %s: lock timeout must be positive", path)
	}
	if cfg.mustExist {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("boltstore: open %s: %w", path, lease.ErrStoreMissing)
		}
	}
	if err := createIfMissing(path, cfg.lockTimeout); err != nil {
		return nil, err
	}
	db, log, n, invalid, err := openVerified(path, cfg)
	if err != nil {
		return nil, err
	}
	return &Store{db: db, writes: newGroupCommit(db, log, cfg.batchDelay, cfg.observe), opened: n, invalid: invalid}, nil
}

// SizeHint is how many leases the store held when it was opened, so Load
// can size its map once instead of growing it through a million inserts
// (lease.SizeHinter).
func (s *Store) SizeHint() int { return s.opened }

// createIfMissing makes a new, initialized store at path if there is no
// file there. The store is built under a temporary name and linked into
// place, so a file at path is always one this package finished writing: an
// empty file there means lost data, not a crash during creation. Link
// (unlike rename) fails if another process created path meanwhile.
func createIfMissing(path string, lockTimeout time.Duration) error {
	info, err := os.Stat(path)
	switch {
	case err == nil:
		if !info.Mode().IsRegular() {
			return fmt.Errorf("boltstore: open %s: not a regular file: %w", path, errCorrupt)
		}
		if info.Size() == 0 {
			return fmt.Errorf("boltstore: open %s: file is empty (truncated?); refusing to start without its leases: %w", path, errCorrupt)
		}
		return nil
	case !errors.Is(err, fs.ErrNotExist):
		return fmt.Errorf("boltstore: open %s: %w", path, err)
	}

	dir := filepath.Dir(path)
	tmp, err := os.CreateTemp(dir, filepath.Base(path)+".new-*")
	if err != nil {
		return fmt.Errorf("boltstore: create %s: %w", path, err)
	}
	tmpPath := tmp.Name()
	defer os.Remove(tmpPath) // after Link, path keeps the data
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("boltstore: create %s: %w", path, err)
	}
	db, err := bolt.Open(tmpPath, 0o600, &bolt.Options{Timeout: lockTimeout})
	if err != nil {
		return fmt.Errorf("boltstore: create %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(bucketName)
		return err
	})
	if cerr := db.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("boltstore: create %s: %w", path, err)
	}
	if err := os.Link(tmpPath, path); err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("boltstore: create %s: %w", path, err)
	}
	return syncDir(dir)
}

// syncDir makes a new directory entry durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("boltstore: sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("boltstore: sync %s: %w", dir, err)
	}
	return nil
}

func openError(path string, lockTimeout time.Duration, err error) error {
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return fmt.Errorf("boltstore: open %s: locked by another process (waited %s): %w", path, lockTimeout, errUnavailable)
	case errors.Is(err, bolterrors.ErrInvalid),
		errors.Is(err, bolterrors.ErrChecksum),
		errors.Is(err, bolterrors.ErrVersionMismatch),
		errors.Is(err, bolterrors.ErrInvalidMapping):
		return fmt.Errorf("boltstore: open %s: %w: %w", path, errCorrupt, err)
	}
	// Anything else reading the file (short file, bad page size, I/O error)
	// also means its leases cannot be trusted.
	return fmt.Errorf("boltstore: open %s: %w: %w", path, errCorrupt, err)
}

// openVerified opens path with bbolt, replays its write-ahead log into it
// (wal.go), and refuses it unless every page of the leases bucket can then
// be read. bbolt panics on some corrupt pages, and a page missing from a
// truncated file faults when read; both happen in this goroutine, where
// they become errors. (A panic inside bolt.Open leaves the file locked by
// this process, which is about to exit anyway.)
func openVerified(path string, cfg boltConfig) (db *bolt.DB, log replayed, records int, invalid, err error) {
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	fail := func(e error) (*bolt.DB, replayed, int, error, error) {
		_ = closeSegs(log.segs)
		if db != nil {
			_ = db.Close()
		}
		return nil, replayed{}, 0, nil, e
	}
	defer func() {
		if r := recover(); r != nil {
			db, log, records, invalid, err = fail(fmt.Errorf("boltstore: open %s: %w: bbolt: %v", path, errCorrupt, r))
		}
	}()
	db, err = bolt.Open(path, 0o600, &bolt.Options{
		Timeout:      cfg.lockTimeout,
		FreelistType: bolt.FreelistMapType,
	})
	if err != nil {
		return nil, log, 0, nil, openError(path, cfg.lockTimeout, err)
	}
	if log, err = replay(db, path); err != nil {
		return fail(err)
	}
	if records, invalid, err = verify(db, path); err != nil {
		return fail(err)
	}
	_ = db.View(func(tx *bolt.Tx) error { // fails only on a closed db
		dropMapped(tx)
		return nil
	})
	return db, log, records, invalid, nil
}

// dropMapped gives back the resident pages of the store's memory map.
// Reading every record (Open's verification, a Scan) faults in every
// page of the file, and they would stay mapped in this process: ~200 bytes
// of RSS per lease, nearly as much as the leases take in the heap
// (docs/performance.md §4). They leave the process, not the page cache;
// later reads fault back in the few pages they need.
//
// It must be called inside a read transaction: bbolt remaps the file only
// under its mmap lock, which a read transaction holds shared, so the map
// cannot move while the kernel is told about it. tx.Size is how much of the
// map holds data.
func dropMapped(tx *bolt.Tx) {
	dropResident(tx.DB().Info().Data, uintptr(tx.Size()))
}

// verify reads every page of the leases bucket once, which is cheap for the
// sizes a broker holds and happens only at start. A record with an unknown
// version byte fails it; whether the others would load (checkRecord,
// without allocating) is returned as invalid, for DeferLoad to act on.
//
// The two halves of the key space are read on two cores, each in its own
// read transaction (lease ids are hex, so "8" splits them evenly): with a
// million leases this is most of a broker's time to serving. Each goroutine
// turns bbolt's panics and faults on corrupt pages into errors, as
// openVerified does for its own.
func verify(db *bolt.DB, path string) (records int, invalid, err error) {
	info, err := os.Stat(path)
	if err != nil {
		return 0, nil, fmt.Errorf("boltstore: open %s: %w", path, err)
	}
	type half struct {
		records      int
		invalid, err error
	}
	var halves [2]half
	var wg sync.WaitGroup
	for i := range halves {
		wg.Go(func() {
			h := &halves[i]
			defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
			defer func() {
				if r := recover(); r != nil {
					h.err = fmt.Errorf("boltstore: open %s: %w: bbolt: %v", path, errCorrupt, r)
				}
			}()
			h.records, h.invalid, h.err = verifyHalf(db, path, info.Size(), i == 1)
		})
	}
	wg.Wait()
	for _, h := range halves {
		records += h.records
		invalid = cmp.Or(invalid, h.invalid)
		err = cmp.Or(err, h.err)
	}
	return records, invalid, err
}

var verifySplit = []byte("8")

// verifyHalf is verify for the keys below verifySplit, or (upper) the rest.
func verifyHalf(db *bolt.DB, path string, fileSize int64, upper bool) (records int, invalid, err error) {
	err = db.View(func(tx *bolt.Tx) error {
		if tx.Size() > fileSize {
			return fmt.Errorf("boltstore: open %s: file is %d bytes but its data needs %d (truncated?): %w",
				path, fileSize, tx.Size(), errCorrupt)
		}
		b := tx.Bucket(bucketName)
		if b == nil {
			return fmt.Errorf("boltstore: open %s: no %q bucket, not a lease store: %w", path, bucketName, errCorrupt)
		}
		c := b.Cursor()
		k, v := c.First()
		if upper {
			k, v = c.Seek(verifySplit)
		}
		for ; k != nil; k, v = c.Next() {
			if !upper && bytes.Compare(k, verifySplit) >= 0 {
				break
			}
			if len(v) == 0 || !knownCodec(v[0]) {
				return fmt.Errorf("boltstore: open %s: record %q: unknown encoding: %w", path, k, errCorrupt)
			}
			if invalid == nil {
				if err := checkRecord(k, v); err != nil {
					invalid = fmt.Errorf("boltstore: %s: record %q: %w: %w", path, k, errCorrupt, err)
				}
			}
			records++
		}
		return nil
	})
	return records, invalid, err
}

// Put stores l durably, replacing any lease with its ID.
func (s *Store) Put(ctx context.Context, l lease.Lease) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: put %s: %w: %w", l.ID, errUnavailable, err)
	}
	if l.ID == "" {
		return fmt.Errorf("boltstore: put: empty id: %w", lease.ErrInvalid)
	}
	v, err := encodeLease(l)
	if err != nil {
		return err
	}
	err = s.writes.write(ctx, reqWrite, op{kind: opPut, key: []byte(l.ID), val: v})
	if err != nil {
		return fmt.Errorf("boltstore: put %s: %w: %w", l.ID, errUnavailable, err)
	}
	return nil
}

// PutAll stores every lease of ls durably in one bbolt transaction, replacing
// leases with the same IDs: a bulk import (and how the benchmarks build a
// store of a million leases in seconds). Sorted IDs make it faster still
// (lease.BulkPutter).
func (s *Store) PutAll(ctx context.Context, ls []lease.Lease) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: put all: %w: %w", errUnavailable, err)
	}
	ops := make([]op, len(ls))
	for i, l := range ls {
		if l.ID == "" {
			return fmt.Errorf("boltstore: put all: empty id: %w", lease.ErrInvalid)
		}
		v, err := encodeLease(l)
		if err != nil {
			return err
		}
		ops[i] = op{kind: opPut, key: []byte(l.ID), val: v}
	}
	// Straight into the bbolt file, in one transaction: a million leases
	// do not go through the log.
	err := s.writes.write(ctx, reqBulk, ops...)
	if err != nil {
		return fmt.Errorf("boltstore: put all: %w: %w", errUnavailable, err)
	}
	return nil
}

// Get returns the lease with id, or an error wrapping lease.ErrNotFound.
func (s *Store) Get(ctx context.Context, id string) (l lease.Lease, err error) {
	if err := ctx.Err(); err != nil {
		return lease.Lease{}, fmt.Errorf("boltstore: get %s: %w: %w", id, errUnavailable, err)
	}
	if err := s.writes.flush(ctx); err != nil {
		return lease.Lease{}, fmt.Errorf("boltstore: get %s: %w: %w", id, errUnavailable, err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("boltstore: get %s: %w: %w: bbolt: %v", id, errUnavailable, errCorrupt, r)
		}
	}()
	found := false
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		if b == nil {
			return fmt.Errorf("no %q bucket: %w", bucketName, errCorrupt)
		}
		v := b.Get([]byte(id))
		if v == nil {
			return nil
		}
		found = true
		var err error
		if l, err = decodeLease([]byte(id), v); err != nil {
			return fmt.Errorf("record %q: %w: %w", id, errCorrupt, err)
		}
		return nil
	})
	switch {
	case err != nil:
		return lease.Lease{}, fmt.Errorf("boltstore: get %s: %w: %w", id, errUnavailable, err)
	case !found:
		return lease.Lease{}, fmt.Errorf("boltstore: get %s: %w", id, lease.ErrNotFound)
	}
	return l, nil
}

// Delete removes the lease with id durably; an absent id is not an error.
func (s *Store) Delete(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: delete %s: %w: %w", id, errUnavailable, err)
	}
	err := s.writes.write(ctx, reqWrite, op{kind: opDelete, key: []byte(id)})
	if err != nil {
		return fmt.Errorf("boltstore: delete %s: %w: %w", id, errUnavailable, err)
	}
	return nil
}

// Verified reports whether every record found when the store was opened
// would load (nil), or why not: Manager.DeferLoad refuses such a store
// before anything is served, as Load would (lease.Verifier).
func (s *Store) Verified() error { return s.invalid }

// scanDropEvery is how many bytes of records Scan reads between two
// dropMapped calls: what the store's map adds to RSS at most during a scan.
// A variable for tests.
var scanDropEvery = 32 << 20

// Scan calls fn for every stored lease that f matches, in key order. It
// holds a read transaction for its duration, so fn should be quick (the
// Manager copies what it needs and does its I/O afterwards) and must not
// write to the store. A record that cannot be decoded stops the scan with an
// error wrapping lease.ErrStoreCorrupt. The filter is applied to decoded
// leases: a filtered scan reads the whole file as a full one does.
func (s *Store) Scan(ctx context.Context, f lease.Filter, fn func(lease.Lease) error) (err error) {
	if err := s.writes.flush(ctx); err != nil {
		return fmt.Errorf("boltstore: scan: %w: %w", errUnavailable, err)
	}
	var fnErr error // returned as is: it is the caller's, not the store's
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("boltstore: scan: %w: %w: bbolt: %v", errUnavailable, errCorrupt, r)
		}
	}()
	all := f == lease.Filter{}
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketName)
		if b == nil {
			return fmt.Errorf("boltstore: scan: no %q bucket: %w", bucketName, errCorrupt)
		}
		// A scan reads the whole file: give its pages back as it goes, so
		// that they never all stay resident (dropMapped).
		defer dropMapped(tx)
		read := 0
		in := newInterner()
		return b.ForEach(func(k, v []byte) error {
			if err := ctx.Err(); err != nil {
				return err
			}
			if read += len(k) + len(v); read >= scanDropEvery {
				dropMapped(tx)
				read = 0
			}
			l, err := decodeLeaseWith(k, v, in)
			if err != nil {
				return fmt.Errorf("boltstore: scan: record %q: %w: %w", k, errCorrupt, err)
			}
			if l.ID != string(k) {
				return fmt.Errorf("boltstore: scan: record %q holds lease %q: %w", k, l.ID, errCorrupt)
			}
			if !all && !f.Match(l) {
				return nil
			}
			fnErr = fn(l)
			return fnErr
		})
	})
	if err != nil && err != fnErr && !errors.Is(err, errUnavailable) {
		err = fmt.Errorf("boltstore: scan: %w: %w", errUnavailable, err)
	}
	return err
}

// Close applies what the log holds to the bbolt file, marks the store
// clean and releases the files and the lock. Later calls of the store's
// methods fail with lease.ErrStoreUnavailable; a second Close returns the
// first's error.
func (s *Store) Close() error {
	s.closeOnce.Do(func() {
		err := s.writes.close()
		err = cmp.Or(err, s.db.Close())
		if err != nil {
			s.closeErr = fmt.Errorf("boltstore: close: %w", err)
		}
	})
	return s.closeErr
}
