package broker

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// fakeClock is the watcher's injected clock: After registers a timer and
// reports its delay on registered; Advance moves the time and fires the
// timers that are due.
type fakeClock struct {
	mu         sync.Mutex
	now        time.Time
	timers     []fakeTimer
	registered chan time.Duration
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	c.timers = append(c.timers, fakeTimer{c.now.Add(d), ch})
	c.mu.Unlock()
	c.registered <- d
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if t.at.After(c.now) {
			kept = append(kept, t)
			continue
		}
		t.ch <- c.now
	}
	c.timers = kept
}

// streamLeases is a lease manager as far as a stream sees it: renew moves
// the expiry as lease.Manager.Renew does (never past max, never earlier).
type streamLeases struct {
	clock   *fakeClock
	mu      sync.Mutex
	m       map[string]lease.Lease
	revoked []string
}

func (s *streamLeases) put(l lease.Lease) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.m[l.ID] = l
}

func (s *streamLeases) Renew(_ context.Context, id string, inc time.Duration) (lease.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.m[id]
	if !ok {
		return lease.Lease{}, lease.ErrNotFound
	}
	if !l.ExpireTime.Before(l.MaxExpireTime) {
		return lease.Lease{}, lease.ErrMaxTTLReached
	}
	exp := s.clock.Now().Add(inc)
	if exp.After(l.MaxExpireTime) {
		exp = l.MaxExpireTime
	}
	if exp.After(l.ExpireTime) {
		l.ExpireTime = exp
	}
	s.m[id] = l
	return l, nil
}

func (s *streamLeases) Revoke(_ context.Context, id string) (lease.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.m[id]
	if !ok {
		return lease.Lease{}, lease.ErrNotFound
	}
	delete(s.m, id)
	s.revoked = append(s.revoked, id)
	l.State = lease.StateRevoked
	return l, nil
}

func (s *streamLeases) Get(_ context.Context, id string) (lease.Lease, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	l, ok := s.m[id]
	if !ok {
		return lease.Lease{}, lease.ErrNotFound
	}
	return l, nil
}

func (s *streamLeases) revokedIDs() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.revoked...)
}

// fakeIssuer issues leases of the stream's ttl with a 6s max ttl.
type fakeIssuer struct {
	leases *streamLeases
	n      int
}

func (f *fakeIssuer) issue(_ context.Context, caller spiffeid.ID, role string, ttl time.Duration) (lease.Lease, *pb.Credential, error) {
	f.n++
	now := f.leases.clock.Now()
	l := lease.Lease{
		ID: fmt.Sprintf("lease%d", f.n), Role: role, Owner: caller.String(), State: lease.StateActive,
		IssueTime: now, ExpireTime: now.Add(ttl), MaxExpireTime: now.Add(6 * time.Second),
	}
	f.leases.put(l)
	return l, &pb.Credential{Username: fmt.Sprintf("user%d", f.n)}, nil
}

type fakeStream struct {
	ctx  context.Context
	sent chan *pb.WatchCredentialResponse
}

func (f *fakeStream) Context() context.Context { return f.ctx }

func (f *fakeStream) Send(m *pb.WatchCredentialResponse) error {
	f.sent <- m
	return nil
}

// TestWatcherServeTimeline drives a stream with an injected clock (ttl 2s,
// max_ttl 6s, overlap 2s, no jitter): ISSUED at 0; RENEWED at 1.33s and
// 2.67s; ROTATED at 3s (max − 1.5 overlaps) with the old lease shown valid
// until 5s and extended to 5.5s; the new lease renewed at 4.33s; the old
// one revoked at 5s; then a deregistration ends the stream with
// PERMISSION_DENIED.
func TestWatcherServeTimeline(t *testing.T) {
	clk := &fakeClock{now: t0, registered: make(chan time.Duration, 16)}
	leases := &streamLeases{clock: clk, m: map[string]lease.Lease{}}
	var admitErr error
	var admitMu sync.Mutex
	w := newWatcher(watchDeps{
		issuer: &fakeIssuer{leases: leases},
		admit: func(context.Context, spiffeid.ID, string) error {
			admitMu.Lock()
			defer admitMu.Unlock()
			return admitErr
		},
		leases: leases,
		ends:   newLeaseEnds(),
		set:    WatchSettings{Overlap: 2 * time.Second},
		log:    slog.New(slog.DiscardHandler),
		now:    clk.Now,
		after:  clk.After,
		jitter: func() float64 { return 0.5 },
	})
	st := &fakeStream{ctx: context.Background(), sent: make(chan *pb.WatchCredentialResponse, 16)}
	caller := spiffeid.RequireFromString("spiffe://example.org/orders/api")
	done := make(chan error, 1)
	go func() { done <- w.serve(st, caller, "orders", 2*time.Second) }()

	near := func(got time.Time, want time.Duration) bool {
		d := got.Sub(t0) - want
		return d > -time.Millisecond && d < time.Millisecond
	}
	expect := func(event pb.WatchCredentialResponse_Event, id string, expire time.Duration) *pb.WatchCredentialResponse {
		t.Helper()
		select {
		case m := <-st.sent:
			if m.GetEvent() != event || m.GetLease().GetId() != id || !near(m.GetLease().GetExpireTime().AsTime(), expire) {
				t.Fatalf("at %s: got %s %s expiring at %s; want %s %s expiring at %s", clk.Now().Sub(t0),
					m.GetEvent(), m.GetLease().GetId(), m.GetLease().GetExpireTime().AsTime().Sub(t0), event, id, expire)
			}
			return m
		case err := <-done:
			t.Fatalf("stream ended: %v", err)
		case <-time.After(5 * time.Second):
			t.Fatalf("at %s: no message", clk.Now().Sub(t0))
		}
		return nil
	}
	// next waits for the stream to set its timer, checks when it is due,
	// and moves the clock there.
	next := func(due time.Duration) {
		t.Helper()
		select {
		case d := <-clk.registered:
			if !near(clk.Now().Add(d), due) {
				t.Fatalf("at %s: next step due at %s, want %s", clk.Now().Sub(t0), clk.Now().Add(d).Sub(t0), due)
			}
			clk.Advance(d)
		case <-time.After(5 * time.Second):
			t.Fatalf("at %s: the stream set no timer", clk.Now().Sub(t0))
		}
	}
	third := time.Second / 3

	m := expect(pb.WatchCredentialResponse_ISSUED, "lease1", 2*time.Second)
	if m.GetCredential().GetUsername() != "user1" {
		t.Fatal("ISSUED without its credential")
	}
	next(4 * third)
	expect(pb.WatchCredentialResponse_RENEWED, "lease1", 2*time.Second+4*third)
	next(8 * third)
	expect(pb.WatchCredentialResponse_RENEWED, "lease1", 2*time.Second+8*third)
	next(3 * time.Second) // 6s − 1.5 × 2s
	m = expect(pb.WatchCredentialResponse_ROTATED, "lease2", 5*time.Second)
	if m.GetCredential().GetUsername() != "user2" || m.GetPreviousLease().GetId() != "lease1" || !near(m.GetPreviousLease().GetExpireTime().AsTime(), 5*time.Second) {
		t.Fatalf("ROTATED: credential %q, previous %s until %s; want user2, lease1 until 5s",
			m.GetCredential().GetUsername(), m.GetPreviousLease().GetId(), m.GetPreviousLease().GetExpireTime().AsTime().Sub(t0))
	}
	if l, _ := leases.Get(context.Background(), "lease1"); !near(l.ExpireTime, 5500*time.Millisecond) {
		t.Fatalf("previous lease expires at %s, want 5.5s (a quarter overlap past its revocation)", l.ExpireTime.Sub(t0))
	}
	next(3*time.Second + 4*third)
	expect(pb.WatchCredentialResponse_RENEWED, "lease2", 5*time.Second+4*third)
	next(5 * time.Second) // the overlap's end
	next(3*time.Second + 8*third)
	if got := leases.revokedIDs(); len(got) != 1 || got[0] != "lease1" {
		t.Fatalf("revoked %v at the overlap's end, want [lease1]", got)
	}

	admitMu.Lock()
	admitErr = errDeregistered
	admitMu.Unlock()
	l, _ := leases.Revoke(context.Background(), "lease2")
	w.ends.ended(l, false)
	select {
	case err := <-done:
		if status.Code(toStatus(err)) != codes.PermissionDenied {
			t.Fatalf("stream ended with %v, want PERMISSION_DENIED", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the stream did not end")
	}
}
