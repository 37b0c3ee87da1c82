package plugins

import (
	"context"
	"errors"
	"sync"
)

// AdminRotator is an optional ability of a Database: it sets a new password
// for the broker's own admin user on the server (Vault's rotate-root) and
// moves its pool to it. The server receives a verifier or hash where the
// engine allows, never the plaintext. Once it returns nil, new connections
// log in with the new password and idle ones are closed; a connection in
// use at that moment is closed when it is released where the driver allows
// it (postgres), else retired by the pool's idle timeout (mysql).
type AdminRotator interface {
	SetAdminPassword(ctx context.Context, password string) error
}

// ErrRotateUnsupported: the engine cannot rotate its admin password.
var ErrRotateUnsupported = errors.New("this engine cannot rotate its admin password")

// SetAdminPassword rotates db's admin password if db (or the plugin it
// wraps, see Sanitized) is an AdminRotator. The error is scrubbed of the
// new password like every plugin error.
func SetAdminPassword(ctx context.Context, db Database, password string) error {
	for db != nil {
		if r, ok := db.(AdminRotator); ok {
			return scrub(r.SetAdminPassword(ctx, password), password)
		}
		u, ok := db.(interface{ Unwrap() Database })
		if !ok {
			break
		}
		db = u.Unwrap()
	}
	return ErrRotateUnsupported
}

// AdminPassword holds a plugin's admin password: the one its pool logs in
// with, which a rotation replaces while calls run. Every password it has
// held is kept for Secrets, so that errors stay scrubbed of an old one too.
type AdminPassword struct {
	mu  sync.RWMutex
	cur string
	all []string
}

// NewAdminPassword holds pw.
func NewAdminPassword(pw string) *AdminPassword {
	return &AdminPassword{cur: pw, all: []string{pw}}
}

// Get is the current password.
func (p *AdminPassword) Get() string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return p.cur
}

// Set replaces the current password.
func (p *AdminPassword) Set(pw string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur = pw
	p.all = append(p.all, pw)
}

// Secrets is every password held, to scrub from errors (Redact).
func (p *AdminPassword) Secrets() []string {
	p.mu.RLock()
	defer p.mu.RUnlock()
	return append([]string(nil), p.all...)
}
