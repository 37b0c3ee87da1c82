package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Idempotent issuance (IssueCredentialRequest.request_id).
//
// The key is (caller's SPIFFE ID, request_id); the role must match and the
// ttl is not part of it. While the lease issued for a key lives (its
// record exists: CREATING, ACTIVE or REVOKING), a retry never creates a
// second user:
//
//   - within replayWindow of the issuance (and before the lease's expiry)
//     and while the lease is ACTIVE, the retry gets the same lease (as it
//     is now, renewals included) and the same credential, kept in this
//     process's memory only (the password is never stored);
//   - later, or after a restart of the broker (the request id is stored
//     with the lease, the credential is not), the retry fails with
//     ALREADY_EXISTS naming the lease: the caller revokes it or uses a new
//     request_id;
//   - the same key with another role fails with FAILED_PRECONDITION.
//
// Concurrent calls with one key are serialized: the first issues, the
// others wait for it (or for their own context) and get its answer. Once
// the lease has ended the request id is free again.

// replayWindow is how long an issued credential is kept in memory for a
// retry with the same request id (capped at the lease's expiry).
const replayWindow = 5 * time.Minute

// maxRequestIDLen bounds request_id: a UUID or a ULID fits many times over.
const maxRequestIDLen = 128

// checkRequestID accepts 1 to 128 characters of printable ASCII (space to
// '~'): the id goes into the lease store, logs and the audit log.
func checkRequestID(s string) error {
	if len(s) > maxRequestIDLen {
		return invalidArg(fmt.Sprintf("request_id is %d bytes, at most %d", len(s), maxRequestIDLen))
	}
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] > 0x7e {
			return invalidArg("request_id may only hold printable ASCII characters")
		}
	}
	return nil
}

// requestExistsError: the request id's lease exists but its credential can
// no longer be given (replay window over, broker restarted, lease not
// ACTIVE). ALREADY_EXISTS on the wire.
type requestExistsError struct {
	leaseID string
	state   lease.State
}

func (e *requestExistsError) Error() string {
	return fmt.Sprintf("request_id already issued lease %s (%s); its credential is no longer available: revoke the lease or use a new request_id", e.leaseID, e.state)
}

// requestRoleError: the request id was used for another role.
// FAILED_PRECONDITION on the wire.
type requestRoleError struct{ leaseID, role string }

func (e *requestRoleError) Error() string {
	return fmt.Sprintf("request_id was used for role %q (lease %s); use a new request_id", e.role, e.leaseID)
}

type requestKey struct{ owner, requestID string }

// requestCall is one issuance for a key, which concurrent calls wait for.
type requestCall struct {
	done chan struct{}
	l    lease.Lease
	cred *pb.Credential
	err  error
}

// issuedCredential is a credential kept for replay until until.
type issuedCredential struct {
	leaseID string
	cred    *pb.Credential
	until   time.Time
}

// requests holds the issuances in flight by key and the credentials kept
// for replay, which leave memory at the end of their window (purged as new
// ones arrive, and checked on every lookup).
type requests struct {
	now    func() time.Time
	window time.Duration

	mu      sync.Mutex
	flights map[requestKey]*requestCall
	issued  map[requestKey]issuedCredential
	// order is the keys of issued in the order they were added, each with
	// its until, so that purging looks only at expired ones.
	order []orderedKey
}

type orderedKey struct {
	key   requestKey
	until time.Time
}

func newRequests(now func() time.Time, window time.Duration) *requests {
	return &requests{now: now, window: window, flights: map[requestKey]*requestCall{}, issued: map[requestKey]issuedCredential{}}
}

// keep remembers the credential of l until the window or the lease ends.
func (r *requests) keep(k requestKey, l lease.Lease, cred *pb.Credential) {
	now := r.now()
	until := now.Add(r.window)
	if l.ExpireTime.Before(until) {
		until = l.ExpireTime
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.purgeLocked(now)
	r.issued[k] = issuedCredential{leaseID: l.ID, cred: cred, until: until}
	r.order = append(r.order, orderedKey{key: k, until: until})
}

// purgeLocked forgets the credentials whose window ended. Windows are of
// one length, so the order of insertion is nearly that of expiry; one
// capped early by its lease's expiry waits for its turn (at most the
// window) but is never replayed after its until (credential checks it).
func (r *requests) purgeLocked(now time.Time) {
	n := 0
	for _, o := range r.order {
		if now.Before(o.until) {
			break
		}
		if c, ok := r.issued[o.key]; ok && !now.Before(c.until) {
			delete(r.issued, o.key)
		}
		n++
	}
	if n > 0 {
		clear(r.order[:n])
		r.order = r.order[n:]
	}
}

// credential returns the kept credential of k for lease id, if its window
// is still open.
func (r *requests) credential(k requestKey, leaseID string) (*pb.Credential, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, ok := r.issued[k]
	if !ok {
		return nil, false
	}
	if !r.now().Before(c.until) || c.leaseID != leaseID {
		delete(r.issued, k)
		return nil, false
	}
	return proto.Clone(c.cred).(*pb.Credential), true
}

// issueOnce is issue with a request id: see the comment at the top.
func (s *Issuer) issueOnce(ctx context.Context, caller spiffeid.ID, roleName string, ttl time.Duration, requestID string) (lease.Lease, *pb.Credential, error) {
	if err := checkRequestID(requestID); err != nil {
		return lease.Lease{}, nil, err
	}
	if ttl < 0 {
		return lease.Lease{}, nil, invalidArg("ttl must be positive")
	}
	k := requestKey{owner: caller.String(), requestID: requestID}
	r := s.requests
	for {
		r.mu.Lock()
		c := r.flights[k]
		if c == nil {
			c = &requestCall{done: make(chan struct{})}
			r.flights[k] = c
			r.mu.Unlock()
			c.l, c.cred, c.err = s.issueOrReplay(ctx, caller, roleName, ttl, k)
			r.mu.Lock()
			delete(r.flights, k)
			r.mu.Unlock()
			close(c.done)
			return c.l, cloneCred(c.cred), c.err
		}
		r.mu.Unlock()
		select {
		case <-c.done:
		case <-ctx.Done():
			return lease.Lease{}, nil, ctx.Err()
		}
		if c.err != nil && (errors.Is(c.err, context.Canceled) || errors.Is(c.err, context.DeadlineExceeded)) {
			continue // the first caller gave up; this one tries itself
		}
		if c.err == nil && c.l.Role != roleName {
			return lease.Lease{}, nil, &requestRoleError{leaseID: c.l.ID, role: c.l.Role}
		}
		return c.l, cloneCred(c.cred), c.err
	}
}

// issueOrReplay answers a key no other call is working on: the lease
// already issued for it (with its credential if still kept), or a new one.
func (s *Issuer) issueOrReplay(ctx context.Context, caller spiffeid.ID, roleName string, ttl time.Duration, k requestKey) (lease.Lease, *pb.Credential, error) {
	existing, err := s.leases.FindRequest(ctx, k.owner, k.requestID)
	switch {
	case errors.Is(err, lease.ErrNotFound):
		l, cred, err := s.issueNew(ctx, caller, roleName, ttl, k.requestID)
		if err == nil {
			s.requests.keep(k, l, cred)
		}
		return l, cred, err
	case err != nil:
		return lease.Lease{}, nil, err
	}
	// The caller must still be admitted: a deregistered workload gets
	// nothing back, not even a credential it was given.
	if _, err := s.admission.Admit(ctx, caller, roleName); err != nil {
		return lease.Lease{}, nil, err
	}
	if existing.Role != roleName {
		return lease.Lease{}, nil, &requestRoleError{leaseID: existing.ID, role: existing.Role}
	}
	if existing.State == lease.StateActive {
		if cred, ok := s.requests.credential(k, existing.ID); ok {
			if err := s.audit.replayRecorded(ctx, existing); err != nil {
				return lease.Lease{}, nil, err // fail closed, as for a new credential
			}
			return existing, cred, nil
		}
	}
	return lease.Lease{}, nil, &requestExistsError{leaseID: existing.ID, state: existing.State}
}

func cloneCred(c *pb.Credential) *pb.Credential {
	if c == nil {
		return nil
	}
	return proto.Clone(c).(*pb.Credential)
}
