package broker

import (
	"context"
	"errors"
	"log/slog"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/lease"
)

// fakeWatchLeases records revocations; a unit-test fake of the lease
// manager's part a watcher uses.
type fakeWatchLeases struct {
	mu      sync.Mutex
	revoked []string
}

func (f *fakeWatchLeases) Renew(context.Context, string, time.Duration) (lease.Lease, error) {
	return lease.Lease{}, errors.New("not used")
}

func (f *fakeWatchLeases) Get(context.Context, string) (lease.Lease, error) {
	return lease.Lease{}, errors.New("not used")
}

func (f *fakeWatchLeases) Revoke(_ context.Context, id string) (lease.Lease, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.revoked = append(f.revoked, id)
	return lease.Lease{ID: id, State: lease.StateRevoked}, nil
}

func (f *fakeWatchLeases) ids() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Sorted(slices.Values(f.revoked))
}

// fakeTimers is an injected clock's timer: each After call gets a channel
// the test fires.
type fakeTimers struct {
	mu  sync.Mutex
	d   []time.Duration
	chs []chan time.Time
}

func (f *fakeTimers) after(d time.Duration) <-chan time.Time {
	f.mu.Lock()
	defer f.mu.Unlock()
	ch := make(chan time.Time, 1)
	f.d = append(f.d, d)
	f.chs = append(f.chs, ch)
	return ch
}

func (f *fakeTimers) fire(i int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.chs[i] <- time.Time{}
}

func TestWatcherGone(t *testing.T) {
	owner := spiffeid.RequireFromString("spiffe://example.org/orders/api").String()
	plan := watchPlan{
		cur:  lease.Lease{ID: "cur", Owner: owner},
		prev: lease.Lease{ID: "prev", Owner: owner},
	}
	cause := errors.New("client went away")
	newW := func(grace time.Duration) (*watcher, *fakeWatchLeases, *fakeTimers) {
		leases, timers := &fakeWatchLeases{}, &fakeTimers{}
		w := newWatcher(watchDeps{
			leases: leases,
			ends:   newLeaseEnds(),
			set:    WatchSettings{Overlap: time.Minute, DisconnectGrace: grace},
			log:    slog.New(slog.DiscardHandler),
			after:  timers.after,
		})
		return w, leases, timers
	}

	t.Run("revoked after the grace period", func(t *testing.T) {
		w, leases, timers := newW(30 * time.Second)
		if err := w.gone(context.Background(), plan, cause); err != cause {
			t.Fatalf("gone = %v, want the cause", err)
		}
		if got := leases.ids(); len(got) != 0 {
			t.Fatalf("revoked %v before the grace period", got)
		}
		if len(timers.d) != 1 || timers.d[0] != 30*time.Second {
			t.Fatalf("timers %v, want one of 30s", timers.d)
		}
		timers.fire(0)
		w.pending.Wait()
		if got := leases.ids(); !slices.Equal(got, []string{"cur", "prev"}) {
			t.Fatalf("revoked %v, want cur and prev", got)
		}
	})

	t.Run("grace 0 never revokes", func(t *testing.T) {
		w, leases, timers := newW(0)
		if err := w.gone(context.Background(), plan, cause); err != cause {
			t.Fatalf("gone = %v", err)
		}
		w.pending.Wait()
		if len(leases.ids()) != 0 || len(timers.d) != 0 {
			t.Fatalf("revoked %v, timers %v; want nothing", leases.ids(), timers.d)
		}
	})

	t.Run("shutdown drops pending revocations", func(t *testing.T) {
		w, leases, _ := newW(30 * time.Second)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- w.Run(ctx) }()
		if err := w.gone(context.Background(), plan, cause); err != cause {
			t.Fatalf("gone = %v", err)
		}
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Run did not return")
		}
		if len(leases.ids()) != 0 {
			t.Fatalf("revoked %v at shutdown", leases.ids())
		}
		if err := w.gone(context.Background(), plan, cause); !errors.Is(err, errShuttingDown) {
			t.Fatalf("gone after shutdown = %v, want errShuttingDown", err)
		}
	})
}

func TestLeaseEnds(t *testing.T) {
	e := newLeaseEnds()
	a := e.subscribe("a")
	b := e.subscribe("b")
	e.unsubscribe("b")
	e.ended(lease.Lease{ID: "a", State: lease.StateRevoked}, false)
	e.ended(lease.Lease{ID: "a", State: lease.StateRevoked}, false) // once only: must not block
	e.ended(lease.Lease{ID: "b"}, false)
	e.ended(lease.Lease{ID: "c"}, true) // nobody listens
	select {
	case l := <-a:
		if l.ID != "a" || l.State != lease.StateRevoked {
			t.Fatalf("got %+v", l)
		}
	default:
		t.Fatal("a's end not delivered")
	}
	select {
	case l := <-b:
		t.Fatalf("b unsubscribed but got %+v", l)
	default:
	}
}

func TestNextRenew(t *testing.T) {
	l := watchLease("a", 0, 6*time.Second, 6*time.Second)
	if got := nextRenew(t0, l, 0.5); !got.Equal(l.MaxExpireTime) {
		t.Fatalf("a lease at its max: renew at %s, want never before its max", got.Sub(t0))
	}
	l.ExpireTime = at(3 * time.Second)
	if got := nextRenew(t0, l, 0.5); !got.Equal(at(2 * time.Second)) {
		t.Fatalf("renew at %s, want 2s", got.Sub(t0))
	}
}
