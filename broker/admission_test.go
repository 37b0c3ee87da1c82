package broker

import (
	"context"
	"errors"
	"log/slog"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
)

func testAdmission(t *testing.T, refresh func(context.Context) error, now func() time.Time) (*Admission, *registry) {
	t.Helper()
	reg, err := openRegistry(context.Background(), lease.NewMemStore(), "")
	if err != nil {
		t.Fatal(err)
	}
	roles := map[string]*Role{
		"reader": {Name: "reader", Allowed: []identity.Pattern{identity.MustParsePattern("spiffe://example.org/orders/*")}},
	}
	a := NewAdmission(AdmissionConfig{Roles: roles, Registry: reg, Refresh: refresh, Now: now, Logger: slog.New(slog.DiscardHandler)})
	return a, reg
}

// Admit runs its checks in order and answers with the first refusal.
func TestAdmit(t *testing.T) {
	ctx := context.Background()
	a, reg := testAdmission(t, nil, nil)
	orders := spiffeid.RequireFromString("spiffe://example.org/orders/api")
	gone := spiffeid.RequireFromString("spiffe://example.org/orders/gone")
	if err := reg.deny(ctx, gone.String(), time.Now()); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		caller spiffeid.ID
		role   string
		want   error // nil: admitted
		arg    bool  // an invalid-argument error
	}{
		{name: "admitted", caller: orders, role: "reader"},
		{name: "no role", caller: orders, role: "", arg: true},
		{name: "bad role name", caller: orders, role: "Reader!", arg: true},
		{name: "unknown role", caller: orders, role: "writer", want: identity.ErrUnknownRole},
		{name: "policy refuses", caller: spiffeid.RequireFromString("spiffe://example.org/billing/api"), role: "reader", want: identity.ErrNotAllowed},
		{name: "deregistered", caller: gone, role: "reader", want: errDeregistered},
	} {
		t.Run(tc.name, func(t *testing.T) {
			role, err := a.Admit(ctx, tc.caller, tc.role)
			var ia *invalidArgError
			switch {
			case tc.arg:
				if !errors.As(err, &ia) {
					t.Fatalf("Admit = %v, want an invalid argument", err)
				}
			case tc.want != nil:
				if !errors.Is(err, tc.want) {
					t.Fatalf("Admit = %v, want %v", err, tc.want)
				}
			default:
				if err != nil || role == nil || role.Name != tc.role {
					t.Fatalf("Admit = %v, %v; want role %s", role, err, tc.role)
				}
			}
		})
	}
}

// A caller missing from the last SPIRE listing makes admission re-list
// SPIRE before refusing, at most once per refreshEvery.
func TestAdmitRefreshesRegistry(t *testing.T) {
	ctx := context.Background()
	known := spiffeid.RequireFromString("spiffe://example.org/orders/known")
	fresh := spiffeid.RequireFromString("spiffe://example.org/orders/fresh")
	stranger := spiffeid.RequireFromString("spiffe://example.org/orders/stranger")
	var reg *registry
	clock := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	refreshes := 0
	listing := map[string]time.Time{known.String(): {}}
	a, reg := testAdmission(t, func(ctx context.Context) error {
		refreshes++
		_, _, err := reg.observe(ctx, time.Now(), listing)
		return err
	}, func() time.Time { return clock })
	if _, _, err := reg.observe(ctx, time.Now(), map[string]time.Time{known.String(): {}}); err != nil {
		t.Fatal(err)
	}

	if _, err := a.Admit(ctx, known, "reader"); err != nil || refreshes != 0 {
		t.Fatalf("registered caller: %v after %d refreshes, want admitted without one", err, refreshes)
	}
	// fresh was registered after the last listing: the refresh finds it.
	listing = map[string]time.Time{known.String(): {}, fresh.String(): {}}
	if _, err := a.Admit(ctx, fresh, "reader"); err != nil || refreshes != 1 {
		t.Fatalf("newly registered caller: %v after %d refreshes, want admitted after 1", err, refreshes)
	}
	// Straight after, an unknown caller is refused without another listing.
	if _, err := a.Admit(ctx, stranger, "reader"); !errors.Is(err, errNotRegistered) || refreshes != 1 {
		t.Fatalf("unknown caller: %v after %d refreshes, want errNotRegistered and no new refresh", err, refreshes)
	}
	clock = clock.Add(refreshEvery)
	if _, err := a.Admit(ctx, stranger, "reader"); !errors.Is(err, errNotRegistered) || refreshes != 2 {
		t.Fatalf("unknown caller later: %v after %d refreshes, want errNotRegistered after 2", err, refreshes)
	}
}
