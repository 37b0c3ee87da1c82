package broker

import (
	"context"
	"errors"
	"sort"
	"sync"

	"github.com/credbroker/credbroker/lease"
)

// BulkRevokeConcurrency is how many revocations RevokeLeases,
// DeregisterWorkload and the registry sweep run at once. The plugins
// coalesce concurrent drops into one batch per database (plugins/postgres
// drops up to 128 roles in one transaction), so this sets the batch size
// rather than the load on the database: one batch runs at a time either
// way, and larger batches cost fewer round trips per user (docs/performance.md
// §7: 100,000 users revoked at 1,500-2,200 a second, against 210-500 with 8).
const BulkRevokeConcurrency = 32

// revokable are the states of the leases a bulk revocation takes: not those
// still being created, which their issuance cleans up if it fails.
var revokable = []lease.State{lease.StateActive, lease.StateRevoking}

// revokeLeases is the part of lease.Manager a bulk revocation needs.
type revokeLeases interface {
	List(ctx context.Context, q lease.Query) ([]lease.Lease, error)
	Revoke(ctx context.Context, id string) (lease.Lease, error)
}

// bulkRevoker revokes every lease a query selects: DeregisterWorkload,
// RevokeLeases and the registry sweep share it.
type bulkRevoker struct {
	leases revokeLeases
}

// revokeAll revokes every lease q selects (its States are replaced by
// revokable), with bounded concurrency, and returns the final leases. A
// lease that is already gone counts as revoked by someone else and is not
// reported.
func (b bulkRevoker) revokeAll(ctx context.Context, q lease.Query) ([]lease.Lease, error) {
	q.States = revokable
	targets, err := b.leases.List(ctx, q)
	if err != nil {
		return nil, err
	}
	type result struct {
		l   lease.Lease
		err error
	}
	results := make([]result, len(targets))
	var wg sync.WaitGroup
	sem := make(chan struct{}, BulkRevokeConcurrency)
	for i, t := range targets {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			l, err := b.leases.Revoke(ctx, t.ID)
			results[i] = result{l, err}
		})
	}
	wg.Wait()
	var out []lease.Lease
	var firstErr error
	for _, r := range results {
		switch {
		case r.err == nil:
			out = append(out, r.l)
		case isNotFound(r.err):
		default:
			if firstErr == nil {
				firstErr = r.err
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, firstErr
}

func isNotFound(err error) bool { return errors.Is(err, lease.ErrNotFound) }
