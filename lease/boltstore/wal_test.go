package boltstore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/lease"
)

// tuneLog sets the log's tuning for one test.
func tuneLog(t *testing.T, every time.Duration, bytes int, max int64, wait time.Duration) {
	t.Helper()
	oe, ob, om, ow := rotateEvery, rotateBytes, segmentMax, checkpointWait
	rotateEvery, rotateBytes, segmentMax, checkpointWait = every, bytes, max, wait
	t.Cleanup(func() { rotateEvery, rotateBytes, segmentMax, checkpointWait = oe, ob, om, ow })
}

// snapshot copies the files of the store at path as a kill -9 would leave
// them: what the process wrote is what the files hold. With a write
// transaction of s held (blockCheckpoints, or here), no checkpoint writes
// the bbolt file while it is copied.
func snapshot(t *testing.T, s *Store, path string, held bool) string {
	t.Helper()
	if !held {
		tx, err := s.db.Begin(true)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
	}
	dir := t.TempDir()
	segs := segmentPaths(path)
	for _, p := range []string{path, segs[0], segs[1]} {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(dir, filepath.Base(p)), b)
	}
	return filepath.Join(dir, filepath.Base(path))
}

// blockCheckpoints holds bbolt's writer lock until the returned function
// is called: checkpoints (and reads, which apply the log) wait; logged
// writes go on.
func blockCheckpoints(t *testing.T, s *Store) (release func()) {
	t.Helper()
	tx, err := s.db.Begin(true)
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	release = func() { once.Do(func() { _ = tx.Rollback() }) }
	t.Cleanup(release)
	return release
}

// model is what a store must hold after a sequence of writes.
type model struct {
	leases map[string]lease.Lease
	denied map[string]time.Time
}

func newModel() *model {
	return &model{leases: map[string]lease.Lease{}, denied: map[string]time.Time{}}
}

// put stores a new lease in s and records it in m.
func (m *model) put(t *testing.T, s *Store) lease.Lease {
	t.Helper()
	l := makeLease(t, time.Now().UTC(), time.Hour, time.Hour)
	if err := s.Put(bg, l); err != nil {
		t.Fatal(err)
	}
	m.leases[l.ID] = l
	return l
}

// check opens the store at path and compares it with m.
func (m *model) check(t *testing.T, path string) {
	t.Helper()
	s, err := Open(path, WithMustExist())
	if err != nil {
		t.Fatalf("open after crash: %v", err)
	}
	defer s.Close()
	got := scanAll(t, s)
	if len(got) != len(m.leases) {
		t.Errorf("%d leases, want %d", len(got), len(m.leases))
	}
	for id, want := range m.leases {
		if l, ok := got[id]; !ok || l.Username != want.Username || !l.ExpireTime.Equal(want.ExpireTime) {
			t.Errorf("lease %s = %+v (found %v), want %+v", id, l, ok, want)
		}
	}
	denied, err := s.Denied(bg)
	if err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(denied, m.denied, time.Time.Equal) {
		t.Errorf("denied = %v, want %v", denied, m.denied)
	}
}

// rawLeases counts the leases in the bbolt file at path itself, without
// the log.
func rawLeases(t *testing.T, path string) int {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	n := 0
	if err := db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(bucketName).Stats().KeyN
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return n
}

// Writes acknowledged but not yet checkpointed are only in the log; a
// crash then loses none of them, of any kind.
func TestLogReplaysWritesAfterCrash(t *testing.T) {
	tuneLog(t, time.Hour, 1<<30, 1<<30, time.Second)
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	defer s.Close()
	m := newModel()
	now := time.Now().UTC().Truncate(time.Second)
	var ids []string
	for i := range 20 {
		l := makeLease(t, now, time.Duration(i+1)*time.Minute, time.Hour)
		if err := s.Put(bg, l); err != nil {
			t.Fatal(err)
		}
		m.leases[l.ID] = l
		ids = append(ids, l.ID)
	}
	for _, id := range ids[:5] {
		if err := s.Delete(bg, id); err != nil {
			t.Fatal(err)
		}
		delete(m.leases, id)
	}
	for i, id := range []string{"spiffe://example.org/a", "spiffe://example.org/b", "spiffe://example.org/a"} {
		at := now.Add(time.Duration(i) * time.Second)
		if err := s.Deny(bg, id, at); err != nil {
			t.Fatal(err)
		}
		if _, ok := m.denied[id]; !ok {
			m.denied[id] = at
		}
	}
	if err := s.Allow(bg, "spiffe://example.org/b"); err != nil {
		t.Fatal(err)
	}
	delete(m.denied, "spiffe://example.org/b")

	crashed := snapshot(t, s, path, false)
	if n := rawLeases(t, crashed); n != 0 {
		t.Fatalf("the bbolt file already holds %d leases: the test does not exercise the log", n)
	}
	m.check(t, crashed)
	// Replay made the copy's bbolt file whole.
	if n := rawLeases(t, crashed); n != len(m.leases) {
		t.Errorf("after replay the bbolt file holds %d leases, want %d", n, len(m.leases))
	}
}

// With a checkpoint held up, writes go on into the other segment; a crash
// then needs the frames of both, in order.
func TestLogReplaysBothSegments(t *testing.T) {
	tuneLog(t, 0, 1<<30, 1<<30, time.Second)
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	defer s.Close()
	release := blockCheckpoints(t, s)
	m := newModel()
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for range 25 {
				l := makeLease(t, time.Now().UTC(), time.Hour, time.Hour)
				if err := s.Put(bg, l); err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				m.leases[l.ID] = l
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	crashed := snapshot(t, s, path, true)
	release()
	for _, p := range segmentPaths(crashed) {
		// The first frame's length: zero in a segment holding none (its
		// blocks are preallocated).
		b, err := os.ReadFile(p)
		if err != nil || len(b) < frameHeader || binary.LittleEndian.Uint32(b) == 0 {
			t.Fatalf("segment %s (%d bytes): %v: want frames in both segments", p, len(b), err)
		}
	}
	m.check(t, crashed)
}

// A checkpoint that cannot finish holds up a segment; once the other is
// full, writes fail closed (nothing logged) instead of waiting forever, and
// succeed again when the checkpoint does.
func TestLogFullFailsClosed(t *testing.T) {
	tuneLog(t, 0, 1<<30, 2048, 100*time.Millisecond)
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	release := blockCheckpoints(t, s)
	var acked []string
	var refused lease.Lease
	for i := 0; ; i++ {
		if i > 100 {
			t.Fatal("100 writes logged into a 2 KiB segment")
		}
		l := makeLease(t, time.Now(), time.Hour, time.Hour)
		err := s.Put(bg, l)
		if err == nil {
			acked = append(acked, l.ID)
			continue
		}
		if !errors.Is(err, lease.ErrStoreUnavailable) || !strings.Contains(err.Error(), "checkpoint") {
			t.Fatalf("err = %v, want lease.ErrStoreUnavailable naming the checkpoint", err)
		}
		refused = l
		break
	}
	release()
	l := makeLease(t, time.Now(), time.Hour, time.Hour)
	if err := s.Put(bg, l); err != nil {
		t.Fatalf("write after the checkpoint: %v", err)
	}
	acked = append(acked, l.ID)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = openTestBolt(t, path)
	defer s.Close()
	got := scanAll(t, s)
	for _, id := range acked {
		if _, ok := got[id]; !ok {
			t.Errorf("acknowledged lease %s lost", id)
		}
	}
	if _, ok := got[refused.ID]; ok {
		t.Errorf("refused lease %s stored", refused.ID)
	}
	if len(got) != len(acked) {
		t.Errorf("%d leases, want the %d acknowledged", len(got), len(acked))
	}
}

// A frame cut short by the crash (never acknowledged) ends the log; the
// frames before it are replayed.
func TestLogTornTail(t *testing.T) {
	tuneLog(t, time.Hour, 1<<30, 1<<30, time.Second)
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	defer s.Close()
	m := newModel()
	for range 10 {
		m.put(t, s)
	}
	v, err := encodeLease(makeLease(t, time.Now(), time.Hour, time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	torn := appendFrame(nil, s.writes.id, 11, []op{{kind: opPut, key: []byte("ffffffffffffffffffffffffffffffff"), val: v}})
	for name, tail := range map[string][]byte{
		"half a frame":  torn[:len(torn)/2],
		"flipped byte":  append(torn[:len(torn)-1:len(torn)-1], torn[len(torn)-1]^1),
		"header only":   torn[:frameHeader],
		"zeroes":        make([]byte, 64),
		"older frame 3": appendFrame(nil, s.writes.id, 3, []op{{kind: opDelete, key: []byte("x")}}),
	} {
		t.Run(name, func(t *testing.T) {
			crashed := snapshot(t, s, path, false)
			f, err := os.OpenFile(segmentPaths(crashed)[0], os.O_WRONLY|os.O_APPEND, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write(tail); err != nil {
				t.Fatal(err)
			}
			f.Close()
			m.check(t, crashed)
		})
	}
}

// Frames after a gap mean acknowledged writes were lost: the store is
// refused, as a corrupt bbolt file is.
func TestLogGapRefused(t *testing.T) {
	tuneLog(t, 0, 1<<30, 1<<30, time.Second)
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	defer s.Close()
	release := blockCheckpoints(t, s)
	for range 5 { // frame 1 in segment 0 (rotated out), 2..5 in segment 1
		if err := s.Put(bg, makeLease(t, time.Now(), time.Hour, time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	crashed := snapshot(t, s, path, true)
	release()
	seg0 := segmentPaths(crashed)[0]
	b, err := os.ReadFile(seg0)
	if err != nil {
		t.Fatal(err)
	}
	b[frameHeader+3] ^= 0xff
	writeFile(t, seg0, b)
	_, err = Open(crashed, WithMustExist())
	if !errors.Is(err, lease.ErrStoreCorrupt) || !strings.Contains(err.Error(), "frame 2 after 0") {
		t.Fatalf("Open = %v, want lease.ErrStoreCorrupt naming the gap", err)
	}
}

// The log of a store in use may not go missing; a closed store's may (its
// bbolt file holds everything).
func TestLogMissing(t *testing.T) {
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	m := newModel()
	m.put(t, s)
	crashed := snapshot(t, s, path, false)
	if err := os.Remove(segmentPaths(crashed)[1]); err != nil {
		t.Fatal(err)
	}
	_, err := Open(crashed, WithMustExist())
	if !errors.Is(err, lease.ErrStoreCorrupt) || !strings.Contains(err.Error(), "not closed cleanly") {
		t.Fatalf("Open without the log of a crashed store = %v, want lease.ErrStoreCorrupt", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for _, p := range segmentPaths(path) {
		if err := os.Remove(p); err != nil {
			t.Fatal(err)
		}
	}
	m.check(t, path)
}

// Random writes, from several goroutines, with segments rotating on every
// write and checkpoints running free; at random moments the files are
// copied as a crash would leave them, and each copy must open holding
// exactly every acknowledged write. Each goroutine writes its own keys, so
// the order of the writes to one key is the order the model saw.
func TestLogCrashAnywhere(t *testing.T) {
	tuneLog(t, 0, 1024, 1<<30, time.Second)
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	defer s.Close()
	r := rand.New(rand.NewPCG(7, 7))
	m := newModel()
	var mu sync.Mutex // m
	const workers = 4
	var ids [workers][]string
	now := time.Now().UTC().Truncate(time.Second)
	for round := range 25 {
		var wg sync.WaitGroup
		for w := range workers {
			n, seed := 1+r.IntN(12), r.Uint64()
			wg.Go(func() {
				r := rand.New(rand.NewPCG(seed, uint64(w)))
				for range n {
					var err error
					spiffe := fmt.Sprintf("spiffe://example.org/w%d/%d", w, r.IntN(3))
					switch k := r.IntN(10); {
					case k < 5 || len(ids[w]) == 0:
						l := makeLease(t, now, time.Duration(1+r.IntN(60))*time.Minute, time.Hour)
						if err = s.Put(bg, l); err == nil {
							ids[w] = append(ids[w], l.ID)
							mu.Lock()
							m.leases[l.ID] = l
							mu.Unlock()
						}
					case k < 8:
						i := r.IntN(len(ids[w]))
						id := ids[w][i]
						mu.Lock()
						l := m.leases[id]
						mu.Unlock()
						if k < 7 { // renew
							l.ExpireTime = l.ExpireTime.Add(time.Minute)
							if err = s.Put(bg, l); err == nil {
								mu.Lock()
								m.leases[id] = l
								mu.Unlock()
							}
						} else if err = s.Delete(bg, id); err == nil {
							ids[w] = append(ids[w][:i], ids[w][i+1:]...)
							mu.Lock()
							delete(m.leases, id)
							mu.Unlock()
						}
					case k < 9:
						at := now.Add(time.Duration(r.IntN(100)) * time.Second)
						if err = s.Deny(bg, spiffe, at); err == nil {
							mu.Lock()
							if _, ok := m.denied[spiffe]; !ok {
								m.denied[spiffe] = at
							}
							mu.Unlock()
						}
					default:
						if err = s.Allow(bg, spiffe); err == nil {
							mu.Lock()
							delete(m.denied, spiffe)
							mu.Unlock()
						}
					}
					if err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		if t.Failed() {
			t.FailNow()
		}
		if round%3 == 2 {
			m.check(t, snapshot(t, s, path, false))
		}
	}
	m.check(t, snapshot(t, s, path, false))
}

// A backup of a closed store put back in place beside a newer log: the log
// of a clean store is never replayed, and is emptied before the store is
// used, so none of its frames can come back after a later crash.
func TestLogOfCleanStoreIgnored(t *testing.T) {
	tuneLog(t, time.Hour, 1<<30, 1<<30, time.Second)
	path := filepath.Join(t.TempDir(), "leases.db")
	s := openTestBolt(t, path)
	m := newModel()
	m.put(t, s)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	backup, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	s = openTestBolt(t, path)
	defer s.Close()
	for range 3 { // only in the log
		if err := s.Put(bg, makeLease(t, time.Now().UTC(), time.Hour, time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	crashed := snapshot(t, s, path, false)
	writeFile(t, crashed, backup)
	m.check(t, crashed)

	// In use again, then killed: what it logged comes back, the old log's
	// frames do not.
	s2 := openTestBolt(t, crashed)
	defer s2.Close()
	m.put(t, s2)
	m.check(t, snapshot(t, s2, crashed, false))
}

// Another store's log beside a store that crashed: its frames do not pass
// for this store's (their CRC is seeded with the other store's id).
func TestLogOfAnotherStoreIgnored(t *testing.T) {
	tuneLog(t, time.Hour, 1<<30, 1<<30, time.Second)
	dir := t.TempDir()
	mine := openTestBolt(t, filepath.Join(dir, "mine.db"))
	defer mine.Close()
	other := openTestBolt(t, filepath.Join(dir, "other.db"))
	defer other.Close()
	m := newModel()
	m.put(t, mine)
	if err := mine.Put(bg, makeLease(t, time.Now().UTC(), time.Hour, time.Hour)); err != nil {
		t.Fatal(err)
	}
	// mine has applied nothing yet: read flushes, so copy its files first.
	crashed := snapshot(t, mine, filepath.Join(dir, "mine.db"), false)
	for range 3 {
		if err := other.Put(bg, makeLease(t, time.Now().UTC(), time.Hour, time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	foreign := snapshot(t, other, filepath.Join(dir, "other.db"), false)
	// mine's frame 1 stays; its frame 2 is replaced by other's frames 2
	// and 3, which would follow it if only the sequence numbers counted.
	firstLen := func(b []byte) int { return frameHeader + int(binary.LittleEndian.Uint32(b)) }
	seg := segmentPaths(crashed)[0]
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	fb, err := os.ReadFile(segmentPaths(foreign)[0])
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, seg, append(b[:firstLen(b):firstLen(b)], fb[firstLen(fb):]...))
	m.check(t, crashed)
}
