package lease

import (
	"math"
	"math/rand/v2"
	"time"
)

// tokenBucket limits how many revocations the expiry loop starts: at most
// burst at once, refilled at rate per second. It reads the Manager's clock,
// not the wall clock, so tests drive it with a fake one; a clock that jumps
// forward refills at most to burst, so a jump never becomes a storm. Not
// safe for concurrent use (the Manager locks).
//
// A tiny stand-in for golang.org/x/time/rate, which go.mod does not carry.
type tokenBucket struct {
	rate   float64 // tokens per second
	burst  float64
	tokens float64
	last   time.Time
}

func newTokenBucket(rate float64, burst int, now time.Time) *tokenBucket {
	return &tokenBucket{rate: rate, burst: float64(burst), tokens: float64(burst), last: now}
}

func (b *tokenBucket) refill(now time.Time) {
	if d := now.Sub(b.last); d > 0 {
		b.tokens = math.Min(b.burst, b.tokens+d.Seconds()*b.rate)
	}
	// A clock that went back moves last back too, so time is not counted
	// twice when it comes forward again.
	b.last = now
}

// available reports how many whole tokens can be taken at now.
func (b *tokenBucket) available(now time.Time) int {
	b.refill(now)
	return int(b.tokens)
}

// take spends one token; the caller checked available.
func (b *tokenBucket) take(now time.Time) {
	b.refill(now)
	b.tokens--
}

// wait is how long from now until one token is available.
func (b *tokenBucket) wait(now time.Time) time.Duration {
	b.refill(now)
	if b.tokens >= 1 {
		return 0
	}
	return time.Duration(math.Ceil((1 - b.tokens) / b.rate * float64(time.Second)))
}

// backoff is the delay before retry number attempts (1 for the first
// retry): base doubling per attempt, capped at max, then jittered down by up
// to half so that leases failing together do not retry together. It never
// gives up; the cap bounds how long a recovered database waits.
func backoff(attempts int, base, max time.Duration) time.Duration {
	d := base
	for i := 1; i < attempts && d < max; i++ {
		d *= 2
	}
	if d > max || d <= 0 {
		d = max
	}
	half := d / 2
	return d - half + time.Duration(rand.Int64N(int64(half)+1))
}
