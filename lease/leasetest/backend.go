package leasetest

import (
	"context"
	"sync"

	"github.com/credbroker/credbroker/lease"
)

// Backend is a fake lease.Backend: it records every Drop and Extend and
// fails on demand. Safe for concurrent use.
type Backend struct {
	mu      sync.Mutex
	drops   map[string]int
	extends map[string]int
	// fail, if set, decides the outcome of each Drop; see FailDrops.
	fail func(l lease.Lease) error
}

var _ lease.Backend = (*Backend)(nil)

// NewBackend returns a Backend whose calls all succeed.
func NewBackend() *Backend {
	return &Backend{drops: map[string]int{}, extends: map[string]int{}}
}

// FailDrops makes every later Drop return fn's result (nil: succeed); a nil
// fn removes the hook. Failed drops are counted too.
func (b *Backend) FailDrops(fn func(l lease.Lease) error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.fail = fn
}

// Drop counts the call and returns what FailDrops decided.
func (b *Backend) Drop(_ context.Context, l lease.Lease) error {
	b.mu.Lock()
	b.drops[l.ID]++
	fail := b.fail
	b.mu.Unlock()
	if fail != nil {
		return fail(l)
	}
	return nil
}

// Extend counts the call.
func (b *Backend) Extend(_ context.Context, l lease.Lease) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.extends[l.ID]++
	return nil
}

// Drops is how many times Drop was called for the lease with id.
func (b *Backend) Drops(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.drops[id]
}

// Extends is how many times Extend was called for the lease with id.
func (b *Backend) Extends(id string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.extends[id]
}
