package lease

import (
	"context"
	"errors"
	"testing"
	"time"
)

func TestMemStoreFaults(t *testing.T) {
	ctx := context.Background()
	l := makeLease(t, time.Now(), time.Hour, time.Hour)
	s := NewMemStore()
	s.SetFailPut(func(Lease) error { return errDB })
	if err := s.Put(ctx, l); !errors.Is(err, ErrStoreUnavailable) || !errors.Is(err, errDB) {
		t.Errorf("Put err = %v", err)
	}
	if s.Len() != 0 {
		t.Error("failed Put stored the lease")
	}
	s.SetFailPut(nil)
	if err := s.Put(ctx, l); err != nil {
		t.Fatal(err)
	}
	s.SetFailDelete(func(string) error { return errDB })
	if err := s.Delete(ctx, l.ID); !errors.Is(err, ErrStoreUnavailable) {
		t.Errorf("Delete err = %v", err)
	}
	s.SetFailScan(func() error { return errDB })
	if err := s.Scan(ctx, Filter{}, func(Lease) error { return nil }); !errors.Is(err, ErrStoreUnavailable) {
		t.Errorf("Scan err = %v", err)
	}
	if _, ok := storedLease(s, l.ID); !ok {
		t.Error("lease lost")
	}
	s.Close()
	s.SetFailDelete(nil)
	if err := s.Delete(ctx, l.ID); !errors.Is(err, ErrStoreUnavailable) {
		t.Errorf("Delete after Close err = %v", err)
	}
}
