package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"time"
	"unicode/utf8"
)

// Event is what a record reports. The set is closed: Write refuses any
// other value, so a reader can rely on it.
type Event string

// The events of the broker (issue 12).
const (
	EventIssue       Event = "issue"
	EventRenew       Event = "renew"
	EventRevoke      Event = "revoke"
	EventExpire      Event = "expire"
	EventRegister    Event = "register"
	EventDeregister  Event = "deregister"
	EventBulkRevoke  Event = "bulk_revoke"
	EventOrphanDrop  Event = "orphan_drop"
	EventRefused     Event = "refused"
	EventConfigLoad  Event = "config_load"
	EventRotateAdmin Event = "rotate_admin"
)

var events = map[Event]bool{
	EventIssue: true, EventRenew: true, EventRevoke: true, EventExpire: true,
	EventRegister: true, EventDeregister: true, EventBulkRevoke: true,
	EventOrphanDrop: true, EventRefused: true, EventConfigLoad: true,
	EventRotateAdmin: true,
}

// By says on whose initiative a lease ended or changed. Empty when it does
// not apply.
type By string

// The initiators of a revocation.
const (
	ByOwner          By = "owner"
	ByAdmin          By = "admin"
	ByExpiry         By = "expiry"
	ByDeregistration By = "deregistration"
	BySPIRE          By = "spire"
	// ByIssuance: the broker undid an issuance that failed after its user
	// was created and its issue record written (the lease could not be
	// made ACTIVE).
	ByIssuance By = "issuance"
)

var bys = map[By]bool{"": true, ByOwner: true, ByAdmin: true, ByExpiry: true, ByDeregistration: true, BySPIRE: true, ByIssuance: true}

// ResultOK is the Result of an event that succeeded; any other Result is
// the name of an error code (a gRPC code name such as PERMISSION_DENIED).
const ResultOK = "ok"

// Record is one line of the audit log. Every field is a plain string: the
// package knows nothing of SPIFFE IDs, roles or leases beyond their names,
// and there is deliberately no free-form map, so nothing can carry a
// password or a DSN into the log by accident.
//
// The JSON field names are part of the file format (docs/audit.md):
//
//	seq       uint64  position in the chain, 1, 2, … (set by the Writer)
//	time      string  RFC 3339 with nanoseconds, UTC (set by the Writer when zero)
//	event     string  one of the Event constants
//	caller    string  the caller's SPIFFE ID, if any
//	role      string  the role asked for
//	database  string  the database of the role
//	lease_id  string  the lease
//	username  string  the database user of the lease (never its password)
//	result    string  "ok" or an error code name ([A-Za-z0-9_], at most 64 bytes)
//	reason    string  a short explanation, scrubbed by the caller; the Writer
//	                  replaces one that LooksSecret by RedactedReason
//	by        string  one of the By constants, for revocations
//	prev      string  hex SHA-256 of the previous record's line (set by the Writer)
//
// Empty optional fields are left out of the line.
type Record struct {
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Event    Event     `json:"event"`
	Caller   string    `json:"caller,omitempty"`
	Role     string    `json:"role,omitempty"`
	Database string    `json:"database,omitempty"`
	LeaseID  string    `json:"lease_id,omitempty"`
	Username string    `json:"username,omitempty"`
	Result   string    `json:"result"`
	Reason   string    `json:"reason,omitempty"`
	By       By        `json:"by,omitempty"`
	Prev     string    `json:"prev"`
}

// Genesis is the prev of the first record of a chain: 64 zeros.
const Genesis = "0000000000000000000000000000000000000000000000000000000000000000"

// maxField bounds every string field, so that one record stays one short
// line and a runaway value cannot fill the disk.
const maxField = 1024

// RedactedReason replaces a Reason that looks as if it carries a secret.
const RedactedReason = "[redacted by audit: the reason looked like it carried a password or a DSN]"

// check returns an error if r cannot be written: an unknown event or by, a
// malformed result, a field that is too long or not UTF-8.
func (r *Record) check() error {
	if !events[r.Event] {
		return fmt.Errorf("%w: unknown event %q", ErrInvalidRecord, r.Event)
	}
	if !bys[r.By] {
		return fmt.Errorf("%w: unknown by %q", ErrInvalidRecord, r.By)
	}
	if r.Result == "" || len(r.Result) > 64 || strings.IndexFunc(r.Result, notCodeRune) >= 0 {
		return fmt.Errorf("%w: result %q is neither %q nor an error code name", ErrInvalidRecord, r.Result, ResultOK)
	}
	for name, v := range map[string]string{"caller": r.Caller, "role": r.Role, "database": r.Database,
		"lease_id": r.LeaseID, "username": r.Username, "reason": r.Reason} {
		if len(v) > maxField {
			return fmt.Errorf("%w: %s is longer than %d bytes", ErrInvalidRecord, name, maxField)
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("%w: %s is not UTF-8", ErrInvalidRecord, name)
		}
	}
	return nil
}

func notCodeRune(c rune) bool {
	return !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_')
}

// LooksSecret reports whether s looks as if it carries a credential: a
// key=value pair whose key names a password, or a URL with a password in
// its user info (scheme://user:pass@host). The broker scrubs reasons
// before it writes them (plugins.Sanitized); the Writer runs this check
// as a second line of defence and replaces such a reason by
// RedactedReason rather than refusing the record, so that an unlucky
// error text cannot turn into a refused issuance.
func LooksSecret(s string) bool {
	l := strings.ToLower(s)
	for _, key := range []string{"password", "passwd", "pwd", "secret", "token"} {
		for i := strings.Index(l, key); i >= 0; {
			rest := strings.TrimLeft(l[i+len(key):], " \t\"'")
			if strings.HasPrefix(rest, "=") || strings.HasPrefix(rest, ":") {
				return true
			}
			j := strings.Index(l[i+len(key):], key)
			if j < 0 {
				break
			}
			i += len(key) + j
		}
	}
	for i := strings.Index(l, "://"); i >= 0; {
		auth := l[i+3:]
		if k := strings.IndexAny(auth, "/ \t?#"); k >= 0 {
			auth = auth[:k]
		}
		if at := strings.LastIndex(auth, "@"); at >= 0 && strings.Contains(auth[:at], ":") {
			return true
		}
		j := strings.Index(l[i+3:], "://")
		if j < 0 {
			break
		}
		i += 3 + j
	}
	return false
}

// lineHash is the chain hash of one line: hex SHA-256 of its bytes without
// the terminating newline.
func lineHash(line []byte) string {
	sum := sha256.Sum256(line)
	return hex.EncodeToString(sum[:])
}
