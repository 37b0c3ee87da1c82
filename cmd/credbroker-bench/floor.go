package main

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/credbroker/credbroker/plugins"
)

// floor sends, over pgx and without any broker, exactly the statements the
// postgres plugin sends for one credential (plugins/postgres/create.go,
// pipeline.go) and for one revocation (delete.go): same rendering, quoting,
// SCRAM verifier, VALID UNTIL format, marker, advisory lock, queries and
// transaction boundaries. The verifier is computed per credential on the
// request path, where the plugin has computed its own ahead since
// docs/performance.md §8. Only the plugin's retry loop, error
// classification and username check are left out. floor_test.go checks the
// statement text against the plugin's, from the server log.
type floor struct {
	pool   *pgxpool.Pool
	marker string
	// creating counts creations in progress: with others in flight the
	// plugin sends the whole transaction in one query (pipeline.go).
	creating atomic.Int32
}

// Replicated from plugins/postgres (unexported there).
var (
	floorGrantLockKey = func() int64 {
		h := fnv.New64a()
		h.Write([]byte("credbroker/object-acl"))
		return int64(h.Sum64())
	}()
	floorObjectGrantRE = regexp.MustCompile(`(?is)\b(?:GRANT|REVOKE)\b[^;]*?\bON\b`)
)

func floorIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

func floorLiteral(s string) string {
	q := "'" + strings.ReplaceAll(s, "'", "''") + "'"
	if strings.Contains(s, `\`) {
		q = " E" + strings.ReplaceAll(q, `\`, `\\`)
	}
	return q
}

func floorValidUntil(t time.Time) string {
	return floorLiteral(t.UTC().Format("2006-01-02 15:04:05.999999-07"))
}

// floorVerifier is plugins/postgres.newScramVerifier: SCRAM-SHA-256, 4096
// iterations, 16-byte random salt.
func floorVerifier(password string) (string, error) {
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, 4096, sha256.Size)
	if err != nil {
		return "", err
	}
	mac := func(key []byte, msg string) []byte {
		m := hmac.New(sha256.New, key)
		m.Write([]byte(msg))
		return m.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := mac(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", 4096, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

// create is NewUser: a fresh password and verifier, the rendered template,
// then ALTER ROLE … VALID UNTIL and COMMENT ON ROLE, in one transaction,
// with the advisory lock before the first object grant, sent as the plugin
// sends them (plugins/postgres/pipeline.go): alone, "BEGIN; <template>;
// ALTER; COMMENT", then "COMMIT"; with an object grant at template
// statement k, "BEGIN; <before k>", then "<lock>; <from k>; ALTER; COMMENT;
// COMMIT"; with other creations in flight, all of it in one query.
func (f *floor) create(ctx context.Context, name string, exp time.Time, template []string) error {
	password, err := plugins.GeneratePassword()
	if err != nil {
		return err
	}
	verifier, err := floorVerifier(password)
	if err != nil {
		return err
	}
	stmts, err := f.statements(name, verifier, exp, template)
	if err != nil {
		return err
	}
	head, tail := stmts, []string(nil)
	for i, s := range template {
		if floorObjectGrantRE.MatchString(s) {
			head, tail = stmts[:i], stmts[i:]
			break
		}
	}
	busy := f.creating.Add(1) > 1
	defer f.creating.Add(-1)
	conn, err := f.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer conn.Release()
	pg := conn.Conn().PgConn()
	// Unwatched, as the plugin runs them (pipeline.go); a cancelled bench
	// waits for the statement in flight.
	qctx := context.WithoutCancel(ctx)
	q := func(stmts ...string) error {
		_, err := pg.Exec(qctx, strings.Join(stmts, ";\n")).ReadAll()
		return err
	}
	first := append([]string{"BEGIN"}, head...)
	var second []string
	if len(tail) > 0 {
		second = []string{fmt.Sprintf("SELECT pg_advisory_xact_lock(%d)", floorGrantLockKey)}
		second = append(second, tail...)
	}
	second = append(second, "COMMIT")
	if !busy && len(head) > 0 {
		if err = q(first...); err == nil {
			err = q(second...)
		}
	} else {
		err = q(append(first, second...)...)
	}
	if err != nil && pg.TxStatus() != 'I' && !pg.IsClosed() {
		_ = pg.Exec(context.WithoutCancel(ctx), "ROLLBACK").Close()
	}
	return err
}

// createSerial is create as the plugin sent it before the creation was
// pipelined: BEGIN, each statement, COMMIT, one round trip each. Only the
// breakdown diagnostic uses it, to show what pipelining saved.
func (f *floor) createSerial(ctx context.Context, name string, exp time.Time, template []string) error {
	verifier, err := floorVerifier(name) // any password: the cost is what counts
	if err != nil {
		return err
	}
	stmts, err := f.statements(name, verifier, exp, template)
	if err != nil {
		return err
	}
	return f.inTx(ctx, func(tx pgx.Tx) error {
		locked := false
		for i, s := range stmts {
			if i < len(template) && !locked && floorObjectGrantRE.MatchString(template[i]) {
				if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", floorGrantLockKey); err != nil {
					return err
				}
				locked = true
			}
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		return nil
	})
}

// drop is DeleteUser's fixed sequence for one user: marker check, NOLOGIN,
// end sessions (polled until none), then one transaction with GRANT … TO
// CURRENT_USER, REASSIGN OWNED, DROP OWNED and DROP ROLE (the advisory lock first when the user
// holds object privileges).
func (f *floor) drop(ctx context.Context, name string, revoke []string) error {
	var marker *string
	err := f.pool.QueryRow(ctx,
		"SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = $1", name).Scan(&marker)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil
	}
	if err != nil {
		return err
	}
	if marker == nil || *marker != f.marker {
		return fmt.Errorf("role %s lacks the marker", name)
	}
	ident := floorIdent(name)
	if _, err := f.pool.Exec(ctx, "ALTER ROLE "+ident+" NOLOGIN"); err != nil {
		return err
	}
	err = plugins.UntilNone(ctx, func(ctx context.Context) (int, error) {
		var seen int
		err := f.pool.QueryRow(ctx,
			"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = ANY($1)", []string{name}).Scan(&seen)
		return seen, err
	})
	if err != nil {
		return err
	}
	values := map[string]string{plugins.PlaceholderName: ident}
	stmts := make([]string, 0, len(revoke)+4)
	for _, s := range revoke {
		r, err := plugins.Render(s, values)
		if err != nil {
			return err
		}
		stmts = append(stmts, r)
	}
	stmts = append(stmts,
		"GRANT "+ident+" TO CURRENT_USER",
		"REASSIGN OWNED BY "+ident+" TO CURRENT_USER",
		"DROP OWNED BY "+ident,
		"DROP ROLE IF EXISTS "+ident,
	)
	return f.inTx(ctx, func(tx pgx.Tx) error {
		need := false
		for _, s := range revoke {
			need = need || floorObjectGrantRE.MatchString(s)
		}
		if !need {
			if err := tx.QueryRow(ctx, `
				SELECT EXISTS (SELECT 1 FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
				WHERE d.refclassid = 'pg_authid'::regclass AND d.deptype = 'a' AND r.rolname = $1)`,
				name).Scan(&need); err != nil {
				return err
			}
		}
		if need {
			if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", floorGrantLockKey); err != nil {
				return err
			}
		}
		for _, s := range stmts {
			if _, err := tx.Exec(ctx, s); err != nil {
				return err
			}
		}
		return nil
	})
}

// inTx is the plugin's txOnce (no retries: the floor reports an error
// instead).
func (f *floor) inTx(ctx context.Context, fn func(pgx.Tx) error) (err error) {
	tx, err := f.pool.Begin(ctx)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// bare is what a Vault-style plugin sends for one credential of the group
// template: one CREATE ROLE … LOGIN PASSWORD '<plaintext>' VALID UNTIL …
// IN ROLE <group>, autocommitted, the server deriving the verifier. It is
// the lowest cost of a credential on this server, the reference the broker
// is held to besides its own statements (floor). The plaintext password
// travels in the statement: this only ever runs against the bench's
// throwaway server, on connections that log no statement (barePool), and
// no error quotes it.
func (f *floor) bare(ctx context.Context, name string, exp time.Time) error {
	password, err := plugins.GeneratePassword()
	if err != nil {
		return err
	}
	// Unwatched like the plugin's queries (pipeline.go), so that the bare
	// floor pays no more client overhead than the plugin.
	_, err = f.pool.Exec(context.WithoutCancel(ctx), "CREATE ROLE "+floorIdent(name)+" LOGIN PASSWORD "+floorLiteral(password)+
		" VALID UNTIL "+floorValidUntil(exp)+" IN ROLE "+benchGroup)
	if err != nil {
		return errors.New(strings.ReplaceAll(err.Error(), password, "[redacted]"))
	}
	return nil
}

// statements renders the template for one user and adds the plugin's own
// expiry and marker statements, as plugins/postgres sends them.
func (f *floor) statements(name, verifier string, exp time.Time, template []string) ([]string, error) {
	ident := floorIdent(name)
	until := floorValidUntil(exp)
	values := map[string]string{
		plugins.PlaceholderName:       ident,
		plugins.PlaceholderPassword:   floorLiteral(verifier),
		plugins.PlaceholderExpiration: until,
	}
	stmts := make([]string, 0, len(template)+2)
	for _, s := range template {
		r, err := plugins.Render(s, values)
		if err != nil {
			return nil, err
		}
		stmts = append(stmts, r)
	}
	return append(stmts,
		"ALTER ROLE "+ident+" VALID UNTIL "+until,
		"COMMENT ON ROLE "+ident+" IS "+floorLiteral(f.marker),
	), nil
}
