package lease

import (
	"context"
	"errors"
	"testing"
	"time"
)

// The request id index: Issue refuses a second lease of one owner with a
// request id while the first lives (no user created), FindRequest finds it
// without a scan, renew keeps the request id, and once the lease is revoked
// (or its issuance failed) the request id is free again.
func TestRequestIDIndex(t *testing.T) {
	bg := context.Background()
	env := newEnv(t, nil)
	l := env.newLease(t, time.Hour, 2*time.Hour)
	l.RequestID = "req-1"
	got, err := env.m.Issue(bg, l, waitIntent)
	if err != nil || got.RequestID != "req-1" {
		t.Fatalf("Issue = %+v, %v", got, err)
	}

	// A second issuance with the key creates nothing.
	dup := env.newLease(t, time.Hour, 2*time.Hour)
	dup.RequestID = "req-1"
	created := false
	_, err = env.m.Issue(bg, dup, func(ctx context.Context, intent func(context.Context) error) error {
		if err := intent(ctx); err != nil {
			return err
		}
		created = true
		return nil
	})
	if !errors.Is(err, ErrRequestExists) || !errors.Is(err, ErrExists) || created {
		t.Fatalf("second Issue with the request id = %v (user created: %v), want ErrRequestExists and no user", err, created)
	}
	if _, ok := storedLease(env.store, dup.ID); ok {
		t.Error("the refused issuance left a record")
	}
	// Another owner may use the same request id.
	other := env.newLease(t, time.Hour, 2*time.Hour)
	other.Owner, other.RequestID = "spiffe://example.org/other", "req-1"
	if _, err := env.m.Issue(bg, other, waitIntent); err != nil {
		t.Fatalf("Issue by another owner with the same request id: %v", err)
	}

	env.m.index.touched = 0
	found, err := env.m.FindRequest(bg, l.Owner, "req-1")
	if err != nil || found.ID != l.ID {
		t.Fatalf("FindRequest = %+v, %v; want %s", found, err, l.ID)
	}
	if env.m.index.touched != 0 {
		t.Errorf("FindRequest looked at %d leases", env.m.index.touched)
	}
	if _, err := env.m.FindRequest(bg, l.Owner, ""); !errors.Is(err, ErrInvalid) {
		t.Errorf("FindRequest with no request id = %v, want ErrInvalid", err)
	}

	renewed, err := env.m.Renew(bg, l.ID, 90*time.Minute)
	if err != nil || renewed.RequestID != "req-1" {
		t.Fatalf("Renew = %+v, %v", renewed, err)
	}
	if s, _ := storedLease(env.store, l.ID); s.RequestID != "req-1" {
		t.Errorf("stored after renew: %+v", s)
	}

	if _, err := env.m.Revoke(bg, l.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := env.m.FindRequest(bg, l.Owner, "req-1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("FindRequest after revoke = %v, want ErrNotFound", err)
	}
	again := env.newLease(t, time.Hour, 2*time.Hour)
	again.RequestID = "req-1"
	if _, err := env.m.Issue(bg, again, waitIntent); err != nil {
		t.Fatalf("Issue with a request id whose lease ended: %v", err)
	}

	// A failed issuance frees its request id at once.
	failed := env.newLease(t, time.Hour, 2*time.Hour)
	failed.RequestID = "req-2"
	_, err = env.m.Issue(bg, failed, func(context.Context, func(context.Context) error) error {
		return NotCreated(errors.New("refused"))
	})
	if err == nil {
		t.Fatal("failing create succeeded")
	}
	if _, err := env.m.FindRequest(bg, failed.Owner, "req-2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("FindRequest after a failed issuance = %v, want ErrNotFound", err)
	}
}
