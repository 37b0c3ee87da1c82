package broker

import (
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

func TestCheckRequestID(t *testing.T) {
	for _, tc := range []struct {
		id string
		ok bool
	}{
		{"3f2a9c1e-5b7d-4d39-a1c6-0a3f4a2d9e11", true},
		{"deploy 42 / retry ~!", true},
		{strings.Repeat("x", 128), true},
		{strings.Repeat("x", 129), false},
		{"tab\there", false},
		{"nul\x00", false},
		{"\x7f", false},
		{"é", false},
	} {
		if err := checkRequestID(tc.id); (err == nil) != tc.ok {
			t.Errorf("checkRequestID(%q) = %v, want ok %v", tc.id, err, tc.ok)
		}
	}
}

// The replay window: a kept credential is given back (a copy) until the
// window or the lease's expiry, whichever is first, only for its lease, and
// leaves memory when it ends.
func TestRequestsReplayWindow(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	r := newRequests(func() time.Time { return now }, 5*time.Minute)
	k := requestKey{owner: "spiffe://example.org/a", requestID: "r1"}
	short := requestKey{owner: "spiffe://example.org/a", requestID: "r2"}
	r.keep(k, lease.Lease{ID: "l1", ExpireTime: now.Add(time.Hour)}, &pb.Credential{Password: "pw1"})
	r.keep(short, lease.Lease{ID: "l2", ExpireTime: now.Add(time.Minute)}, &pb.Credential{Password: "pw2"})

	c, ok := r.credential(k, "l1")
	if !ok || c.GetPassword() != "pw1" {
		t.Fatalf("credential = %v, %v", c, ok)
	}
	c.Password = "changed"
	if c, _ := r.credential(k, "l1"); c.GetPassword() != "pw1" {
		t.Fatal("a caller changed the kept credential")
	}
	if _, ok := r.credential(k, "another-lease"); ok {
		t.Fatal("credential given for another lease")
	}
	// That forgot it: the key's lease is not the kept one.
	r.keep(k, lease.Lease{ID: "l1", ExpireTime: now.Add(time.Hour)}, &pb.Credential{Password: "pw1"})

	now = now.Add(2 * time.Minute)
	if _, ok := r.credential(short, "l2"); ok {
		t.Fatal("credential given after its lease's expiry")
	}
	now = now.Add(3 * time.Minute)
	if _, ok := r.credential(k, "l1"); ok {
		t.Fatal("credential given after the window")
	}
	r.keep(requestKey{owner: "o", requestID: "r3"}, lease.Lease{ID: "l3", ExpireTime: now.Add(time.Hour)}, &pb.Credential{})
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.issued) != 1 || len(r.order) != 1 {
		t.Fatalf("after the window: %d kept, %d queued; want only the new one", len(r.issued), len(r.order))
	}
}
