package broker

import (
	"time"

	"github.com/credbroker/credbroker/lease"
)

// The timing of a WatchCredential stream, as pure functions of the clock's
// reading, so that it is tested without sleeping (watchplan_test.go).

// watchStep is what a stream does next.
type watchStep int

const (
	stepRenew      watchStep = iota // extend the current lease
	stepRotate                      // issue the next credential
	stepRevokePrev                  // end the overlap: revoke the previous lease
)

func (s watchStep) String() string {
	switch s {
	case stepRenew:
		return "renew"
	case stepRotate:
		return "rotate"
	case stepRevokePrev:
		return "revoke-previous"
	}
	return "unknown"
}

// renewFraction is the share of the remaining time after which a lease is
// renewed (2/3: a failed renewal has a third of the ttl to be retried).
const renewFraction = 2.0 / 3.0

// renewJitter spreads the renewals of many streams: the delay is
// renewFraction of the remaining time, ±renewJitter of itself.
const renewJitter = 0.1

// effectiveOverlap is the overlap a lease gets when it is replaced: the
// configured one, but at most a third of the lease's whole life (issue to
// max expiry), so that a short max_ttl still leaves two thirds of each
// lease as its own.
func effectiveOverlap(l lease.Lease, overlap time.Duration) time.Duration {
	return min(overlap, l.MaxExpireTime.Sub(l.IssueTime)/3)
}

// rotateAt is when the stream issues the credential that replaces l: one
// and a half overlaps before l's max expiry, so that l, extended by one
// overlap at that moment, is still short of its max expiry when the broker
// revokes it, and a slow issuance has half an overlap to spare.
func rotateAt(l lease.Lease, overlap time.Duration) time.Time {
	o := effectiveOverlap(l, overlap)
	return l.MaxExpireTime.Add(-(o + o/2))
}

// renewAt is when a lease expiring at expire, renewed or issued at now, is
// renewed next: renewFraction of the remaining time, jittered by j in
// [0, 1) to ±renewJitter.
func renewAt(now, expire time.Time, j float64) time.Time {
	remaining := expire.Sub(now)
	if remaining <= 0 {
		return now
	}
	f := renewFraction * (1 - renewJitter + 2*renewJitter*j)
	return now.Add(time.Duration(float64(remaining) * f))
}

// nextRenew is when l, issued or renewed at now, is renewed next: renewAt,
// or never (its max expiry: the rotation comes first) if it cannot be
// extended any further.
func nextRenew(now time.Time, l lease.Lease, j float64) time.Time {
	if !l.ExpireTime.Before(l.MaxExpireTime) {
		return l.MaxExpireTime
	}
	return renewAt(now, l.ExpireTime, j)
}

// retryAfter is how long a stream waits to retry a failed renewal or
// issuance while its lease expires at expire: a quarter of what is left,
// between 100ms and 5s.
func retryAfter(now, expire time.Time) time.Duration {
	return min(max(expire.Sub(now)/4, 100*time.Millisecond), 5*time.Second)
}

// watchPlan is a stream's schedule.
type watchPlan struct {
	cur lease.Lease
	// renew is when cur is renewed next (renewAt, or a retry).
	renew time.Time
	// rotateNotBefore delays a rotation whose issuance failed.
	rotateNotBefore time.Time
	// prev is the lease cur replaced, while its overlap lasts; prevEnd is
	// when the broker revokes it. Zero: none.
	prev    lease.Lease
	prevEnd time.Time
}

// next is the stream's next step and its time: the overlap's end if it
// comes first, else the rotation if it is due before the next renewal,
// else the renewal.
func (p watchPlan) next(overlap time.Duration) (watchStep, time.Time) {
	step, at := stepRenew, p.renew
	if r := later(rotateAt(p.cur, overlap), p.rotateNotBefore); !r.After(at) {
		step, at = stepRotate, r
	}
	if p.prev.ID != "" && !p.prevEnd.After(at) {
		step, at = stepRevokePrev, p.prevEnd
	}
	return step, at
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
