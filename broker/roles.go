package broker

import (
	"time"

	"github.com/credbroker/credbroker/identity"
)

// Role is a resolved role template.
type Role struct {
	Name                 string
	Database             *Database
	DefaultTTL, MaxTTL   time.Duration
	Allowed              []identity.Pattern
	CreationStatements   []string
	RevocationStatements []string
	Quota                Quota
}

// resolveRoles resolves the configured roles against the opened databases
// (the config was validated: every database and pattern exists and parses).
func resolveRoles(cfg map[string]RoleConfig, dbs map[string]*Database) map[string]*Role {
	roles := make(map[string]*Role, len(cfg))
	for name, rc := range cfg {
		r := &Role{
			Name:                 name,
			Database:             dbs[rc.Database],
			DefaultTTL:           rc.DefaultTTL.Duration,
			MaxTTL:               rc.MaxTTL.Duration,
			CreationStatements:   rc.CreationStatements,
			RevocationStatements: rc.RevocationStatements,
			Quota:                rc.Quota,
		}
		for _, p := range rc.AllowedSPIFFEIDs {
			r.Allowed = append(r.Allowed, identity.MustParsePattern(p))
		}
		roles[name] = r
	}
	return roles
}
