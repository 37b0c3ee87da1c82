package pgstore

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/credbroker/credbroker/internal/pgpool"
	"github.com/credbroker/credbroker/lease"
)

// SQLSTATEs the store tells apart.
const (
	codeUndefinedTable = "42P01"
	codeInvalidSchema  = "3F000"
)

// unavailable wraps err, from the server or the connection, in
// lease.ErrStoreUnavailable: whatever the reason, the store cannot answer
// now. A table or schema that vanished under a running store is
// lease.ErrStoreMissing too (lost leases, never "no leases").
func unavailable(err error) error {
	if errors.Is(err, lease.ErrStoreUnavailable) {
		return err
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && (pgErr.Code == codeUndefinedTable || pgErr.Code == codeInvalidSchema) {
		return fmt.Errorf("%w: %w: %w", lease.ErrStoreUnavailable, lease.ErrStoreMissing, err)
	}
	return fmt.Errorf("%w: %w", lease.ErrStoreUnavailable, err)
}

// ctxErr is the error of a call whose ctx has already ended.
func ctxErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", lease.ErrStoreUnavailable, err)
	}
	return nil
}

// sentinels are the errors a scrubbed error still matches.
var sentinels = []error{
	lease.ErrStoreUnavailable, lease.ErrStoreCorrupt, lease.ErrStoreMissing, lease.ErrStoreFenced, lease.ErrNotFound,
	lease.ErrInvalid, lease.ErrConflict, lease.ErrExists, lease.ErrRequestExists, ErrSchemaOlder, ErrSchemaNewer,
	context.Canceled, context.DeadlineExceeded,
}

// scrubbed is an error whose text had the password in it: the text with it
// removed, matching the sentinels the original matched, and nothing else
// (the original is not reachable with errors.As).
type scrubbed struct {
	msg string
	is  []error
}

func (e *scrubbed) Error() string   { return e.msg }
func (e *scrubbed) Unwrap() []error { return e.is }

// redactErr returns err, or a scrubbed copy of it if its text contains
// secret.
func redactErr(err error, secret string) error {
	if err == nil || secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	e := &scrubbed{msg: pgpool.Redact(err.Error(), secret)}
	for _, s := range sentinels {
		if errors.Is(err, s) {
			e.is = append(e.is, s)
		}
	}
	return e
}
