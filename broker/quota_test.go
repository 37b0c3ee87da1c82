package broker

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// fakeLister holds leases for quotas to count.
type fakeLister struct{ leases []lease.Lease }

func (f *fakeLister) List(_ context.Context, q lease.Query) ([]lease.Lease, error) {
	var out []lease.Lease
	for _, l := range f.leases {
		if (q.Role == "" || l.Role == q.Role) && (q.Owner == "" || l.Owner == q.Owner) {
			for _, s := range q.States {
				if l.State == s {
					out = append(out, l)
				}
			}
		}
	}
	return out, nil
}

// TestQuotaTokenBucket: the bucket starts full, refills at the rate on the
// injected clock, never beyond the burst, and says when to retry.
func TestQuotaTokenBucket(t *testing.T) {
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	q := newQuotas(&fakeLister{}, func() time.Time { return now }, false)
	role := &Role{Name: "r", Quota: Quota{IssueRatePerCaller: 2, IssueBurst: 3}}
	take := func() error {
		release, err := q.reserve(context.Background(), role, "spiffe://example.org/a", "id")
		if err == nil {
			release()
		}
		return err
	}
	for i := range 3 {
		if err := take(); err != nil {
			t.Fatalf("take %d of the burst: %v", i+1, err)
		}
	}
	err := take()
	var qe *quotaError
	if !errors.As(err, &qe) || !strings.Contains(qe.msg, "issue_rate_per_caller (2/s, burst 3) exceeded for this caller: retry in 500ms") {
		t.Fatalf("over the burst: %v", err)
	}
	now = now.Add(500 * time.Millisecond) // one token at 2/s
	if err := take(); err != nil {
		t.Fatalf("after 500ms: %v", err)
	}
	if err := take(); err == nil {
		t.Fatal("a second token after 500ms")
	}
	now = now.Add(time.Hour) // refills to the burst, not beyond
	for i := range 3 {
		if err := take(); err != nil {
			t.Fatalf("take %d after an hour: %v", i+1, err)
		}
	}
	if err := take(); err == nil {
		t.Fatal("the bucket refilled beyond its burst")
	}
	// Burst defaults to the rate rounded up.
	if got := burst(Quota{IssueRatePerCaller: 2.5}); got != 3 {
		t.Errorf("default burst of 2.5/s = %d, want 3", got)
	}
	if got := burst(Quota{IssueRatePerCaller: 0.1}); got != 1 {
		t.Errorf("default burst of 0.1/s = %d, want 1", got)
	}
}

// TestQuotaCountsReservations: a reservation counts until released, once
// even when the lease is already listed, and only live states count.
func TestQuotaCountsReservations(t *testing.T) {
	const a, b = "spiffe://example.org/a", "spiffe://example.org/b"
	f := &fakeLister{leases: []lease.Lease{
		{ID: "1", Role: "r", Owner: a, State: lease.StateActive},
		{ID: "2", Role: "r", Owner: b, State: lease.StateRevoking}, // not live
		{ID: "3", Role: "other", Owner: a, State: lease.StateActive},
	}}
	q := newQuotas(f, nil, false)
	role := &Role{Name: "r", Quota: Quota{MaxLeasesPerRole: 3, MaxLeasesPerCaller: 2}}
	ctx := context.Background()
	relA, err := q.reserve(ctx, role, a, "4")
	if err != nil {
		t.Fatal(err)
	}
	// a: lease 1 and reservation 4 → at its max.
	if _, err := q.reserve(ctx, role, a, "5"); err == nil || !strings.Contains(err.Error(), "max_leases_per_caller (2)") {
		t.Fatalf("third of a: %v", err)
	}
	// The manager now lists 4 too: still counted once.
	f.leases = append(f.leases, lease.Lease{ID: "4", Role: "r", Owner: a, State: lease.StateCreating})
	relB, err := q.reserve(ctx, role, b, "6")
	if err != nil {
		t.Fatalf("b, role at 2 of 3: %v", err)
	}
	if _, err := q.reserve(ctx, role, b, "7"); err == nil || !strings.Contains(err.Error(), `role "r": max_leases_per_role (3) reached`) {
		t.Fatalf("fourth of the role: %v", err)
	}
	relB() // issuance 6 failed: its place is free again
	relA()
	if _, err := q.reserve(ctx, role, b, "8"); err != nil {
		t.Fatalf("after a failed issuance released its place: %v", err)
	}
}

// countingLister counts the List calls quotas make.
type countingLister struct{ calls int }

func (c *countingLister) List(context.Context, lease.Query) ([]lease.Lease, error) {
	c.calls++
	return nil, nil
}

// TestQuotaCapsInStore: when the lease store checks the live-lease caps
// (a shared store), reserve neither counts nor refuses by them, however
// many issuances are in flight here; the issuance rate still applies.
func TestQuotaCapsInStore(t *testing.T) {
	const a = "spiffe://example.org/a"
	now := time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)
	f := &countingLister{}
	q := newQuotas(f, func() time.Time { return now }, true)
	ctx := context.Background()
	capped := &Role{Name: "r", Quota: Quota{MaxLeasesPerRole: 1, MaxLeasesPerCaller: 1}}
	for i := range 3 {
		if _, err := q.reserve(ctx, capped, a, fmt.Sprint(i)); err != nil {
			t.Fatalf("reservation %d, caps left to the store: %v", i+1, err)
		}
	}
	if f.calls != 0 {
		t.Errorf("%d List calls, want none: the store counts", f.calls)
	}
	throttled := &Role{Name: "t", Quota: Quota{MaxLeasesPerRole: 1, IssueRatePerCaller: 1}}
	if _, err := q.reserve(ctx, throttled, a, "t1"); err != nil {
		t.Fatalf("first of the burst: %v", err)
	}
	if _, err := q.reserve(ctx, throttled, a, "t2"); err == nil || !strings.Contains(err.Error(), "issue_rate_per_caller (1/s, burst 1) exceeded") {
		t.Fatalf("over the rate: %v, want refused by issue_rate_per_caller", err)
	}
}
