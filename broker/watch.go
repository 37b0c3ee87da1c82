package broker

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// leaseEnds tells WatchCredential streams that their lease ended. It is
// fed by lease.Config.OnEnd, the one path every ending takes (RevokeLease,
// RevokeLeases, DeregisterWorkload, the SPIRE sweep, expiry), so a stream
// learns of an ending however it came about.
type leaseEnds struct {
	mu   sync.Mutex
	subs map[string]chan lease.Lease
}

func newLeaseEnds() *leaseEnds { return &leaseEnds{subs: map[string]chan lease.Lease{}} }

// subscribe returns a channel that receives the lease with id once it
// ends. Call unsubscribe when no longer interested.
func (e *leaseEnds) subscribe(id string) <-chan lease.Lease {
	ch := make(chan lease.Lease, 1)
	e.mu.Lock()
	e.subs[id] = ch
	e.mu.Unlock()
	return ch
}

func (e *leaseEnds) unsubscribe(id string) {
	e.mu.Lock()
	delete(e.subs, id)
	e.mu.Unlock()
}

// ended is lease.Config.OnEnd. It runs under the lease's lock in the
// revoking goroutine, so it never blocks.
func (e *leaseEnds) ended(l lease.Lease, _ bool) {
	e.mu.Lock()
	ch := e.subs[l.ID]
	delete(e.subs, l.ID)
	e.mu.Unlock()
	if ch != nil {
		ch <- l // buffered, sent once
	}
}

// ids returns the IDs of the subscribed leases.
func (e *leaseEnds) ids() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids := make([]string, 0, len(e.subs))
	for id := range e.subs {
		ids = append(ids, id)
	}
	return ids
}

// endsPollInterval is how often a replica on a shared store asks it which
// of its streams' leases are no longer ACTIVE.
const endsPollInterval = time.Second

// endsPollBatch bounds the IDs of one such query.
const endsPollBatch = 1000

// endLister is what follow reads: lease.Shared (its Get answers
// lease.ErrNotFound for a lease no longer stored).
type endLister interface {
	List(ctx context.Context, q lease.Query) ([]lease.Lease, error)
	Get(ctx context.Context, id string) (lease.Lease, error)
}

// follow makes a replica's streams learn of endings made by another
// replica (a revoke or deregistration served there, its expiry loop): with
// a shared store OnEnd sees only this replica's. Every endsPollInterval it
// asks the store which subscribed leases are still ACTIVE, one query per
// endsPollBatch streams, and ends the others' streams: expired if the
// record still says so, revoked otherwise. A failed query is retried at
// the next tick; the streams' own renewals would fail meanwhile anyway.
func (e *leaseEnds) follow(ctx context.Context, leases endLister, after func(time.Duration) <-chan time.Time, log *slog.Logger) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-after(endsPollInterval):
		}
		ids := e.ids()
		for len(ids) > 0 {
			batch := ids[:min(len(ids), endsPollBatch)]
			ids = ids[len(batch):]
			live, err := leases.List(ctx, lease.Query{IDs: batch, States: []lease.State{lease.StateActive}})
			if err != nil {
				if ctx.Err() == nil {
					log.Warn("watch: cannot ask the store which streamed leases ended; retrying", "error", err.Error())
				}
				break
			}
			active := make(map[string]bool, len(live))
			for _, l := range live {
				active[l.ID] = true
			}
			for _, id := range batch {
				if active[id] {
					continue
				}
				ended := lease.Lease{ID: id, State: lease.StateRevoked}
				switch l, err := leases.Get(ctx, id); {
				case errors.Is(err, lease.ErrNotFound): // revoked and gone
				case err != nil, l.State == lease.StateActive:
					continue // unknown for now, or ACTIVE again: next tick
				case l.Expired:
					ended.State = lease.StateExpired
				}
				e.ended(ended, false)
			}
		}
	}
}

// watchLeases is the part of lease.Manager a stream uses besides issuance.
type watchLeases interface {
	Renew(ctx context.Context, id string, increment time.Duration) (lease.Lease, error)
	Revoke(ctx context.Context, id string) (lease.Lease, error)
	Get(ctx context.Context, id string) (lease.Lease, error)
}

// WatchSettings are the watch: section of the config.
type WatchSettings struct {
	// Overlap is how long a replaced credential stays valid after the
	// next one is sent (capped at a third of a lease's life).
	Overlap time.Duration
	// DisconnectGrace is how long after its client went away a stream's
	// leases are revoked; 0: never (they run out at their expiry).
	DisconnectGrace time.Duration
}

// streamIssuer issues a stream's credentials: the Issuer.
type streamIssuer interface {
	issue(ctx context.Context, caller spiffeid.ID, role string, ttl time.Duration) (lease.Lease, *pb.Credential, error)
}

var _ streamIssuer = (*Issuer)(nil)

// watchDeps build a watcher.
type watchDeps struct {
	issuer streamIssuer
	// admit says whether caller may have role now (Admission.Admit): why
	// a stream whose lease ended is ended.
	admit   func(ctx context.Context, caller spiffeid.ID, role string) error
	leases  watchLeases
	ends    *leaseEnds
	roles   map[string]*Role
	set     WatchSettings
	audit   *auditor
	metrics *metrics
	log     *slog.Logger
	now     func() time.Time
	// after is the clock's timer; jitter returns a number in [0, 1).
	after  func(time.Duration) <-chan time.Time
	jitter func() float64
}

// watcher serves WatchCredential streams: it issues through the Issuer,
// renews and revokes through the lease manager, and owns the goroutines
// that revoke a vanished client's leases after the grace period (Run waits
// for them). Nothing starts until a stream arrives.
type watcher struct {
	watchDeps
	stopping chan struct{} // closed when the broker shuts down
	mu       sync.Mutex
	stopped  bool
	pending  sync.WaitGroup // grace-period revocations
}

func newWatcher(w watchDeps) *watcher {
	if w.now == nil {
		w.now = time.Now
	}
	if w.after == nil {
		w.after = time.After
	}
	if w.jitter == nil {
		w.jitter = rand.Float64
	}
	if w.log == nil {
		w.log = slog.Default()
	}
	return &watcher{watchDeps: w, stopping: make(chan struct{})}
}

// Run waits for ctx to end, then ends every stream (UNAVAILABLE) and
// waits for the grace-period revocations, which are dropped: their leases
// run out at their expiry.
func (w *watcher) Run(ctx context.Context) error {
	<-ctx.Done()
	w.mu.Lock()
	w.stopped = true
	close(w.stopping)
	w.mu.Unlock()
	w.pending.Wait()
	return nil
}

// watchStream is what a stream sends on.
type watchStream interface {
	Context() context.Context
	Send(*pb.WatchCredentialResponse) error
}

// serve runs one stream until its lease is revoked, its client goes away
// or the broker stops. The returned error becomes the stream's status.
func (w *watcher) serve(st watchStream, id spiffeid.ID, role string, ttl time.Duration) error {
	ctx := st.Context()
	cur, cred, err := w.issue(ctx, id, role, ttl)
	if err != nil {
		return err
	}
	// The stream's ttl: what the Issuer resolved (role default, capped).
	ttl = cur.ExpireTime.Sub(cur.IssueTime)
	end := w.ends.subscribe(cur.ID)
	p := watchPlan{cur: cur, renew: nextRenew(w.now(), cur, w.jitter())}
	defer func() { w.ends.unsubscribe(p.cur.ID) }()
	// A revocation between Issue and subscribe would go unseen.
	if _, err := w.leases.Get(ctx, cur.ID); errors.Is(err, lease.ErrNotFound) {
		return w.endedErr(ctx, id, role, lease.Lease{ID: cur.ID, State: lease.StateRevoked})
	}
	if err := st.Send(&pb.WatchCredentialResponse{Event: pb.WatchCredentialResponse_ISSUED, Lease: toPB(cur), Credential: cred}); err != nil {
		return w.gone(ctx, p, err)
	}
	for {
		step, at := p.next(w.set.Overlap)
		var timer <-chan time.Time
		if d := at.Sub(w.now()); d > 0 {
			timer = w.after(d)
		} else {
			ch := make(chan time.Time, 1)
			ch <- at
			timer = ch
		}
		select {
		case <-w.stopping:
			return errShuttingDown
		case <-ctx.Done():
			return w.gone(ctx, p, ctx.Err())
		case l := <-end:
			return w.endedErr(ctx, id, role, l)
		case <-timer:
		}
		var msg *pb.WatchCredentialResponse
		switch step {
		case stepRevokePrev:
			w.revoke(ctx, id, p.prev, "overlap ended")
			p.prev, p.prevEnd = lease.Lease{}, time.Time{}
			continue
		case stepRenew:
			msg, err = w.renew(ctx, id, &p, ttl)
		case stepRotate:
			msg, err = w.rotate(ctx, id, role, &p, ttl, &end)
		}
		if err != nil {
			if ctx.Err() != nil {
				return w.gone(ctx, p, err)
			}
			return err
		}
		if msg == nil {
			continue // retry later, as planned
		}
		if err := st.Send(msg); err != nil {
			return w.gone(ctx, p, err)
		}
	}
}

// issue issues one credential for a stream, counted as IssueCredential is.
func (w *watcher) issue(ctx context.Context, id spiffeid.ID, role string, ttl time.Duration) (lease.Lease, *pb.Credential, error) {
	l, cred, err := w.issuer.issue(ctx, id, role, ttl)
	w.metrics.issue(w.roles, role, err)
	if err != nil {
		return l, nil, err
	}
	w.log.Info("credential issued", "lease_id", l.ID, "role", l.Role, "spiffe_id", l.Owner, "username", l.Username, "expire_time", l.ExpireTime, "stream", true)
	return l, cred, nil
}

// renew extends the current lease by ttl. A lease at its max expiry waits
// for its rotation; a transient failure is retried; a lease that is no
// longer active ends the stream (its revocation is under way).
func (w *watcher) renew(ctx context.Context, id spiffeid.ID, p *watchPlan, ttl time.Duration) (*pb.WatchCredentialResponse, error) {
	l, err := w.leases.Renew(ctx, p.cur.ID, ttl)
	now := w.now()
	if !errors.Is(err, lease.ErrMaxTTLReached) {
		w.metrics.renew(p.cur, err)
	}
	switch {
	case err == nil:
	case errors.Is(err, lease.ErrMaxTTLReached):
		p.renew = p.cur.MaxExpireTime // the rotation comes first
		return nil, nil
	case errors.Is(err, lease.ErrNotActive), errors.Is(err, lease.ErrNotFound):
		return nil, w.endedErr(ctx, id, p.cur.Role, lease.Lease{ID: p.cur.ID, State: lease.StateRevoked})
	case ctx.Err() != nil:
		return nil, err
	default:
		w.log.Warn("watch: renew failed; retrying", "lease_id", p.cur.ID, "error", err.Error())
		p.renew = now.Add(retryAfter(now, p.cur.ExpireTime))
		return nil, nil
	}
	p.cur = l
	p.renew = nextRenew(now, l, w.jitter())
	w.renewed(ctx, id, l, "watch: expires ")
	return &pb.WatchCredentialResponse{Event: pb.WatchCredentialResponse_RENEWED, Lease: toPB(l)}, nil
}

// renewed records a renewal the stream made in the audit log and the log.
func (w *watcher) renewed(ctx context.Context, id spiffeid.ID, l lease.Lease, reason string) {
	r := leaseRecord(audit.EventRenew, l)
	r.Caller, r.Reason = id.String(), reason+l.ExpireTime.UTC().Format(time.RFC3339)
	w.audit.write(ctx, r)
	w.log.Info("lease renewed", "lease_id", l.ID, "spiffe_id", l.Owner, "expire_time", l.ExpireTime, "stream", true)
}

// rotate issues the credential that replaces the current one, extends the
// current lease to cover the overlap and schedules its revocation at the
// overlap's end.
func (w *watcher) rotate(ctx context.Context, id spiffeid.ID, role string, p *watchPlan, ttl time.Duration, end *<-chan lease.Lease) (*pb.WatchCredentialResponse, error) {
	if p.prev.ID != "" {
		// Only with a configuration that leaves no room: never keep two
		// replaced credentials.
		w.revoke(ctx, id, p.prev, "overlap ended")
		p.prev, p.prevEnd = lease.Lease{}, time.Time{}
	}
	next, cred, err := w.issue(ctx, id, role, ttl)
	now := w.now()
	if err != nil {
		if permanent(err) || ctx.Err() != nil {
			return nil, err
		}
		w.log.Warn("watch: next credential not issued; retrying", "lease_id", p.cur.ID, "error", err.Error())
		p.rotateNotBefore = now.Add(retryAfter(now, p.cur.ExpireTime))
		return nil, nil
	}
	old := p.cur
	w.ends.unsubscribe(old.ID)
	*end = w.ends.subscribe(next.ID)
	o := effectiveOverlap(old, w.set.Overlap)
	// The lease outlives the overlap by a quarter of it, so that the
	// stream's revocation, not the expiry loop, ends it (rotateAt leaves
	// room below the max expiry).
	if old.ExpireTime.Before(old.MaxExpireTime) {
		ext, err := w.leases.Renew(ctx, old.ID, o+o/4)
		w.metrics.renew(old, err)
		switch {
		case err != nil:
			w.log.Warn("watch: previous lease not extended for the overlap", "lease_id", old.ID, "error", err.Error())
		case ext.ExpireTime.After(old.ExpireTime):
			old = ext
			w.renewed(ctx, id, old, "watch: extended for the overlap, expires ")
		}
	}
	prevEnd := now.Add(o)
	if old.ExpireTime.Before(prevEnd) {
		prevEnd = old.ExpireTime
	}
	p.prev, p.prevEnd = old, prevEnd
	p.cur, p.rotateNotBefore = next, time.Time{}
	p.renew = nextRenew(now, next, w.jitter())
	shown := old
	shown.ExpireTime = prevEnd // when the broker revokes it
	return &pb.WatchCredentialResponse{
		Event:         pb.WatchCredentialResponse_ROTATED,
		Lease:         toPB(next),
		Credential:    cred,
		PreviousLease: toPB(shown),
	}, nil
}

// permanent reports whether an issuance error will not go away by retrying:
// the caller may no longer have the role.
func permanent(err error) bool {
	var ia *invalidArgError
	return errors.As(err, &ia) || errors.Is(err, identity.ErrNotAllowed) || errors.Is(err, identity.ErrUnknownRole) ||
		errors.Is(err, errDeregistered) || errors.Is(err, errNotRegistered)
}

// revoke revokes a lease the stream issued, as its owner (audit, metrics).
// A lease already gone is fine; a failed drop is retried by the lease
// manager.
func (w *watcher) revoke(ctx context.Context, id spiffeid.ID, l lease.Lease, why string) {
	ended, err := w.leases.Revoke(context.WithoutCancel(ctx), l.ID)
	switch {
	case err == nil && ended.State == lease.StateExpired:
		// The expiry loop got there first and recorded it.
	case err == nil:
		w.audit.revoked(ctx, id.String(), audit.ByOwner, []lease.Lease{ended})
		w.metrics.ended(audit.ByOwner, []lease.Lease{ended})
		w.log.Info("lease revoked", "lease_id", l.ID, "spiffe_id", l.Owner, "username", l.Username, "by", "watch: "+why)
	case errors.Is(err, lease.ErrNotFound):
	default:
		r := leaseRecord(audit.EventRevoke, l)
		r.Caller, r.By, r.Result, r.Reason = id.String(), audit.ByOwner, resultOf(err), "watch: "+why
		w.audit.write(ctx, r)
		w.log.Warn("watch: revoke failed; the lease manager retries it", "lease_id", l.ID, "error", err.Error())
	}
}

// endedErr is the status of a stream whose current lease l ended without
// the stream asking: PERMISSION_DENIED if its caller may no longer have the
// role (deregistered, gone from SPIRE, policy), else the lease was revoked
// (ABORTED) or expired (UNAVAILABLE).
func (w *watcher) endedErr(ctx context.Context, id spiffeid.ID, role string, l lease.Lease) error {
	if err := w.admit(ctx, id, role); err != nil && permanent(err) {
		return err
	}
	if l.State == lease.StateExpired {
		return errLeaseExpired
	}
	return errLeaseRevoked
}

// gone handles a client that went away (or a send that failed): after the
// grace period, the stream's leases are revoked; with no grace period
// they are left to run out at their expiry.
func (w *watcher) gone(ctx context.Context, p watchPlan, cause error) error {
	select {
	case <-w.stopping:
		return errShuttingDown
	default:
	}
	grace := w.set.DisconnectGrace
	if grace <= 0 {
		return cause
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped {
		return errShuttingDown
	}
	id, err := spiffeid.FromString(p.cur.Owner)
	if err != nil {
		return cause
	}
	w.log.Info("watch: client gone; revoking its leases after the grace period", "lease_id", p.cur.ID, "grace", grace)
	timer := w.after(grace)
	w.pending.Go(func() {
		select {
		case <-timer:
		case <-w.stopping:
			return
		}
		ctx := context.WithoutCancel(ctx)
		w.revoke(ctx, id, p.cur, "client gone")
		if p.prev.ID != "" {
			w.revoke(ctx, id, p.prev, "client gone")
		}
	})
	return cause
}
