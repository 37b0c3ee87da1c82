package pgstore

import (
	"context"
	"errors"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/internal/batch"
)

// The conditional writes of issuance (Create, PutIfVersion) from
// concurrent callers share one commit (package internal/batch: a lone
// write runs at once, writes that arrive meanwhile ride the next batch).
// A batch is one pipeline of its statements, which PostgreSQL runs as one
// implicit transaction: one round trip and one commit (one WAL flush) for
// all. Each statement is one row's conditional write that never fails on
// a conflict (it writes no row and says so), so one caller's conflict
// never undoes another's write; any error undoes the whole batch, and
// every caller of it gets the error, with nothing written.

// maxGroup bounds the writes of one commit.
const maxGroup = 64

// groupTimeout bounds a batch, which runs on behalf of every caller in it
// whatever becomes of the leading caller's ctx.
const groupTimeout = 10 * time.Second

// condWrite is one conditional write: a statement returning the row's new
// version, or no row when it wrote nothing.
type condWrite struct {
	sql  string
	args []any
}

// condResult is its outcome: the new version and whether a row was
// written.
type condResult struct {
	version int64
	wrote   bool
	err     error
}

func newGroup(s *Store) *batch.Queue[condWrite, condResult] {
	return batch.New(s.runGroup, batch.Options{Max: maxGroup})
}

// condWrite runs w in the next group commit.
func (s *Store) condWrite(ctx context.Context, w condWrite) (condResult, error) {
	r, err := s.group.Do(ctx, w)
	if err == nil {
		err = r.err
	}
	return r, err
}

// runGroup commits one batch of conditional writes.
func (s *Store) runGroup(ctx context.Context, ws []condWrite) []condResult {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), groupTimeout)
	defer cancel()
	out := make([]condResult, len(ws))
	start := time.Now()
	if len(ws) == 1 {
		err := s.pool.QueryRow(ctx, ws[0].sql, ws[0].args...).Scan(&out[0].version)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			out[0].err = err
			s.observed(1, start, err)
		default:
			out[0].wrote = true
			s.observed(1, start, nil)
		}
		return out
	}
	b := &pgx.Batch{}
	for _, w := range ws {
		b.Queue(w.sql, w.args...)
	}
	br := s.pool.SendBatch(ctx, b)
	var failed error
	wrote := 0
	for i := range ws {
		err := br.QueryRow().Scan(&out[i].version)
		switch {
		case errors.Is(err, pgx.ErrNoRows):
		case err != nil:
			failed = cmpErr(failed, err)
		default:
			out[i].wrote = true
			wrote++
		}
	}
	if err := br.Close(); err != nil {
		failed = cmpErr(failed, err)
	}
	if failed != nil {
		// The implicit transaction rolled back: nothing of the batch
		// is written.
		for i := range out {
			out[i] = condResult{err: failed}
		}
		s.observed(len(ws), start, failed)
		return out
	}
	if wrote > 0 {
		s.observed(wrote, start, nil)
	}
	return out
}

// cmpErr keeps the first error.
func cmpErr(first, err error) error {
	if first != nil {
		return first
	}
	return err
}
