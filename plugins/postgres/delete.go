package postgres

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/plugins"
)

// DeleteUser implements plugins.Database; see the package comment for the
// sequence.
func (db *DB) DeleteUser(ctx context.Context, req plugins.DeleteUserRequest) error {
	name := req.Username
	if err := db.checkUsername(name); err != nil {
		return err
	}
	op := "delete " + name
	revoke, err := plugins.RenderRevocation(req.Statements, quoteIdent(name))
	if err != nil {
		return fmt.Errorf("postgres: %s: %w", op, err)
	}
	return db.drop(ctx, &dropCall{name: name, revoke: revoke, aclLock: needsACLLock(req.Statements)})
}

// deleteOne runs the revocation sequence for one user whose name and
// revocation statements are already checked and rendered.
func (db *DB) deleteOne(ctx context.Context, c *dropCall) error {
	name, revoke := c.name, c.revoke
	op := "delete " + name
	var marker *string
	err := db.pool.QueryRow(ctx,
		"SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", name).Scan(&marker)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return wrap(ctx, op, err)
	}
	// A role with a matching name but no marker was not made by this broker
	// (or its marker was removed by hand): leave it alone.
	if marker == nil || *marker != db.marker {
		return fmt.Errorf("postgres: %s: role exists but does not carry the marker %q; not dropping it", op, db.marker)
	}

	ident := quoteIdent(name)
	if _, err := db.pool.Exec(ctx, "ALTER ROLE "+ident+" NOLOGIN"); err != nil {
		if pgErrCode(err) == codeUndefinedObject {
			return nil // dropped concurrently
		}
		return wrap(ctx, op+": nologin", err)
	}
	if err := db.endSessions(ctx, name); err != nil {
		return wrap(ctx, op+": end sessions", err)
	}

	stmts := append(slices.Clip(revoke),
		// REASSIGN/DROP OWNED need the privileges of the role; an admin
		// that is not a superuser takes them for the rest of its life.
		"GRANT "+ident+" TO CURRENT_USER",
		"REASSIGN OWNED BY "+ident+" TO CURRENT_USER",
		"DROP OWNED BY "+ident,
		"DROP ROLE IF EXISTS "+ident,
	)
	_, err = db.inTx(ctx, func(tx pgx.Tx) error {
		// DROP OWNED revokes the user's object privileges (pg_shdepend
		// entries of type 'a'), which races with concurrent GRANTs on the
		// same objects exactly like a GRANT would.
		need := c.aclLock
		if !need {
			if err := tx.QueryRow(ctx, `
				SELECT EXISTS (SELECT 1 FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
				WHERE d.refclassid = 'pg_authid'::regclass AND d.deptype = 'a' AND r.rolname = $1)`,
				name).Scan(&need); err != nil {
				return err
			}
		}
		if need {
			lock := aclLock{tx: tx}
			if err := lock.take(ctx); err != nil {
				return err
			}
		}
		for i, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				if i < len(revoke) {
					return statementFailure("revocation", i, len(revoke), err, "")
				}
				return err
			}
		}
		return nil
	})
	if err != nil {
		return wrap(ctx, op, err)
	}
	return nil
}

// endSessions is endSessionsOf for one user.
func (db *DB) endSessions(ctx context.Context, name string) error {
	return db.endSessionsOf(ctx, []string{name})
}
