package lease

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"
)

// Load restores the leases from the Store; call it once, before Run and
// before serving. Per state:
//
//   - CREATING: the user may or may not exist. It is dropped and the record
//     deleted; if the drop fails the lease becomes REVOKING, queued for retry.
//   - ACTIVE: queued at its ExpireTime. Overdue ones are revoked by Run,
//     subject to RevokeRate.
//   - REVOKING: queued for an immediate retry.
//
// A Store that cannot be scanned, or holds a record Load does not
// understand, is an error and nothing is loaded: the broker must refuse to
// start rather than forget leases.
func (m *Manager) Load(ctx context.Context) error {
	m.mu.Lock()
	if m.loaded {
		m.mu.Unlock()
		return errors.New("lease: load: already loaded")
	}
	m.loaded = true
	m.mu.Unlock()
	return m.load(ctx)
}

// errLoadStopped ends a scan whose leases load has refused.
var errLoadStopped = errors.New("lease: load: stopped")

// load is Load after the already-loaded check (DeferLoad runs it in Run).
func (m *Manager) load(ctx context.Context) error {
	// Leases are checked and turned into entries as the store yields them,
	// into a map no one else sees yet; only a complete, valid set is
	// published. The expiry heap is built once at the end, in O(n).
	now := m.now()
	hint := 0
	if h, ok := m.cfg.Store.(SizeHinter); ok {
		hint = h.SizeHint()
	}
	loaded := make(map[string]*entry, hint)
	ix := newIndex()               // loaded's, published with it
	due := make([]*entry, 0, hint) // becomes the queue's heap
	var creating []*entry
	var counts [StateExpired + 1]int
	var bad error // a record Load refuses, told apart from a store failure
	add := func(l Lease) error {
		switch {
		case !ValidID(l.ID):
			return fmt.Errorf("lease: load: stored id %q: %w", l.ID, ErrStoreCorrupt)
		case l.State != StateCreating && l.State != StateActive && l.State != StateRevoking:
			return fmt.Errorf("lease: load %s: stored state %s: %w", l.ID, l.State, ErrStoreCorrupt)
		}
		l = normalizeTimes(l)
		e := newEntry(l)
		e.stored = true
		n := len(loaded)
		if loaded[l.ID] = e; len(loaded) == n { // one hash, not a lookup and an insert
			return fmt.Errorf("lease: load %s: %w", l.ID, ErrExists)
		}
		ix.addGroup(e) // the id order is built in bulk below
		counts[l.State]++
		switch l.State {
		case StateActive:
			e.due = nanos(l.ExpireTime)
			due = append(due, e)
		case StateRevoking:
			e.due = nanos(now)
			due = append(due, e)
			ix.revoking.push(e, now, counts[StateRevoking])
		case StateCreating:
			e.tryLock() // new entry: cannot fail; held until dropped below
			creating = append(creating, e)
		}
		return nil
	}

	// Two stages on two cores: the store decodes (in Scan), a goroutine
	// indexes (add), handing leases over in batches.
	const batchSize = 4096
	free := make(chan []Lease, 4)
	for range cap(free) {
		free <- make([]Lease, 0, batchSize)
	}
	full := make(chan []Lease, cap(free))
	var failed atomic.Bool
	var indexer sync.WaitGroup
	indexer.Go(func() {
		for b := range full {
			for _, l := range b {
				if bad != nil {
					break
				}
				if bad = add(l); bad != nil {
					failed.Store(true)
				}
			}
			free <- b[:0]
		}
	})
	deferred := m.deferred.Load() != nil
	batch := <-free
	err := m.cfg.Store.Scan(ctx, Filter{}, func(l Lease) error {
		if failed.Load() {
			return errLoadStopped
		}
		if deferred && m.skipped(l.ID) {
			return nil
		}
		if batch = append(batch, l); len(batch) == batchSize {
			full <- batch
			batch = <-free
		}
		return nil
	})
	full <- batch
	close(full)
	indexer.Wait()
	if bad != nil {
		return bad
	}
	if err != nil {
		return storeErr("load", "", err)
	}

	// due holds every restored lease but the few CREATING ones, in the
	// store's order (boltstore's is the id order): the id list is built
	// from it in O(n), before it becomes the heap.
	ix.ids = buildIDList(due)
	for _, e := range creating {
		ix.ids.insert(e)
	}

	m.mu.Lock()
	// Leases begun meanwhile (DeferLoad) join the restored ones, not the
	// other way round: a handful of inserts instead of a million.
	for id := range m.leases {
		if _, dup := loaded[id]; dup {
			m.mu.Unlock()
			return fmt.Errorf("lease: load %s: %w", id, ErrExists)
		}
	}
	for id, e := range m.leases {
		loaded[id] = e
		ix.add(e)
		if e.state() == StateRevoking {
			ix.revoking.push(e, now, ix.states[StateRevoking])
		}
	}
	m.leases, m.index = loaded, ix
	m.queue.pushAll(due)
	m.mu.Unlock()

	// Interrupted creations are few (at most the requests in flight at the
	// crash), but their drops may be slow: run them with bounded
	// concurrency.
	sem := make(chan struct{}, m.cfg.RevokeConcurrency)
	var wg sync.WaitGroup
	for _, e := range creating {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			defer e.unlock()
			if l, err := m.revokeLocked(ctx, e, false); err != nil {
				m.log.LogAttrs(ctx, slog.LevelWarn, "lease: interrupted creation not cleaned up; will retry",
					append(leaseAttrs(l), slog.Int("attempts", l.Attempts), slog.String("error", err.Error()))...)
			}
		})
	}
	wg.Wait()
	m.log.LogAttrs(ctx, slog.LevelInfo, "lease: loaded",
		slog.Int("creating", counts[StateCreating]),
		slog.Int("active", counts[StateActive]),
		slog.Int("revoking", counts[StateRevoking]))
	m.signal()
	return ctx.Err()
}

// Run is the expiry loop. It sleeps until the earliest queued lease is due
// (at most about a second, so a clock jump is noticed; earlier when
// an Issue or a failed revocation queues something sooner), then calls
// ProcessDue. It returns nil when ctx ends, after the revocations it started
// have returned (they see ctx cancelled and are retried after a restart).
func (m *Manager) Run(ctx context.Context) error {
	if !m.running.CompareAndSwap(false, true) {
		return errors.New("lease: run: already running")
	}
	defer m.wg.Wait()
	if err := m.runDeferredLoad(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		started := m.ProcessDue(ctx)
		timer.Reset(m.nextWake(started))
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		case <-m.wake:
		}
	}
}

// nextWake is how long Run sleeps after a ProcessDue that started started
// revocations.
func (m *Manager) nextWake(started int) time.Duration {
	m.mu.Lock()
	defer m.mu.Unlock()
	first, ok := m.queue.Peek()
	if !ok {
		return maxSleep
	}
	now := m.now()
	if d := first.dueTime().Sub(now); d > 0 {
		return min(d, maxSleep)
	}
	// Something is due that ProcessDue did not start.
	switch {
	case m.inflight >= m.cfg.RevokeConcurrency:
		return maxSleep // a finishing revocation signals
	case m.limiter.available(now) < 1:
		return min(max(m.limiter.wait(now), minSleep), maxSleep)
	case started > 0:
		return 0 // stopped by BatchSize: go on
	}
	return minSleep
}

// ProcessDue is one wake-up of the expiry loop: it starts, each in its own
// goroutine, the revocations of up to BatchSize due leases (expired ACTIVE
// ones, REVOKING ones whose retry is due), within RevokeConcurrency and
// RevokeRate, and returns how many it started. Run calls it; tests call it
// with a fake clock. A due lease that another operation holds is looked at
// again a second later.
func (m *Manager) ProcessDue(ctx context.Context) int {
	if ctx.Err() != nil || !m.restoreDone() {
		return 0
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	limit := min(m.cfg.BatchSize, m.cfg.RevokeConcurrency-m.inflight, m.limiter.available(now))
	started := 0
	var busy []*entry
	for started < limit {
		due := m.queue.PopDue(now, limit-started)
		if len(due) == 0 {
			break
		}
		for _, e := range due {
			if e.gone {
				continue
			}
			if e.flight != nil || !e.tryLock() {
				busy = append(busy, e)
				continue
			}
			f := &flight{done: make(chan struct{})}
			e.flight = f
			m.limiter.take(now)
			m.inflight++
			started++
			m.wg.Add(1)
			go m.expire(ctx, e, f)
		}
	}
	for _, e := range busy {
		m.queue.Push(e, now.Add(busyRetry))
	}
	return started
}

// expire runs one revocation the expiry loop started; it owns e's lock.
func (m *Manager) expire(ctx context.Context, e *entry, f *flight) {
	defer m.wg.Done()
	l, err := m.revokeLocked(ctx, e, e.state() == StateActive)
	m.finish(e, f, l, err)
	e.unlock()
	m.mu.Lock()
	m.inflight--
	m.mu.Unlock()
	m.signal()
	if err != nil {
		m.log.LogAttrs(ctx, slog.LevelWarn, "lease: revocation failed; will retry",
			append(leaseAttrs(l), slog.Int("attempts", l.Attempts), slog.String("error", err.Error()))...)
	}
}
