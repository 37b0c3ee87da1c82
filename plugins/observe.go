package plugins

import (
	"context"
	"time"
)

// Operation names a Database call that talks to the server, as Observed
// reports it (the metrics label).
type Operation string

// The operations Observed reports.
const (
	OpNewUser    Operation = "new_user"
	OpUpdateUser Operation = "update_user"
	OpDeleteUser Operation = "delete_user"
	OpListUsers  Operation = "list_users"
	OpPing       Operation = "ping"
)

// Observer is told of every call Observed sees: which, how long it took and
// its error (nil on success). It must be quick and safe for concurrent use.
type Observer func(op Operation, took time.Duration, err error)

// Observed wraps a Database so that observe sees every call that talks to
// the server (the broker's metrics; model: Vault dbplugin's
// databaseMetricsMiddleware). GenerateUsername (local), Capabilities and
// Close are passed through unobserved.
func Observed(db Database, observe Observer) Database {
	return observed{db: db, observe: observe, now: time.Now}
}

// observed forwards each method explicitly, never by embedding: a method
// added to Database does not compile until it is decided here.
type observed struct {
	db      Database
	observe Observer
	now     func() time.Time
}

var _ Database = observed{}

func (o observed) call(op Operation, fn func() error) error {
	start := o.now()
	err := fn()
	o.observe(op, o.now().Sub(start), err)
	return err
}

func (o observed) GenerateUsername(role string) (string, error) { return o.db.GenerateUsername(role) }

func (o observed) NewUser(ctx context.Context, req NewUserRequest) error {
	return o.call(OpNewUser, func() error { return o.db.NewUser(ctx, req) })
}

func (o observed) UpdateUser(ctx context.Context, req UpdateUserRequest) error {
	return o.call(OpUpdateUser, func() error { return o.db.UpdateUser(ctx, req) })
}

func (o observed) DeleteUser(ctx context.Context, req DeleteUserRequest) error {
	return o.call(OpDeleteUser, func() error { return o.db.DeleteUser(ctx, req) })
}

func (o observed) ListUsers(ctx context.Context) ([]string, error) {
	var users []string
	err := o.call(OpListUsers, func() (err error) {
		users, err = o.db.ListUsers(ctx)
		return err
	})
	return users, err
}

func (o observed) Ping(ctx context.Context) error {
	return o.call(OpPing, func() error { return o.db.Ping(ctx) })
}

func (o observed) Capabilities() Capabilities { return o.db.Capabilities() }

func (o observed) Close() { o.db.Close() }

// Unwrap exposes the wrapped plugin (tests, capability checks).
func (o observed) Unwrap() Database { return o.db }
