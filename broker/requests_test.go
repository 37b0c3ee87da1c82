package broker

import (
	"context"
	"errors"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

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

// blockingFinder is a leaseIssuer whose FindRequest (the first step of an
// issuance with a request id) blocks until released or its ctx ends.
type blockingFinder struct {
	calls   atomic.Int32
	release chan struct{}
	err     error
}

func (f *blockingFinder) FindRequest(ctx context.Context, _, _ string) (lease.Lease, error) {
	f.calls.Add(1)
	select {
	case <-f.release:
		return lease.Lease{}, f.err
	case <-ctx.Done():
		return lease.Lease{}, ctx.Err()
	}
}

func (f *blockingFinder) Issue(context.Context, lease.Lease, lease.CreateFunc) (lease.Lease, error) {
	return lease.Lease{}, errors.New("not used")
}

func (f *blockingFinder) Revoke(context.Context, string) (lease.Lease, error) {
	return lease.Lease{}, errors.New("not used")
}

// Calls with one key share one issuance: a waiter honours its own
// context, later waiters get the first call's answer without a second
// issuance, and a first call that gives up hands the key to a waiter.
func TestRequestsSingleFlight(t *testing.T) {
	errBoom := errors.New("store unavailable")
	f := &blockingFinder{release: make(chan struct{}), err: errBoom}
	s := &Issuer{leases: f, now: time.Now, requests: newRequests(time.Now, replayWindow)}
	caller := spiffeid.RequireFromString("spiffe://example.org/a")
	bg := context.Background()
	issue := func(ctx context.Context) <-chan error {
		ch := make(chan error, 1)
		go func() {
			_, _, err := s.issueOnce(ctx, caller, "r", 0, "key-1")
			ch <- err
		}()
		return ch
	}
	waitCalls := func(n int32) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for f.calls.Load() != n {
			if time.Now().After(deadline) {
				t.Fatalf("%d issuances started, want %d", f.calls.Load(), n)
			}
			time.Sleep(time.Millisecond)
		}
	}

	first := issue(bg)
	waitCalls(1)
	short, cancel := context.WithTimeout(bg, 20*time.Millisecond)
	defer cancel()
	if err := <-issue(short); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("waiter whose context ended: %v", err)
	}
	second := issue(bg)
	time.Sleep(20 * time.Millisecond) // second is waiting, not issuing
	close(f.release)
	for _, ch := range []<-chan error{first, second} {
		if err := <-ch; !errors.Is(err, errBoom) {
			t.Fatalf("shared answer: %v, want the first call's", err)
		}
	}
	if n := f.calls.Load(); n != 1 {
		t.Fatalf("%d issuances for concurrent calls with one key, want 1", n)
	}

	// The first call gives up: a waiter takes over with its own issuance.
	f.release = make(chan struct{})
	f.calls.Store(0)
	leaderCtx, stopLeader := context.WithCancel(bg)
	leader := issue(leaderCtx)
	waitCalls(1)
	waiter := issue(bg)
	time.Sleep(20 * time.Millisecond)
	stopLeader()
	if err := <-leader; !errors.Is(err, context.Canceled) {
		t.Fatalf("first call: %v", err)
	}
	waitCalls(2)
	close(f.release)
	if err := <-waiter; !errors.Is(err, errBoom) {
		t.Fatalf("waiter that took over: %v", err)
	}
}
