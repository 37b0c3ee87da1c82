package lease

import (
	"context"
	"time"
)

// Store persists leases and the deregistered workloads. It is the seam
// between the Manager and a storage engine (package lease/boltstore, one
// bbolt file; a shared PostgreSQL store for several brokers), and carries no
// engine types. Package lease/leasetest is its conformance suite: every
// implementation must pass it.
//
// Every write (Put, Delete, Deny, Allow) must be durable when it returns
// nil: the broker hands out no credential before its ACTIVE record is
// stored, and re-admits no deregistered workload after a restart. Errors
// must wrap ErrStoreUnavailable (the store cannot answer now) and, for data
// that cannot be trusted, ErrStoreCorrupt. Implementations must be safe for
// concurrent use.
type Store interface {
	// Put stores l, replacing any lease with its ID.
	Put(ctx context.Context, l Lease) error
	// Get returns the lease with id, or an error wrapping ErrNotFound.
	Get(ctx context.Context, id string) (Lease, error)
	// Delete removes the lease with id; an absent id is not an error.
	Delete(ctx context.Context, id string) error
	// Scan calls fn for every stored lease that f matches, in no
	// particular order. An error from fn stops the scan and is returned
	// as is. fn must not call back into the store.
	Scan(ctx context.Context, f Filter, fn func(Lease) error) error

	// Deny records that the workload with the SPIFFE ID id was deregistered
	// at at. Denying an ID already denied keeps its first time.
	Deny(ctx context.Context, id string, at time.Time) error
	// Allow lifts the deregistration of id; an ID not denied is not an
	// error.
	Allow(ctx context.Context, id string) error
	// Denied returns every deregistration: SPIFFE ID → when.
	Denied(ctx context.Context) (map[string]time.Time, error)

	// Close releases the store; later calls fail with ErrStoreUnavailable.
	Close() error
}

// Filter selects the leases of a Scan. Its zero value matches every lease;
// each set field narrows it.
type Filter struct {
	State State  // 0: any state
	Owner string // "": any owner (a SPIFFE ID)
}

// Match reports whether l is selected by f.
func (f Filter) Match(l Lease) bool {
	return (f.State == 0 || l.State == f.State) && (f.Owner == "" || l.Owner == f.Owner)
}

// Optional abilities of a Store. The Manager uses them when the Store has
// them and works correctly without them, at the cost each one documents.
// A Store that wraps another (fault injection, metrics) should forward
// those of the wrapped Store, or the Manager takes the slower path.
type (
	// Verifier is a Store that checked, when it was opened, whether every
	// record it held then would load (the id valid, the state one of
	// CREATING, ACTIVE, REVOKING, the record decodable). Verified returns
	// nil if so, or why not (wrapping ErrStoreCorrupt).
	//
	// Manager.DeferLoad needs it to serve before the leases are restored:
	// it refuses an unverified store at once, before anything is served,
	// as Load would. Without it DeferLoad loads synchronously, as Load:
	// the broker serves only once every lease is in memory (seconds for a
	// million leases, docs/performance.md).
	Verifier interface {
		Verified() error
	}

	// SizeHinter is a Store that knows about how many leases a full Scan
	// yields. Load sizes its map and queue once from it; without it they
	// grow through the inserts (slower, and more heap at the peak of a
	// large restore).
	SizeHinter interface {
		SizeHint() int
	}

	// BulkPutter is a Store that can write many leases in one durable
	// transaction (an import, the benchmarks building a store of a million
	// leases). Without it PutAll writes them one Put at a time.
	BulkPutter interface {
		PutAll(ctx context.Context, ls []Lease) error
	}
)

// PutAll stores every lease of ls in s: with one PutAll if s is a
// BulkPutter, else one Put each (each durable on its own, so a failure
// leaves the leases before it stored).
func PutAll(ctx context.Context, s Store, ls []Lease) error {
	if b, ok := s.(BulkPutter); ok {
		return b.PutAll(ctx, ls)
	}
	for _, l := range ls {
		if err := s.Put(ctx, l); err != nil {
			return err
		}
	}
	return nil
}

// CommitObserver is told of every commit a store makes: how many writes it
// carried, how long it took (the transaction and its sync) and its error.
// Stores that take one (boltstore.WithCommitObserver,
// pgstore.WithCommitObserver) call it in the committing goroutine: it must
// be quick. The broker's store metrics are one.
type CommitObserver func(writes int, took time.Duration, err error)
