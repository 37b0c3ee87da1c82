package broker

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/identity"
)

// registrations is the registry check admission makes after the role
// policy: nil, errDeregistered or errNotRegistered. *registry implements it.
type registrations interface {
	allowed(spiffeID string) error
}

// AdmissionConfig builds an Admission. Everything it depends on is here:
// nothing is set after construction.
type AdmissionConfig struct {
	Roles map[string]*Role
	// Registry refuses deregistered and unregistered IDs; nil admits every
	// ID the role policy allows (unit tests).
	Registry registrations
	// Refresh re-lists the SPIRE registry and applies the listing; nil
	// without a SPIRE watch.
	Refresh func(context.Context) error
	// Now is the clock of the refresh rate limit; nil is time.Now. The limit
	// bounds the real load on the SPIRE server, so the App leaves it on the
	// wall clock even when its lease clock is injected.
	Now    func() time.Time
	Logger *slog.Logger
}

// Admission decides whether a caller may be issued a credential for a role
// now: the role name is valid, the role exists, the role policy allows the
// caller's SPIFFE ID, and the registry does not refuse it.
type Admission struct {
	roles    map[string]*Role
	policy   identity.Authorizer
	registry registrations
	refresh  func(context.Context) error
	now      func() time.Time
	log      *slog.Logger

	refreshMu   sync.Mutex
	lastRefresh time.Time
}

// NewAdmission builds an Admission; it starts nothing.
func NewAdmission(c AdmissionConfig) *Admission {
	pats := make(map[string][]identity.Pattern, len(c.Roles))
	for name, r := range c.Roles {
		pats[name] = r.Allowed
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return &Admission{
		roles:    c.Roles,
		policy:   identity.NewRolePolicy(pats),
		registry: c.Registry,
		refresh:  c.Refresh,
		now:      c.Now,
		log:      c.Logger,
	}
}

// Admit returns the role named roleName if caller may be issued a
// credential for it now. The checks run cheapest first: the name, the
// role, the policy, then the registry (which may re-list SPIRE).
func (a *Admission) Admit(ctx context.Context, caller spiffeid.ID, roleName string) (*Role, error) {
	if roleName == "" {
		return nil, invalidArg("role is required")
	}
	if !roleNameRE.MatchString(roleName) {
		return nil, invalidArg("role is not a valid role name")
	}
	role, ok := a.roles[roleName]
	if !ok {
		return nil, identity.ErrUnknownRole
	}
	if err := a.policy(caller, roleName); err != nil {
		return nil, err
	}
	if err := a.checkRegistered(ctx, caller.String()); err != nil {
		return nil, err
	}
	return role, nil
}

// refreshEvery bounds the on-demand re-listings of SPIRE entries that
// unknown callers can trigger.
const refreshEvery = 250 * time.Millisecond

// checkRegistered refuses deregistered callers. A caller missing from the
// last SPIRE listing may have been registered since (its SVID can arrive
// before the next poll), so the listing is refreshed once, rate-limited,
// before refusing.
func (a *Admission) checkRegistered(ctx context.Context, id string) error {
	if a.registry == nil {
		return nil
	}
	err := a.registry.allowed(id)
	if !errors.Is(err, errNotRegistered) || a.refresh == nil {
		return err
	}
	a.refreshMu.Lock()
	if now := a.now(); now.Sub(a.lastRefresh) >= refreshEvery {
		a.lastRefresh = now
		if rerr := a.refresh(ctx); rerr != nil {
			a.log.Warn("registry refresh failed", "error", rerr)
		}
	}
	a.refreshMu.Unlock()
	return a.registry.allowed(id)
}
