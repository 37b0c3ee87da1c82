package leasetest

import (
	"errors"
	"testing"

	"github.com/credbroker/credbroker/lease"
)

// testRequestID: a lease's request id (the idempotency key of an issuance)
// is stored with it, in every state, survives reopening the store, and
// after a restore the Manager finds the lease by owner and request id, and
// no longer once it is revoked.
func testRequestID(t *testing.T, h Harness) {
	e := open(t, h)
	owner, other := "spiffe://example.org/a", "spiffe://example.org/b"
	active := newLease(t, lease.StateActive, owner)
	active.RequestID = "9f1c2a7e-5b7d-4d39-a1c6-0a3f4a2d9e11"
	revoking := newLease(t, lease.StateRevoking, owner)
	revoking.RequestID, revoking.LastError, revoking.Attempts = "retry #2 ~!@$%^&*()", "drop: refused", 1
	plain := newLease(t, lease.StateActive, owner)
	sameKeyOtherOwner := newLease(t, lease.StateActive, other)
	sameKeyOtherOwner.RequestID = active.RequestID
	all := []lease.Lease{active, revoking, plain, sameKeyOtherOwner}
	put(t, e.s, all...)
	for _, l := range all {
		mustGet(t, e.s, l)
	}
	if got := scan(t, e.s, lease.Filter{Owner: owner}); got[active.ID].RequestID != active.RequestID || got[plain.ID].RequestID != "" {
		t.Errorf("Scan by owner lost the request ids: %+v", got)
	}
	// Overwriting keeps what is put, request id included.
	active.ExpireTime = active.ExpireTime.Add(1)
	put(t, e.s, active)
	mustGet(t, e.s, active)

	if h.Reopen != nil {
		e.reopen(t)
		for _, l := range all[1:] {
			mustGet(t, e.s, l)
		}
		mustGet(t, e.s, active)
	}

	clk := &clock{now: base.UTC()}
	m, err := lease.NewManager(lease.Config{Store: e.s, Backend: NewBackend(), Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Load(bg); err != nil {
		t.Fatalf("Load: %v", err)
	}
	for _, tc := range []struct {
		owner, rid string
		want       string
	}{
		{owner, active.RequestID, active.ID},
		{owner, revoking.RequestID, revoking.ID},
		{other, active.RequestID, sameKeyOtherOwner.ID},
		{other, revoking.RequestID, ""},
		{owner, "no-such-request", ""},
	} {
		l, err := m.FindRequest(bg, tc.owner, tc.rid)
		switch {
		case tc.want == "" && !errors.Is(err, lease.ErrNotFound):
			t.Errorf("FindRequest(%s, %q) = %s, %v; want ErrNotFound", tc.owner, tc.rid, l.ID, err)
		case tc.want != "" && (err != nil || l.ID != tc.want || l.RequestID != tc.rid):
			t.Errorf("FindRequest(%s, %q) = %+v, %v; want lease %s", tc.owner, tc.rid, l, err, tc.want)
		}
	}
	if _, err := m.Revoke(bg, active.ID); err != nil {
		t.Fatalf("Revoke: %v", err)
	}
	if _, err := m.FindRequest(bg, owner, active.RequestID); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("FindRequest after the revoke = %v, want ErrNotFound", err)
	}
}
