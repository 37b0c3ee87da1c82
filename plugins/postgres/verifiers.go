package postgres

import (
	"sync"

	"github.com/credbroker/credbroker/plugins"
)

// verifierBuffer is how many password/verifier pairs the plugin keeps
// ready. At the default 4096 iterations a pair costs about 0.5-0.8 ms of
// one core, so 64 absorb a burst of 64 issuances without any PBKDF2 on
// their path, and refilling them all takes one core 30-50 ms.
const verifierBuffer = 64

// maxIssuedVerifiers bounds the verifiers of passwords handed out by
// GeneratePassword and not yet used by NewUser (an issuance that failed in
// between never comes back for its verifier).
const maxIssuedVerifiers = 4 * verifierBuffer

// verifierCache takes PBKDF2 off the request path: GeneratePassword hands
// out a password whose SCRAM verifier is already computed, and NewUser
// looks the verifier up by password (computing it as before when it is not
// there: a password from plugins.GeneratePassword, an empty buffer).
//
// The pairs live in memory only, are never logged, and a password's
// verifier is forgotten as NewUser takes it. Lifecycle: nothing runs until
// the first GeneratePassword; each call that leaves the buffer short starts
// one refill goroutine if none is running, which computes pairs until the
// buffer is full and exits. Close stops it and waits for it (DB.Close),
// after which GeneratePassword still works, without the buffer.
type verifierCache struct {
	iters int

	mu      sync.Mutex
	ready   []scramPair       // computed, not handed out
	issued  map[string]string // password → verifier, handed out, awaiting NewUser
	filling bool
	closed  bool
	stop    chan struct{} // closed by close
	wg      sync.WaitGroup
}

type scramPair struct{ password, verifier string }

// GeneratePassword implements plugins.PasswordGenerator.
func (db *DB) GeneratePassword() (string, error) { return db.verifiers.generate(db.iters) }

var _ plugins.PasswordGenerator = (*DB)(nil)

func (c *verifierCache) generate(iters int) (string, error) {
	c.mu.Lock()
	if c.iters == 0 {
		c.iters = iters
		c.stop = make(chan struct{})
	}
	var p scramPair
	if n := len(c.ready); n > 0 {
		p = c.ready[n-1]
		c.ready[n-1] = scramPair{}
		c.ready = c.ready[:n-1]
		if c.issued == nil {
			c.issued = make(map[string]string, maxIssuedVerifiers)
		}
		if len(c.issued) >= maxIssuedVerifiers {
			for k := range c.issued { // any one: it was abandoned or will be recomputed
				delete(c.issued, k)
				break
			}
		}
		c.issued[p.password] = p.verifier
	}
	c.startFillLocked()
	c.mu.Unlock()
	if p.password != "" {
		return p.password, nil
	}
	return plugins.GeneratePassword()
}

// take returns, and forgets, the verifier prepared for password.
func (c *verifierCache) take(password string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	v, ok := c.issued[password]
	if ok {
		delete(c.issued, password)
	}
	return v, ok
}

func (c *verifierCache) startFillLocked() {
	if c.filling || c.closed || c.stop == nil || len(c.ready) >= verifierBuffer {
		return
	}
	c.filling = true
	c.wg.Add(1)
	go c.fill()
}

// fill computes pairs until the buffer is full or the cache is closed.
func (c *verifierCache) fill() {
	defer c.wg.Done()
	for {
		select {
		case <-c.stop:
			c.mu.Lock()
			c.filling = false
			c.mu.Unlock()
			return
		default:
		}
		pw, err := plugins.GeneratePassword()
		var v string
		if err == nil {
			v, err = newScramVerifier(pw, c.iters)
		}
		c.mu.Lock()
		if err != nil || c.closed {
			// A failing random source is reported by the request path,
			// which calls it too.
			c.filling = false
			c.mu.Unlock()
			return
		}
		c.ready = append(c.ready, scramPair{pw, v})
		full := len(c.ready) >= verifierBuffer
		if full {
			c.filling = false
		}
		c.mu.Unlock()
		if full {
			return
		}
	}
}

// close stops the refill, waits for it and drops every pair.
func (c *verifierCache) close() {
	c.mu.Lock()
	if !c.closed && c.stop != nil {
		close(c.stop)
	}
	c.closed = true
	c.mu.Unlock()
	c.wg.Wait()
	c.mu.Lock()
	clear(c.ready)
	c.ready = nil
	c.issued = nil
	c.mu.Unlock()
}
