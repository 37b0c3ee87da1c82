package client

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Errors a Watcher ends with (wrapped with the broker's status).
var (
	// ErrRevoked: the watcher's lease was revoked (RevokeLease, an
	// operator's RevokeLeases); the broker's status is ABORTED.
	ErrRevoked = errors.New("credbroker client: credential revoked")
	// ErrDenied: the workload may no longer have the role (deregistered,
	// gone from SPIRE, policy); the broker's status is PERMISSION_DENIED.
	ErrDenied = errors.New("credbroker client: permission denied")
	// ErrClosed: Close was called.
	ErrClosed = errors.New("credbroker client: watcher closed")
)

// EventKind says what happened to a Watcher's credential.
type EventKind int

const (
	// Issued: a stream's first credential (the watcher's first, or the
	// first after a reconnection: Previous is then the one it replaces).
	Issued EventKind = iota + 1
	// Renewed: the current lease was extended; same credential.
	Renewed
	// Rotated: a new credential replaces Previous, which stays valid until
	// Previous.ExpireTime (the overlap).
	Rotated
	// Disconnected: the stream broke (Err); the watcher reconnects with
	// backoff and gets a new credential. The current one stays usable
	// until it expires or the broker's disconnect grace ends it.
	Disconnected
	// Ended: the watcher stopped for good (Err: ErrRevoked, ErrDenied, or
	// another refusal). Current returns the error from now on.
	Ended
)

func (k EventKind) String() string {
	switch k {
	case Issued:
		return "issued"
	case Renewed:
		return "renewed"
	case Rotated:
		return "rotated"
	case Disconnected:
		return "disconnected"
	case Ended:
		return "ended"
	}
	return "unknown"
}

// Event is one change of a Watcher's credential.
type Event struct {
	Kind       EventKind
	Credential *Credential // the current credential after the event (nil on Ended)
	Previous   *Credential // the replaced one (Rotated; Issued after a reconnection)
	Err        error       // Disconnected, Ended
}

// WatchOption tunes Watch.
type WatchOption func(*watchOptions)

type watchOptions struct {
	ttl                     time.Duration
	onEvent                 func(Event)
	backoffBase, backoffMax time.Duration
}

// WatchTTL asks for leases of d (the role's default_ttl otherwise); they
// are renewed by d while the stream lives.
func WatchTTL(d time.Duration) WatchOption { return func(o *watchOptions) { o.ttl = d } }

// OnEvent calls f for every event, in order, on the watcher's goroutine:
// f must return quickly and must not call Close.
func OnEvent(f func(Event)) WatchOption { return func(o *watchOptions) { o.onEvent = f } }

// WatchBackoff sets the reconnection backoff: base doubling per failed
// attempt up to max, each wait jittered to between half and all of it
// (default 250ms, 30s).
func WatchBackoff(base, max time.Duration) WatchOption {
	return func(o *watchOptions) { o.backoffBase, o.backoffMax = base, max }
}

// Watcher keeps a credential for one role fresh over
// CredentialService/WatchCredential: the broker renews the lease while the
// stream lives and sends the next credential before the lease's max
// expiry, with an overlap during which both work. If the stream breaks,
// the watcher reconnects with backoff and jitter and is issued a new
// credential. A revocation or a refusal ends it (Done, Err).
//
// Use Current for the credential of the next connection, or the pgx and
// database/sql helpers, which retire connections of replaced credentials.
// Close revokes every lease the watcher holds.
type Watcher struct {
	c    *Client
	role string
	o    watchOptions

	cancel context.CancelFunc
	ready  chan struct{} // closed at the first credential or the end
	done   chan struct{} // closed when run returns

	mu   sync.Mutex
	cur  *Credential
	held map[string]*Credential // leases to revoke at Close
	err  error                  // why the watcher ended

	closeOnce sync.Once
	closeErr  error
}

// Watch opens a WatchCredential stream for role and returns once the first
// credential has arrived; while the broker cannot be reached it retries
// until ctx ends. A refusal (no such role, not allowed) is returned at
// once. The watcher runs until Close (or a revocation), whatever ctx does
// afterwards.
func (c *Client) Watch(ctx context.Context, role string, opts ...WatchOption) (*Watcher, error) {
	o := watchOptions{backoffBase: 250 * time.Millisecond, backoffMax: 30 * time.Second}
	for _, opt := range opts {
		opt(&o)
	}
	if o.backoffBase <= 0 || o.backoffMax < o.backoffBase {
		return nil, errors.New("credbroker client: watch backoff: want 0 < base <= max")
	}
	rctx, cancel := context.WithCancel(context.Background())
	w := &Watcher{
		c: c, role: role, o: o, cancel: cancel,
		ready: make(chan struct{}), done: make(chan struct{}),
		held: map[string]*Credential{},
	}
	go w.run(rctx)
	select {
	case <-w.ready:
		if _, err := w.Current(); err != nil {
			_ = w.Close()
			return nil, err
		}
		return w, nil
	case <-ctx.Done():
		_ = w.Close()
		return nil, fmt.Errorf("credbroker client: watch %q: %w", role, ctx.Err())
	}
}

// Current returns the credential to use now. After the watcher ended it
// returns the reason (ErrRevoked, ErrDenied, ErrClosed, ...).
func (w *Watcher) Current() (*Credential, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return nil, w.err
	}
	if w.cur == nil {
		return nil, errors.New("credbroker client: no credential yet")
	}
	return w.cur, nil
}

// isCurrent reports whether username is the current credential's user.
func (w *Watcher) isCurrent(username string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err == nil && w.cur != nil && w.cur.Username == username
}

// Done is closed when the watcher has stopped: revoked, refused or closed.
func (w *Watcher) Done() <-chan struct{} { return w.done }

// Err is why the watcher stopped (nil while it runs; ErrClosed after
// Close).
func (w *Watcher) Err() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.err
}

// Close stops the stream and revokes every lease the watcher holds (the
// current one and any still in its overlap), so that no user of it is
// left behind; it returns the first revocation error. Later calls return
// the same.
func (w *Watcher) Close() error {
	w.closeOnce.Do(func() {
		w.cancel()
		<-w.done
		w.mu.Lock()
		if w.err == nil {
			w.err = ErrClosed
		}
		held := w.held
		w.held = map[string]*Credential{}
		w.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		for id := range held {
			if err := w.c.Revoke(ctx, id); err != nil && w.closeErr == nil {
				w.closeErr = err
			}
		}
	})
	return w.closeErr
}

func (w *Watcher) run(ctx context.Context) {
	defer close(w.done)
	defer w.markReady()
	attempt := 0
	for {
		got, err := w.stream(ctx)
		if ctx.Err() != nil {
			return // Close
		}
		if got {
			attempt = 0
		}
		if terminal(err) {
			w.end(err)
			return
		}
		w.mu.Lock()
		cur := w.cur
		w.mu.Unlock()
		w.c.log.Warn("credbroker client: watch stream broke; reconnecting", "role", w.role, "error", err.Error())
		w.emit(Event{Kind: Disconnected, Credential: cur, Err: err})
		d := backoff(attempt, w.o.backoffBase, w.o.backoffMax)
		attempt++
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
}

// stream runs one WatchCredential stream until it breaks; got reports
// whether it delivered a credential.
func (w *Watcher) stream(ctx context.Context) (got bool, err error) {
	req := &pb.WatchCredentialRequest{Role: w.role}
	if w.o.ttl > 0 {
		req.Ttl = requestOf([]RequestOption{WithTTL(w.o.ttl)}).ttlPB()
	}
	s, err := w.c.creds.WatchCredential(ctx, req)
	if err != nil {
		return false, err
	}
	for {
		m, err := s.Recv()
		if err != nil {
			return got, err
		}
		w.apply(m)
		got = true
	}
}

// apply takes one message of the stream into the watcher's state.
func (w *Watcher) apply(m *pb.WatchCredentialResponse) {
	w.mu.Lock()
	w.prune()
	ev := Event{Previous: w.cur}
	switch m.GetEvent() {
	case pb.WatchCredentialResponse_ISSUED:
		ev.Kind = Issued
		w.cur = credentialOf(m.GetLease(), m.GetCredential())
	case pb.WatchCredentialResponse_ROTATED:
		ev.Kind = Rotated
		if ev.Previous != nil && ev.Previous.LeaseID == m.GetPreviousLease().GetId() {
			ev.Previous = ev.Previous.withLease(m.GetPreviousLease())
			w.held[ev.Previous.LeaseID] = ev.Previous
		}
		w.cur = credentialOf(m.GetLease(), m.GetCredential())
	case pb.WatchCredentialResponse_RENEWED:
		ev.Kind, ev.Previous = Renewed, nil
		if w.cur != nil && w.cur.LeaseID == m.GetLease().GetId() {
			w.cur = w.cur.withLease(m.GetLease())
		}
	default:
		w.mu.Unlock()
		return // an event this client does not know
	}
	if w.cur != nil {
		w.held[w.cur.LeaseID] = w.cur
	}
	ev.Credential = w.cur
	w.mu.Unlock()
	w.markReady()
	w.emit(ev)
}

// prune forgets held leases past their expiry (the broker has ended
// them). w.mu is held.
func (w *Watcher) prune() {
	now := time.Now()
	for id, c := range w.held {
		if (w.cur == nil || id != w.cur.LeaseID) && now.After(c.ExpireTime) {
			delete(w.held, id)
		}
	}
}

func (w *Watcher) markReady() {
	select {
	case <-w.ready:
	default:
		close(w.ready)
	}
}

// end stops the watcher for good with err.
func (w *Watcher) end(err error) {
	switch status.Code(err) {
	case codes.Aborted:
		err = fmt.Errorf("%w: %w", ErrRevoked, err)
	case codes.PermissionDenied:
		err = fmt.Errorf("%w: %w", ErrDenied, err)
	default:
		err = fmt.Errorf("credbroker client: watch %q: %w", w.role, err)
	}
	w.mu.Lock()
	w.err = err
	w.mu.Unlock()
	w.c.log.Warn("credbroker client: watch ended", "role", w.role, "error", err.Error())
	w.emit(Event{Kind: Ended, Err: err})
}

func (w *Watcher) emit(ev Event) {
	if w.o.onEvent != nil {
		w.o.onEvent(ev)
	}
}

// terminal reports whether a stream's error ends the watcher instead of a
// reconnection: the broker refused or revoked.
func terminal(err error) bool {
	switch status.Code(err) {
	case codes.Aborted, codes.PermissionDenied, codes.NotFound, codes.InvalidArgument,
		codes.Unauthenticated, codes.Unimplemented, codes.FailedPrecondition:
		return true
	}
	return false
}

// backoff is the wait before reconnection attempt n (0-based): base
// doubling up to max, jittered to [d/2, d].
func backoff(n int, base, max time.Duration) time.Duration {
	d := base
	for i := 0; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
}
