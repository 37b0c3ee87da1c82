package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/credbroker/credbroker/audit"
	"github.com/credbroker/credbroker/lease"
)

// recordWriter is the part of audit.Writer the broker needs.
type recordWriter interface {
	Write(ctx context.Context, r audit.Record) error
	// WriteAll writes records next to each other in one group commit.
	WriteAll(ctx context.Context, rs []audit.Record) error
}

// auditor writes the broker's audit records (docs/audit.md). The zero
// value, and a nil *auditor, write nothing: the audit log is off.
//
// Only the issue record is fail-closed (issueRecorded): a credential
// nobody can account for must not leave the broker. Every other record
// describes something that has already happened (a user dropped, a
// deregistration stored) and cannot be undone by refusing to answer, so a
// failed write is logged and the operation's result stands.
type auditor struct {
	w          recordWriter // nil: off
	failClosed bool
	log        *slog.Logger
}

// openAuditor opens the audit log the config names; nil when it is off.
func openAuditor(ctx context.Context, c AuditConfig, now func() time.Time, log *slog.Logger) (*auditor, *audit.Writer, error) {
	if !c.Enabled() {
		return nil, nil, nil
	}
	opts := audit.Options{Path: c.File, MaxSize: c.MaxSize.Bytes, Now: now, SyncEvery: c.SyncInterval.Duration}
	if c.Stdout {
		opts.Stdout = os.Stdout
	}
	w, err := audit.Open(ctx, opts)
	if err != nil {
		return nil, nil, fmt.Errorf("audit: %w", err)
	}
	return &auditor{w: w, failClosed: c.failClosed(), log: log}, w, nil
}

// write writes r; a failure is logged (the record's fields carry no
// secret) and otherwise ignored: the operation it records stands.
func (a *auditor) write(ctx context.Context, r audit.Record) {
	if a == nil || a.w == nil {
		return
	}
	if err := a.put(ctx, r); err != nil {
		a.log.Error("audit: record not written", "event", string(r.Event), "lease_id", r.LeaseID, "error", err.Error())
	}
}

// put writes r, its reason cut to what the writer accepts.
func (a *auditor) put(ctx context.Context, r audit.Record) error {
	// A record describes what happened even if the caller has gone.
	return a.w.Write(context.WithoutCancel(ctx), finished(r))
}

// finished is r as the broker writes it: its reason clipped, its result
// "ok" unless set.
func finished(r audit.Record) audit.Record {
	r.Reason = clip(r.Reason)
	if r.Result == "" {
		r.Result = audit.ResultOK
	}
	return r
}

// issueRecorded writes the issue record of l. With fail_closed, an error
// (wrapping audit.ErrUnavailable) means the caller must not hand out the
// credential; without, the failure is logged and nil returned.
func (a *auditor) issueRecorded(ctx context.Context, l lease.Lease) error {
	return a.issueRecordedWith(ctx, l, "")
}

// replayRecorded is issueRecorded for a credential given again to a retry
// with the same request id (requests.go): one more issue record for the
// lease, with a reason saying so.
func (a *auditor) replayRecorded(ctx context.Context, l lease.Lease) error {
	return a.issueRecordedWith(ctx, l, replayReason)
}

// replayReason is the reason of the issue record of a replayed credential.
const replayReason = "replayed to a retry with the same request_id"

func (a *auditor) issueRecordedWith(ctx context.Context, l lease.Lease, reason string) error {
	if a == nil || a.w == nil {
		return nil
	}
	r := leaseRecord(audit.EventIssue, l)
	r.Caller, r.Reason = l.Owner, reason
	err := a.put(ctx, r)
	if err == nil {
		return nil
	}
	if !a.failClosed {
		a.log.Error("audit: issue record not written; credential returned (audit.fail_closed is off)", "lease_id", l.ID, "error", err.Error())
		return nil
	}
	if !errors.Is(err, audit.ErrUnavailable) {
		err = fmt.Errorf("%w: %w", audit.ErrUnavailable, err)
	}
	return fmt.Errorf("issue %s: %w", l.ID, err)
}

// enabled reports whether records are written at all.
func (a *auditor) enabled() bool { return a != nil && a.w != nil }

// issueUndone records that the issuance of l, whose issue record was
// written, failed afterwards with err (its lease could not be made
// ACTIVE): the lease manager dropped its user, or left the drop to its
// retries.
func (a *auditor) issueUndone(ctx context.Context, l lease.Lease, err error) {
	r := leaseRecord(audit.EventRevoke, l)
	r.Caller, r.By, r.Result = l.Owner, audit.ByIssuance, resultOf(err)
	r.Reason = "the issuance failed after the user was created; the credential was not returned"
	a.write(context.WithoutCancel(ctx), r)
}

// revoked writes one revoke record per lease, by whoever ended them.
// A bulk revocation's records are written together, in one group commit
// (one fdatasync for a thousand leases, not a thousand).
func (a *auditor) revoked(ctx context.Context, caller string, by audit.By, ls []lease.Lease) {
	if a == nil || a.w == nil || len(ls) == 0 {
		return
	}
	rs := make([]audit.Record, 0, len(ls))
	for _, l := range ls {
		r := leaseRecord(audit.EventRevoke, l)
		r.Caller, r.By = caller, by
		if caller != l.Owner {
			r.Reason = "owner " + l.Owner
		}
		rs = append(rs, finished(r))
	}
	// The records describe what happened even if the caller has gone.
	if err := a.w.WriteAll(context.WithoutCancel(ctx), rs); err != nil {
		a.log.Error("audit: records not written", "event", string(audit.EventRevoke), "by", string(by), "leases", len(rs), "error", err.Error())
	}
}

// ended is lease.Config.OnEnd: the expiry record of a lease the expiry
// loop ended. Other endings are recorded where their caller is known.
func (a *auditor) ended(l lease.Lease, expired bool) {
	if !expired {
		return
	}
	r := leaseRecord(audit.EventExpire, l)
	r.By = audit.ByExpiry
	r.Reason = "owner " + l.Owner + ", expired at " + l.ExpireTime.UTC().Format(time.RFC3339)
	a.write(context.Background(), r)
}

// leaseRecord is a record of event about l, without caller.
func leaseRecord(event audit.Event, l lease.Lease) audit.Record {
	return audit.Record{
		Event:    event,
		Role:     l.Role,
		Database: l.Database,
		LeaseID:  l.ID,
		Username: l.Username,
		Result:   audit.ResultOK,
	}
}

// resultOf is the audit result of an operation's error: "ok", or the name
// of the gRPC code it is answered with.
func resultOf(err error) string {
	if err == nil {
		return audit.ResultOK
	}
	return codeName(status.Code(toStatus(err)))
}

// codeName is the canonical name of c, as in the protobuf enum:
// PERMISSION_DENIED, UNAUTHENTICATED, OK.
func codeName(c codes.Code) string {
	s := c.String() // "PermissionDenied"
	var b strings.Builder
	for i, r := range s {
		if i > 0 && unicode.IsUpper(r) && unicode.IsLower(rune(s[i-1])) {
			b.WriteByte('_')
		}
		b.WriteRune(unicode.ToUpper(r))
	}
	return b.String()
}

// maxReason is what the writer accepts in one field.
const maxReason = 1024

// clip cuts s to maxReason bytes on a rune boundary.
func clip(s string) string {
	if len(s) <= maxReason {
		return s
	}
	s = s[:maxReason-len("…")]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + "…"
}
