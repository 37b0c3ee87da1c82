package boltstore

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

var bg = context.Background()

var errDB = errors.New("fake database: connection refused")

var leaseSeq atomic.Int64

func makeLease(t *testing.T, now time.Time, ttl, maxTTL time.Duration) lease.Lease {
	t.Helper()
	id, err := lease.NewID()
	if err != nil {
		t.Fatal(err)
	}
	return lease.Lease{
		ID:                   id,
		Role:                 "readonly",
		Owner:                "spiffe://example.org/app",
		Database:             "pg1",
		Username:             fmt.Sprintf("cb_readonly_%d", leaseSeq.Add(1)),
		IssueTime:            now,
		ExpireTime:           now.Add(ttl),
		MaxExpireTime:        now.Add(maxTTL),
		RevocationStatements: []string{`DROP ROLE IF EXISTS "{{name}}"`},
	}
}
