package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/plugins"
)

// Errors of admin password rotation.
var (
	errNoDatabase       = errors.New("no such database")
	errRotateNeedsFile  = errors.New("its admin password comes from password_env; rotation needs password_file")
	errRotationPending  = errors.New("a previous rotation's outcome is unknown")
	errRotateUnfinished = errors.New("the new password is set on the server but could not be moved over password_file")
)

// sideSuffix names, after password_file, the file holding a password that
// is being set (rotation, below).
const sideSuffix = ".next"

// rotateTimeout bounds the ALTER of a rotation, which runs even when the
// caller has gone: an ALTER cut off leaves its outcome unknown.
const rotateTimeout = 30 * time.Second

// adminRotation rotates the broker's admin password on one database
// (Vault's rotate-root): a new random password, set on the server and
// written to password_file, known to nobody else.
//
// Crash safety comes from the order, with <password_file>.next as a side
// file:
//
//  1. the new password is written to the side file (temp file, fsync,
//     rename, fsync of the directory; mode 0600);
//  2. the server is told (plugins.SetAdminPassword, a verifier or hash, never
//     the plaintext) and the pool moves to it;
//  3. the side file is renamed over password_file and the directory synced.
//
// A crash before 2 leaves password_file working (the side file's password
// was never set); between 2 and 3 the side file's. At start,
// recoverAdminPassword tries the side file's password: if the server
// takes it, it is renamed over password_file; if the server refuses it,
// the side file is removed; if the server cannot be reached, both stay
// until the next start. A rotation refuses to start while a side file is
// there.
type adminRotation struct {
	name  string
	file  string // password_file; "" with password_env
	every time.Duration
	db    plugins.Database
	audit *auditor
	log   *slog.Logger
	now   func() time.Time

	mu sync.Mutex // one rotation at a time
}

func newAdminRotation(d *Database, dc DatabaseConfig, aud *auditor, log *slog.Logger, now func() time.Time) *adminRotation {
	return &adminRotation{name: d.Name, file: dc.PasswordFile, every: dc.RotateAdminEvery.Duration, db: d.DB, audit: aud, log: log, now: clock(now)}
}

// rotate sets a new admin password and writes it to password_file. by is
// the admin's SPIFFE ID, or "" for the schedule. Each attempt is audited.
func (r *adminRotation) rotate(ctx context.Context, by string) (time.Time, error) {
	t, err := r.rotateOnce(ctx)
	rec := audit.Record{Event: audit.EventRotateAdmin, Caller: by, Database: r.name, Result: resultOf(err)}
	switch {
	case err == nil:
		rec.Reason = "admin password rotated, written to password_file"
		r.log.Info("admin password rotated", "database", r.name, "by", by)
	default:
		rec.Reason = "admin password rotation failed"
		r.log.Warn("admin password rotation failed", "database", r.name, "by", by, "error", err.Error())
	}
	r.audit.write(ctx, rec)
	return t, err
}

func (r *adminRotation) rotateOnce(ctx context.Context) (time.Time, error) {
	if r.file == "" {
		return time.Time{}, errRotateNeedsFile
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	side := r.file + sideSuffix
	if _, err := os.Stat(side); err == nil {
		return time.Time{}, fmt.Errorf("%w: %s exists (it is resolved at the next start)", errRotationPending, filepath.Base(side))
	}
	pw, err := plugins.GeneratePassword()
	if err != nil {
		return time.Time{}, err
	}
	if err := writeFileAtomic(side, pw+"\n"); err != nil {
		return time.Time{}, fmt.Errorf("rotate admin password: write %s: %w", filepath.Base(side), err)
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rotateTimeout)
	defer cancel()
	if err := plugins.SetAdminPassword(actx, r.db, pw); err != nil {
		if plugins.KindOf(err).Unavailable() {
			// The server may have taken it: the side file stays for the
			// next start to resolve (recoverAdminPassword).
			return time.Time{}, fmt.Errorf("rotate admin password (outcome unknown, %s kept): %w", filepath.Base(side), err)
		}
		// The server answered no: the old password stands.
		_ = os.Remove(side) // a leftover is resolved at the next start
		return time.Time{}, fmt.Errorf("rotate admin password: %w", err)
	}
	if err := renameSynced(side, r.file); err != nil {
		return time.Time{}, fmt.Errorf("%w (%s holds it; resolved at the next start): %w", errRotateUnfinished, filepath.Base(side), err)
	}
	return r.now(), nil
}

// Run rotates on the schedule: every interval after password_file was last
// written (its modification time, which a rotation sets), so restarts do
// not postpone it. A failed rotation is retried after a minute.
func (r *adminRotation) Run(ctx context.Context) error {
	for {
		wait := time.Minute
		if fi, err := os.Stat(r.file); err == nil {
			wait = time.Until(fi.ModTime().Add(r.every))
		}
		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil
			case <-t.C:
			}
		}
		if _, err := r.rotate(ctx, ""); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			select {
			case <-ctx.Done():
				return nil
			case <-time.After(time.Minute):
			}
		}
	}
}

// recoverAdminPassword resolves a side file left by a rotation that did not
// finish (see adminRotation), before the database is opened: the side
// file's password is tried on the server; if it logs in it becomes
// password_file, if the server refuses it the side file is removed, and if
// the server cannot be reached both stay (the broker starts with
// password_file) until the next start.
func recoverAdminPassword(ctx context.Context, cfg *Config, name string, dc DatabaseConfig, log *slog.Logger) error {
	if dc.PasswordFile == "" {
		return nil
	}
	side := dc.PasswordFile + sideSuffix
	b, err := os.ReadFile(side)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("databases.%s: read %s: %w", name, filepath.Base(side), err)
	}
	pw := strings.TrimRight(string(b), "\r\n")
	if pw == "" {
		log.Warn("removing an empty admin password side file", "database", name, "file", side)
		return os.Remove(side)
	}
	d, err := openDatabaseWith(ctx, cfg.catalog, name, dc, "credbroker:"+cfg.InstanceID, pw)
	if err != nil {
		return err
	}
	pctx, cancel := context.WithTimeout(ctx, dc.ConnectTimeout.Duration+time.Second)
	err = d.DB.Ping(pctx)
	cancel()
	d.DB.Close()
	switch k := plugins.KindOf(err); {
	case err == nil:
		if err := renameSynced(side, dc.PasswordFile); err != nil {
			return fmt.Errorf("databases.%s: move %s over password_file: %w", name, filepath.Base(side), err)
		}
		log.Info("admin password of an unfinished rotation recovered into password_file", "database", name)
	case k.AdminLogin():
		if err := os.Remove(side); err != nil {
			return fmt.Errorf("databases.%s: %w", name, err)
		}
		log.Info("admin password of an unfinished rotation was never set; side file removed", "database", name)
	default:
		log.Warn("cannot tell whether an unfinished admin password rotation took effect; starting with password_file, the side file is kept for the next start",
			"database", name, "file", side, "error", err.Error())
	}
	return nil
}

// writeFileAtomic writes data to path so that a crash leaves either the old
// file or the new one, whole: a temporary file in the same directory
// (mode 0600), fsync, rename over path, fsync of the directory.
func writeFileAtomic(path, data string) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = f.Close()
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(0o600); err != nil {
		return err
	}
	if _, err := f.WriteString(data); err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return renameSynced(f.Name(), path)
}

// renameSynced renames from over to and syncs the directory, so the rename
// survives a crash.
func renameSynced(from, to string) error {
	if err := os.Rename(from, to); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(to))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
