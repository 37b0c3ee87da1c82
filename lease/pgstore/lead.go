package pgstore

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/jackc/pgx/v5"
)

// leadKey1 is the first key of the leadership advisory locks: "cbld".
const leadKey1 int32 = 0x63626c64

// leadKey2 derives the second key of the leadership name in schema.
func leadKey2(schema, name string) int32 {
	h := fnv.New32a()
	h.Write([]byte("credbroker-lead:" + schema + ":" + name))
	return int32(h.Sum32() & 0x7fffffff)
}

// LeadTiming tunes Lead; zero fields take the defaults.
type LeadTiming struct {
	// Retry is how often a store that does not lead tries to (default 1s).
	Retry time.Duration
	// Check is how often the leader checks that its lock's session is
	// alive (default 1s): a leader that lost it stops within about Check
	// plus the time the check's query takes to fail.
	Check time.Duration
}

func (t LeadTiming) withDefaults() LeadTiming {
	if t.Retry <= 0 {
		t.Retry = time.Second
	}
	if t.Check <= 0 {
		t.Check = time.Second
	}
	return t
}

// ErrNotLeading is the cause of the context Lead gives fn when the lock's
// session was lost.
var ErrNotLeading = errors.New("pgstore: leadership lost")

// Lead runs fn while this store holds the leadership called name: a
// session advisory lock on a connection of its own, so that among all the
// stores on one schema at most one runs fn for a name at a time (the
// singletons of several replicas: the SPIRE registry watch, the
// reconciler). It competes every Retry; once it leads, it runs fn with a
// context that ends when ctx ends or when the lock's session is found lost
// (context.Cause is ErrNotLeading); when fn returns, the lock is released
// and, unless ctx has ended, Lead competes again. It returns nil when ctx
// ends.
//
// The database decides who leads: a leader cut off from it keeps running
// fn until its next check fails (within Check), while the server frees the
// lock only when it sees the session gone; a new leader waits 2×Check
// before running fn, so that the old one has stopped. Clocks and pauses
// can still stretch that (a leader paused longer than the wait), so work
// done under a leadership must be safe to overlap briefly (the lease
// writes are fenced by row versions anyway).
func (s *Store) Lead(ctx context.Context, name string, timing LeadTiming, fn func(ctx context.Context) error) error {
	timing = timing.withDefaults()
	key2 := leadKey2(s.rawSchema, name)
	for ctx.Err() == nil {
		led, err := s.leadOnce(ctx, key2, timing, fn)
		if ctx.Err() != nil {
			break
		}
		if led && err == nil {
			continue // fn returned: compete again at once
		}
		select {
		case <-ctx.Done():
		case <-time.After(timing.Retry):
		}
	}
	return nil
}

// leadOnce connects, tries the lock once and, holding it, runs fn. led
// says whether fn ran.
func (s *Store) leadOnce(ctx context.Context, key2 int32, timing LeadTiming, fn func(ctx context.Context) error) (led bool, err error) {
	conn, err := pgx.ConnectConfig(ctx, s.connConfig)
	if err != nil {
		return false, err
	}
	defer conn.Close(context.WithoutCancel(ctx))
	var got bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock($1, $2)`, leadKey1, key2).Scan(&got); err != nil || !got {
		return false, err
	}
	// The previous leader may not know yet that it lost the lock: it
	// learns at its next check, within Check. Waiting twice that before
	// running fn keeps two leaders from overlapping when the server ended
	// the previous leader's session (a kill, pg_terminate_backend); a
	// leader cut off from the server stopped long before the server frees
	// its lock.
	select {
	case <-ctx.Done():
		return false, nil
	case <-time.After(2 * timing.Check):
	}
	fctx, stop := context.WithCancelCause(ctx)
	defer stop(nil)
	checked := make(chan struct{})
	go func() {
		defer close(checked)
		t := time.NewTicker(timing.Check)
		defer t.Stop()
		for {
			select {
			case <-fctx.Done():
				return
			case <-t.C:
			}
			cctx, cancel := context.WithTimeout(fctx, timing.Check)
			_, err := conn.Exec(cctx, `SELECT 1`)
			cancel()
			if err != nil && fctx.Err() == nil {
				stop(fmt.Errorf("%w: %v", ErrNotLeading, err))
				return
			}
		}
	}()
	err = fn(fctx)
	stop(nil)
	<-checked
	// Closing the connection releases the lock.
	return true, err
}
