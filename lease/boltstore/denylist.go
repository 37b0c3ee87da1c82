package boltstore

import (
	"context"
	"fmt"
	"runtime/debug"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/lease"
)

// The deregistrations live in their own bucket (deniedName) of the same
// file, written through the same log and group commit as the leases: as
// durable as they are.

// Deny records durably that the workload id was deregistered at at, unless
// it is already.
func (s *Store) Deny(ctx context.Context, id string, at time.Time) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: deny %s: %w: %w", id, errUnavailable, err)
	}
	if id == "" {
		return fmt.Errorf("boltstore: deny: empty id: %w", lease.ErrInvalid)
	}
	err := s.writes.write(ctx, reqWrite, op{kind: opDeny, key: []byte(id), val: putTime([]byte{codecV2}, utc(at))})
	if err != nil {
		return fmt.Errorf("boltstore: deny %s: %w: %w", id, errUnavailable, err)
	}
	return nil
}

// Allow lifts the deregistration of id durably.
func (s *Store) Allow(ctx context.Context, id string) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("boltstore: allow %s: %w: %w", id, errUnavailable, err)
	}
	if id == "" {
		return nil // never denied
	}
	err := s.writes.write(ctx, reqWrite, op{kind: opAllow, key: []byte(id)})
	if err != nil {
		return fmt.Errorf("boltstore: allow %s: %w: %w", id, errUnavailable, err)
	}
	return nil
}

// Denied returns every deregistration. A record that cannot be decoded is
// an error wrapping lease.ErrStoreCorrupt: forgetting it would re-admit a
// deregistered workload.
func (s *Store) Denied(ctx context.Context) (out map[string]time.Time, err error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("boltstore: denied: %w: %w", errUnavailable, err)
	}
	if err := s.writes.flush(ctx); err != nil {
		return nil, fmt.Errorf("boltstore: denied: %w: %w", errUnavailable, err)
	}
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	defer func() {
		if r := recover(); r != nil {
			out, err = nil, fmt.Errorf("boltstore: denied: %w: %w: bbolt: %v", errUnavailable, errCorrupt, r)
		}
	}()
	out = map[string]time.Time{}
	err = s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(deniedName)
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			at, err := decodeTime(v)
			if err != nil {
				return fmt.Errorf("record %q: %w: %w", k, errCorrupt, err)
			}
			out[string(k)] = at
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("boltstore: denied: %w: %w", errUnavailable, err)
	}
	return out, nil
}
