package pgstore

import (
	"errors"
	"fmt"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

var leaseSeq atomic.Int64

// testLease is a valid lease in state st, expiring an hour from now.
func testLease(t testing.TB, st lease.State) lease.Lease {
	t.Helper()
	id, err := lease.NewID()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	return lease.Lease{
		ID:                   id,
		Role:                 "readonly",
		Owner:                "spiffe://example.org/app",
		Database:             "pg1",
		Username:             fmt.Sprintf("cb_readonly_%d", leaseSeq.Add(1)),
		IssueTime:            now,
		ExpireTime:           now.Add(time.Hour),
		MaxExpireTime:        now.Add(2 * time.Hour),
		State:                st,
		RevocationStatements: []string{`DROP ROLE IF EXISTS "{{name}}"`},
	}
}

// Zero times, times before 1970 and at each nanosecond edge come back as
// they were put.
func TestTimesRoundTrip(t *testing.T) {
	s := initOpen(t, testConfig(t))
	for _, tm := range []time.Time{
		{},
		time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 1, time.FixedZone("X", -7*3600)),
		time.Date(2026, 1, 1, 0, 0, 0, 999, time.UTC),
		time.Date(2026, 1, 1, 0, 0, 0, 1000, time.UTC),
	} {
		l := testLease(t, lease.StateCreating)
		l.IssueTime, l.ExpireTime, l.MaxExpireTime = tm, tm, tm
		l.RevocationStatements = nil
		if err := s.Put(bg, l); err != nil {
			t.Fatal(err)
		}
		got, err := s.Get(bg, l.ID)
		if err != nil {
			t.Fatal(err)
		}
		if want := l.Normalized(); !reflect.DeepEqual(got, want) {
			t.Errorf("put %v:\n got %+v\nwant %+v", tm, got, want)
		}
	}
}

// States that are only reported are refused, not stored.
func TestPutRefusesUnstorableState(t *testing.T) {
	s := initOpen(t, testConfig(t))
	for _, st := range []lease.State{0, lease.StateRevoked, lease.StateExpired} {
		l := testLease(t, st)
		if err := s.Put(bg, l); !errors.Is(err, lease.ErrInvalid) {
			t.Errorf("Put in state %s = %v, want ErrInvalid", st, err)
		}
	}
}

// A row whose state the codec refuses (the CHECK constraint dropped, as a
// hand edit could) is corrupt for Get and Scan.
func TestUnknownStateIsCorrupt(t *testing.T) {
	c := testConfig(t)
	s := initOpen(t, c)
	l := testLease(t, lease.StateActive)
	if err := s.Put(bg, l); err != nil {
		t.Fatal(err)
	}
	schema := quoteIdent(c.Schema)
	exec(t, c, `ALTER TABLE `+schema+`.leases DROP CONSTRAINT leases_state_check`)
	exec(t, c, `UPDATE `+schema+`.leases SET state = 'REVOKED' WHERE id = $1`, l.ID)
	if _, err := s.Get(bg, l.ID); !errors.Is(err, lease.ErrStoreCorrupt) {
		t.Errorf("Get = %v, want ErrStoreCorrupt", err)
	}
	err := s.Scan(bg, lease.Filter{}, func(lease.Lease) error { return nil })
	if !errors.Is(err, lease.ErrStoreCorrupt) || !errors.Is(err, lease.ErrStoreUnavailable) {
		t.Errorf("Scan = %v, want ErrStoreCorrupt and ErrStoreUnavailable", err)
	}
}

// The schema dropped under a running store: lost leases, never "no
// leases".
func TestDroppedSchemaIsMissing(t *testing.T) {
	c := testConfig(t)
	s := initOpen(t, c)
	dropSchema(t, c)
	if _, err := s.Get(bg, testLease(t, lease.StateActive).ID); !errors.Is(err, lease.ErrStoreMissing) {
		t.Errorf("Get = %v, want ErrStoreMissing", err)
	}
	if err := s.Scan(bg, lease.Filter{}, func(lease.Lease) error { return nil }); !errors.Is(err, lease.ErrStoreMissing) {
		t.Errorf("Scan = %v, want ErrStoreMissing", err)
	}
}

// The store's sessions are named in pg_stat_activity, apart from the
// broker's database plugins.
func TestApplicationName(t *testing.T) {
	c := testConfig(t)
	s := initOpen(t, c)
	var name string
	if err := s.pool.QueryRow(bg, `SELECT current_setting('application_name')`).Scan(&name); err != nil {
		t.Fatal(err)
	}
	if name != applicationName {
		t.Errorf("application_name = %q, want %q", name, applicationName)
	}
}
