package lease

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestIssue runs the issuance protocol through each of its outcomes and
// checks the two invariants it owns: no user without a record, no lease
// returned before it is durably ACTIVE; and that every failure leaves
// neither a user nor a record.
func TestIssue(t *testing.T) {
	bg := context.Background()
	errCreate := errors.New("create user: permission denied")

	tests := []struct {
		name string
		// putFail fails the store's Put of the given state.
		putFail State
		// create is the CreateFunc; created reports whether it made a user.
		create  func(env *testEnv, l Lease, created *bool) CreateFunc
		wantErr error // errors.Is; nil: success
		// drops the backend must see: the user dropped (it may exist).
		wantDrops int
	}{
		{
			name: "success",
			create: func(env *testEnv, l Lease, created *bool) CreateFunc {
				return func(ctx context.Context, intent func(context.Context) error) error {
					if err := intent(ctx); err != nil {
						return err
					}
					// The record is durable before the user exists.
					if s, ok := storedLease(env.store, l.ID); !ok || s.State != StateCreating {
						t.Errorf("user created before its CREATING record: stored %+v %v", s, ok)
					}
					*created = true
					return nil
				}
			},
		},
		{
			name: "not created",
			create: func(env *testEnv, l Lease, created *bool) CreateFunc {
				return func(ctx context.Context, intent func(context.Context) error) error {
					if err := intent(ctx); err != nil {
						return err
					}
					return NotCreated(errCreate)
				}
			},
			wantErr: errCreate, // and ErrNotCreated; no drop needed
		},
		{
			name: "create failed, user may exist",
			create: func(env *testEnv, l Lease, created *bool) CreateFunc {
				return func(ctx context.Context, intent func(context.Context) error) error {
					if err := intent(ctx); err != nil {
						return err
					}
					*created = true
					return errCreate
				}
			},
			wantErr:   errCreate,
			wantDrops: 1,
		},
		{
			name:    "ACTIVE not durable",
			putFail: StateActive,
			create: func(env *testEnv, l Lease, created *bool) CreateFunc {
				return func(ctx context.Context, intent func(context.Context) error) error {
					if err := intent(ctx); err != nil {
						return err
					}
					*created = true
					return nil
				}
			},
			wantErr:   ErrStoreUnavailable,
			wantDrops: 1,
		},
		{
			name:    "intent failed, create obeyed",
			putFail: StateCreating,
			create: func(env *testEnv, l Lease, created *bool) CreateFunc {
				return func(ctx context.Context, intent func(context.Context) error) error {
					return intent(ctx)
				}
			},
			wantErr: ErrStoreUnavailable,
		},
		{
			name:    "intent failed, create broke its contract",
			putFail: StateCreating,
			create: func(env *testEnv, l Lease, created *bool) CreateFunc {
				return func(ctx context.Context, intent func(context.Context) error) error {
					*created = true // never asked
					return nil
				}
			},
			wantErr:   ErrStoreUnavailable,
			wantDrops: 1, // the unrecorded user, through Backend.Drop
		},
		{
			name: "caller gone after create failed",
			create: func(env *testEnv, l Lease, created *bool) CreateFunc {
				return func(ctx context.Context, intent func(context.Context) error) error {
					if err := intent(ctx); err != nil {
						return err
					}
					*created = true
					return context.Canceled
				}
			},
			wantErr:   context.Canceled,
			wantDrops: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			env := newEnv(t, nil)
			if tt.putFail != 0 {
				env.store.SetFailPut(func(l Lease) error {
					if l.State == tt.putFail {
						return errDB
					}
					return nil
				})
			}
			l := env.newLease(t, time.Hour, 2*time.Hour)
			ctx, cancel := context.WithCancel(bg)
			defer cancel()
			var created bool
			create := tt.create(env, l, &created)
			if tt.wantErr == context.Canceled {
				inner := create
				create = func(c context.Context, intent func(context.Context) error) error {
					err := inner(c, intent)
					cancel() // the cleanup must not depend on the caller
					return err
				}
			}
			got, err := env.m.Issue(ctx, l, create)
			env.store.SetFailPut(nil)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatalf("Issue: %v", err)
				}
				if got.State != StateActive {
					t.Fatalf("Issue returned state %s", got.State)
				}
				if s, ok := storedLease(env.store, l.ID); !ok || s.State != StateActive {
					t.Fatalf("returned before ACTIVE was stored: %+v %v", s, ok)
				}
				if _, ok := env.m.queuedAt(l.ID); !ok {
					t.Error("issued lease not queued for expiry")
				}
				return
			}
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("Issue err = %v, want %v", err, tt.wantErr)
			}
			if got.ID != "" {
				t.Errorf("Issue returned a lease with its error: %+v", got)
			}
			if _, ok := storedLease(env.store, l.ID); ok {
				t.Error("failed issuance left its record")
			}
			if _, ok := get(env.m, l.ID); ok {
				t.Error("failed issuance left the lease in memory")
			}
			if n := env.backend.Drops(l.ID); n != tt.wantDrops {
				t.Errorf("drops = %d, want %d", n, tt.wantDrops)
			}
			if created && env.backend.Drops(l.ID) == 0 {
				t.Error("a user that may exist was not dropped")
			}
			if n := len(list(t, env.m, nil)); n != 0 {
				t.Errorf("List after failed issuance: %d leases", n)
			}
		})
	}
}

// TestIssueCleanupRetried: a failed issuance whose drop fails too keeps the
// lease REVOKING and retries it, like any revocation.
func TestIssueCleanupRetried(t *testing.T) {
	env := newEnv(t, nil)
	env.backend.set(func(b *fakeBackend) {
		b.dropErr = func(Lease, int) error { return errDB }
	})
	l := env.newLease(t, time.Hour, time.Hour)
	errCreate := errors.New("create failed")
	_, err := env.m.Issue(context.Background(), l, func(ctx context.Context, intent func(context.Context) error) error {
		if err := intent(ctx); err != nil {
			return err
		}
		return errCreate
	})
	if !errors.Is(err, errCreate) {
		t.Fatalf("Issue err = %v", err)
	}
	got := mustState(t, env.m, l.ID, StateRevoking)
	if got.LastError == "" {
		t.Error("REVOKING lease has no LastError")
	}
	env.backend.set(func(b *fakeBackend) { b.dropErr = nil })
	env.clock.Advance(time.Hour)
	env.drain()
	if _, ok := get(env.m, l.ID); ok {
		t.Error("cleanup not retried")
	}
}

func TestNotCreated(t *testing.T) {
	base := errors.New("rolled back")
	err := NotCreated(base)
	if !errors.Is(err, ErrNotCreated) || !errors.Is(err, base) || err.Error() != base.Error() {
		t.Errorf("NotCreated(%v) = %v", base, err)
	}
	if NotCreated(nil) != nil {
		t.Error("NotCreated(nil) != nil")
	}
}
