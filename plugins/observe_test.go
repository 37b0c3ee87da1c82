package plugins_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/credbroker/credbroker/plugins"
)

func TestObserved(t *testing.T) {
	ctx := context.Background()
	errDown := errors.New("connection refused")
	type call struct {
		op  plugins.Operation
		err error
	}
	tests := []struct {
		name string
		err  error
	}{
		{"success", nil},
		{"failure", errDown},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []call
			db := plugins.Observed(fakeDB{err: tt.err}, func(op plugins.Operation, took time.Duration, err error) {
				if took < 0 {
					t.Errorf("%s took %s", op, took)
				}
				got = append(got, call{op, err})
			})
			if _, err := db.GenerateUsername("r"); err != nil {
				t.Fatal(err)
			}
			errs := []error{
				db.NewUser(ctx, plugins.NewUserRequest{}),
				db.UpdateUser(ctx, plugins.UpdateUserRequest{}),
				db.DeleteUser(ctx, plugins.DeleteUserRequest{}),
				func() error { _, err := db.ListUsers(ctx); return err }(),
				db.Ping(ctx),
			}
			for i, err := range errs {
				if !errors.Is(err, tt.err) || (tt.err == nil) != (err == nil) {
					t.Errorf("call %d returned %v, want %v unchanged", i, err, tt.err)
				}
			}
			db.Capabilities()
			db.Close()
			if u, ok := db.(interface{ Unwrap() plugins.Database }); !ok {
				t.Error("observed plugin has no Unwrap (NewPassword finds a PasswordGenerator through it)")
			} else if _, ok := u.Unwrap().(fakeDB); !ok {
				t.Errorf("Unwrap = %T, want the wrapped plugin", u.Unwrap())
			}
			want := []plugins.Operation{plugins.OpNewUser, plugins.OpUpdateUser, plugins.OpDeleteUser, plugins.OpListUsers, plugins.OpPing}
			if len(got) != len(want) {
				t.Fatalf("observed %d calls, want %d: %v", len(got), len(want), got)
			}
			for i, op := range want {
				if got[i].op != op || got[i].err != tt.err {
					t.Errorf("observed %v, want {%s %v}", got[i], op, tt.err)
				}
			}
		})
	}
}
