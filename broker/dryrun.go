package broker

import (
	"context"

	"github.com/credbroker/credbroker/plugins"
)

// DryRunResult is the outcome of one role's dry run: Err nil is OK, else
// the database's message (already free of secrets).
type DryRunResult struct {
	Role     string
	Database string
	Err      error
}

// DryRun runs every role's creation and revocation statements against its
// real database, leaving nothing behind (plugins.DryRunner): what
// `credbroker check-config --dry-run` reports. A database that cannot be
// reached fails each of its roles with that error. The results are in role
// order.
func DryRun(ctx context.Context, cfg *Config) []DryRunResult {
	dbs := map[string]*Database{}
	openErr := map[string]error{}
	defer func() {
		for _, d := range dbs {
			d.DB.Close()
		}
	}()
	var out []DryRunResult
	for _, role := range sortedKeys(cfg.Roles) {
		rc := cfg.Roles[role]
		name := rc.Database
		if _, done := dbs[name]; !done && openErr[name] == nil {
			d, err := openDatabase(ctx, cfg.catalog, name, cfg.Databases[name], "credbroker:"+cfg.InstanceID)
			if err == nil {
				if err = d.DB.Ping(ctx); err != nil {
					d.DB.Close()
				}
			}
			if err != nil {
				openErr[name] = err
			} else {
				dbs[name] = d
			}
		}
		r := DryRunResult{Role: role, Database: name, Err: openErr[name]}
		if r.Err == nil {
			r.Err = plugins.DryRun(ctx, dbs[name].DB, plugins.DryRunRequest{
				Role:       role,
				Creation:   rc.CreationStatements,
				Revocation: rc.RevocationStatements,
			})
		}
		out = append(out, r)
	}
	return out
}
