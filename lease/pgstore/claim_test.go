package pgstore

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// replicas opens n stores on one new schema, as n brokers of the
// multi-replica mode do (Open), named "a", "b", ...
func replicas(t *testing.T, n int) (Config, []*Store) {
	t.Helper()
	c := testConfig(t)
	if err := Init(bg, c); err != nil {
		t.Fatal(err)
	}
	ss := make([]*Store, n)
	for i := range ss {
		rc := c
		rc.Replica = string(rune('a' + i))
		s, err := Open(bg, rc)
		if err != nil {
			t.Fatalf("Open: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		ss[i] = s
	}
	return c, ss
}

func putLeases(t *testing.T, s *Store, n int, st lease.State, expire time.Time) []lease.Lease {
	t.Helper()
	ls := make([]lease.Lease, n)
	for i := range ls {
		ls[i] = testLease(t, st)
		ls[i].ExpireTime = expire
	}
	if err := s.PutAll(bg, ls); err != nil {
		t.Fatal(err)
	}
	return ls
}

func claim(t *testing.T, s *Store, req lease.ClaimRequest) []lease.Versioned {
	t.Helper()
	cs, err := s.ClaimDue(bg, req)
	if err != nil {
		t.Fatalf("ClaimDue: %v", err)
	}
	return cs.Leases
}

// Two replicas claim in a race until nothing is left: each due lease
// (ACTIVE and expired, or REVOKING) goes to exactly one, nothing else to
// either.
func TestClaimDueEachOnce(t *testing.T) {
	_, rs := replicas(t, 2)
	now := time.Now()
	due := append(putLeases(t, rs[0], 60, lease.StateActive, now.Add(-time.Minute)),
		putLeases(t, rs[0], 10, lease.StateRevoking, now.Add(time.Hour))...)
	putLeases(t, rs[0], 10, lease.StateActive, now.Add(time.Hour))
	// CREATING leases claimed by their issuer for an hour.
	for range 10 {
		if _, err := rs[0].Create(bg, testLease(t, lease.StateCreating), time.Hour); err != nil {
			t.Fatal(err)
		}
	}

	var (
		mu  sync.Mutex
		got = map[string]string{} // lease → replica
		wg  sync.WaitGroup
	)
	for i, r := range rs {
		name := []string{"a", "b"}[i]
		wg.Go(func() {
			for {
				claimed, err := r.ClaimDue(bg, lease.ClaimRequest{Limit: 7, TTL: time.Minute})
				if err != nil {
					t.Errorf("ClaimDue: %v", err)
					return
				}
				cs := claimed.Leases
				if len(cs) == 0 {
					return
				}
				mu.Lock()
				for _, c := range cs {
					if other, dup := got[c.Lease.ID]; dup {
						t.Errorf("%s claimed by %s and %s", c.Lease.ID, other, name)
					}
					got[c.Lease.ID] = name
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(got) != len(due) {
		t.Errorf("%d leases claimed, want the %d due", len(got), len(due))
	}
	for _, l := range due {
		if _, ok := got[l.ID]; !ok {
			t.Errorf("due lease %s (%s) never claimed", l.ID, l.State)
		}
	}
	n := map[string]int{}
	for _, r := range got {
		n[r]++
	}
	t.Logf("claims per replica: %v", n)
}

// CREATING leases whose issuer's claim is absent or lapsed come first,
// then REVOKING ones, then ACTIVE ones by expiry; Lookahead takes the
// leases about to expire, on the database's clock.
func TestClaimDueOrderAndLookahead(t *testing.T) {
	c, rs := replicas(t, 1)
	now := time.Now()
	soon := putLeases(t, rs[0], 1, lease.StateActive, now.Add(30*time.Second))[0]
	late := putLeases(t, rs[0], 1, lease.StateActive, now.Add(-time.Second))[0]
	early := putLeases(t, rs[0], 1, lease.StateActive, now.Add(-time.Hour))[0]
	revoking := putLeases(t, rs[0], 1, lease.StateRevoking, now.Add(time.Hour))[0]
	creating := putLeases(t, rs[0], 1, lease.StateCreating, now.Add(time.Hour))[0] // by Put: never claimed

	cs := claim(t, rs[0], lease.ClaimRequest{Limit: 10, TTL: time.Minute})
	var order []string
	for _, c := range cs {
		order = append(order, c.Lease.ID)
	}
	if want := []string{creating.ID, revoking.ID, early.ID, late.ID}; !equal(order, want) {
		t.Errorf("claimed %v, want %v (CREATING, REVOKING, then by expiry; not the one due in 30s)", order, want)
	}
	cs = claim(t, rs[0], lease.ClaimRequest{Limit: 10, TTL: time.Minute, Lookahead: time.Minute})
	if len(cs) != 1 || cs[0].Lease.ID != soon.ID {
		t.Fatalf("with a minute of lookahead: %d claims, want the lease due in 30s", len(cs))
	}
	var by string
	var d time.Duration
	if err := adminPool(t, c).QueryRow(bg, `SELECT claimed_by, extract(epoch FROM claim_deadline - now()) * 1e9
		FROM `+quoteIdent(c.Schema)+`.leases WHERE id = $1`, soon.ID).Scan(&by, &d); err != nil {
		t.Fatal(err)
	}
	if by != "a" || d < 30*time.Second || d > 2*time.Minute {
		t.Errorf("claimed by %q until %s from now, want by a for about a minute", by, d)
	}
	if !equalLease(cs[0].Lease, soon) {
		t.Errorf("claimed %+v, want %+v", cs[0].Lease, soon.Normalized())
	}
}

// A replica that dies holding a claim: once its deadline passes, another
// replica claims the lease, and the first is fenced if it comes back.
func TestClaimLapses(t *testing.T) {
	c, rs := replicas(t, 2)
	a, b := rs[0], rs[1]
	l := putLeases(t, a, 1, lease.StateActive, time.Now().Add(-time.Second))[0]
	ca := claim(t, a, lease.ClaimRequest{Limit: 10, TTL: time.Hour})
	if len(ca) != 1 {
		t.Fatalf("a claimed %d leases, want 1", len(ca))
	}
	if cb := claim(t, b, lease.ClaimRequest{Limit: 10, TTL: time.Hour}); len(cb) != 0 {
		t.Fatalf("b claimed %d leases under a's claim", len(cb))
	}
	// a's claim lapses (its deadline moved into the past rather than
	// waiting an hour: on the database's clock either way).
	exec(t, c, `UPDATE `+quoteIdent(c.Schema)+`.leases SET claim_deadline = now() - interval '1 second' WHERE id = $1`, l.ID)
	cb := claim(t, b, lease.ClaimRequest{Limit: 10, TTL: time.Hour})
	if len(cb) != 1 || cb[0].Version <= ca[0].Version {
		t.Fatalf("b after a's claim lapsed: %+v", cb)
	}
	// a comes back: fenced, whatever it tries.
	revoking := ca[0].Lease
	revoking.State = lease.StateRevoking
	if _, err := a.PutIfVersion(bg, revoking, ca[0].Version, 0); !errors.Is(err, ErrFenced) {
		t.Errorf("a's PutIfVersion after losing its claim = %v, want ErrFenced", err)
	}
	if err := a.DeleteIfVersion(bg, l.ID, ca[0].Version); !errors.Is(err, ErrFenced) {
		t.Errorf("a's DeleteIfVersion after losing its claim = %v, want ErrFenced", err)
	}
	// b works under its claim.
	v, err := b.PutIfVersion(bg, revoking, cb[0].Version, 0)
	if err != nil {
		t.Fatalf("b's PutIfVersion: %v", err)
	}
	if err := b.DeleteIfVersion(bg, l.ID, v); err != nil {
		t.Fatalf("b's DeleteIfVersion: %v", err)
	}
	if _, err := a.Get(bg, l.ID); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("after b's delete: %v, want ErrNotFound", err)
	}
}

// A lease renewed through a healthy replica is never revoked by one that
// claimed it before (partitioned, paused): the renew bumps the version.
func TestRenewFencesClaimer(t *testing.T) {
	for _, tt := range []struct {
		name  string
		renew func(t *testing.T, s *Store, l lease.Lease)
	}{
		{"PutIfVersion", func(t *testing.T, s *Store, l lease.Lease) {
			got, err := s.GetVersion(bg, l.ID)
			if err != nil {
				t.Fatal(err)
			}
			got.Lease.ExpireTime = time.Now().Add(time.Hour)
			if _, err := s.PutIfVersion(bg, got.Lease, got.Version, 0); err != nil {
				t.Fatalf("renew: %v", err)
			}
		}},
		{"Put", func(t *testing.T, s *Store, l lease.Lease) {
			l.ExpireTime = time.Now().Add(time.Hour)
			if err := s.Put(bg, l); err != nil {
				t.Fatalf("renew: %v", err)
			}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, rs := replicas(t, 2)
			a, b := rs[0], rs[1]
			l := putLeases(t, a, 1, lease.StateActive, time.Now().Add(-time.Second))[0]
			ca := claim(t, a, lease.ClaimRequest{Limit: 1, TTL: time.Hour})
			if len(ca) != 1 {
				t.Fatalf("a claimed %d", len(ca))
			}
			tt.renew(t, b, l)
			revoking := ca[0].Lease
			revoking.State, revoking.Expired = lease.StateRevoking, true
			if _, err := a.PutIfVersion(bg, revoking, ca[0].Version, 0); !errors.Is(err, ErrFenced) {
				t.Errorf("a's revoke after b's renew = %v, want ErrFenced", err)
			}
			if err := a.DeleteIfVersion(bg, l.ID, ca[0].Version); !errors.Is(err, ErrFenced) {
				t.Errorf("a's delete after b's renew = %v, want ErrFenced", err)
			}
			got, err := b.Get(bg, l.ID)
			if err != nil || got.State != lease.StateActive || !got.ExpireTime.After(time.Now()) {
				t.Errorf("after the renew: %+v, %v; want it ACTIVE, renewed", got, err)
			}
		})
	}
}

// The other order: once the claimer's REVOKING write is in, a renew read
// before it is fenced, and the renewing replica sees REVOKING.
func TestRevokeFencesStaleRenew(t *testing.T) {
	_, rs := replicas(t, 2)
	a, b := rs[0], rs[1]
	l := putLeases(t, a, 1, lease.StateActive, time.Now().Add(-time.Second))[0]
	read, err := b.GetVersion(bg, l.ID)
	if err != nil {
		t.Fatal(err)
	}
	ca := claim(t, a, lease.ClaimRequest{Limit: 1, TTL: time.Hour})
	if len(ca) != 1 {
		t.Fatalf("a claimed %d", len(ca))
	}
	revoking := ca[0].Lease
	revoking.State = lease.StateRevoking
	if _, err := a.PutIfVersion(bg, revoking, ca[0].Version, time.Minute); err != nil {
		t.Fatal(err)
	}
	read.Lease.ExpireTime = time.Now().Add(time.Hour)
	if _, err := b.PutIfVersion(bg, read.Lease, read.Version, 0); !errors.Is(err, ErrFenced) {
		t.Errorf("stale renew = %v, want ErrFenced", err)
	}
	if got, err := b.Get(bg, l.ID); err != nil || got.State != lease.StateRevoking {
		t.Errorf("after the fenced renew: %+v, %v; want REVOKING", got, err)
	}
}

// Create inserts once, at version 1; version 0 never matches a row.
func TestCreateAndVersions(t *testing.T) {
	_, rs := replicas(t, 1)
	l := testLease(t, lease.StateCreating)
	v, err := rs[0].Create(bg, l, time.Minute)
	if err != nil || v != 1 {
		t.Fatalf("Create = %d, %v; want version 1", v, err)
	}
	if _, err := rs[0].Create(bg, l, time.Minute); !errors.Is(err, lease.ErrExists) {
		t.Errorf("second Create = %v, want ErrExists", err)
	}
	if _, err := rs[0].PutIfVersion(bg, l, 0, 0); !errors.Is(err, ErrFenced) {
		t.Errorf("PutIfVersion at version 0 = %v, want ErrFenced", err)
	}
	got, err := rs[0].GetVersion(bg, l.ID)
	if err != nil || got.Version != 1 || !equalLease(got.Lease, l) {
		t.Errorf("GetVersion = %+v, %v", got, err)
	}
	if err := rs[0].DeleteIfVersion(bg, l.ID, 1); err != nil {
		t.Errorf("DeleteIfVersion: %v", err)
	}
	if err := rs[0].DeleteIfVersion(bg, l.ID, 1); !errors.Is(err, ErrFenced) {
		t.Errorf("DeleteIfVersion of a deleted lease = %v, want ErrFenced", err)
	}
}

func TestClaimRequestChecked(t *testing.T) {
	_, rs := replicas(t, 1)
	for _, req := range []lease.ClaimRequest{
		{TTL: time.Second},
		{Limit: 1},
		{Limit: 1, TTL: time.Second, Lookahead: -time.Second},
	} {
		if _, err := rs[0].ClaimDue(bg, req); err == nil {
			t.Errorf("ClaimDue(%+v) succeeded", req)
		}
	}
	rs[0].Close()
	if _, err := rs[0].ClaimDue(bg, lease.ClaimRequest{Limit: 1, TTL: time.Second}); !errors.Is(err, lease.ErrStoreUnavailable) {
		t.Errorf("ClaimDue after Close = %v, want ErrStoreUnavailable", err)
	}
}

func equal(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func equalLease(got, want lease.Lease) bool {
	want = want.Normalized()
	return got.ID == want.ID && got.State == want.State && got.ExpireTime.Equal(want.ExpireTime) &&
		got.IssueTime == want.IssueTime && got.Username == want.Username && equal(got.RevocationStatements, want.RevocationStatements)
}

// A claim lapses on the database's clock, without anyone's help: the
// lease is claimable again once its short ttl has passed.
func TestClaimLapsesOnDatabaseClock(t *testing.T) {
	_, rs := replicas(t, 2)
	a, b := rs[0], rs[1]
	l := putLeases(t, a, 1, lease.StateRevoking, time.Now())[0]
	ca := claim(t, a, lease.ClaimRequest{Limit: 1, TTL: 2 * time.Second})
	if len(ca) != 1 {
		t.Fatalf("a claimed %d", len(ca))
	}
	if cb := claim(t, b, lease.ClaimRequest{Limit: 1, TTL: time.Hour}); len(cb) != 0 {
		t.Fatalf("b claimed %d leases under a's fresh claim", len(cb))
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		cb := claim(t, b, lease.ClaimRequest{Limit: 1, TTL: time.Hour})
		if len(cb) == 1 {
			if cb[0].Lease.ID != l.ID || cb[0].Version <= ca[0].Version {
				t.Errorf("b claimed %s at version %d after a's %d", cb[0].Lease.ID, cb[0].Version, ca[0].Version)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("a's claim never lapsed")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := a.DeleteIfVersion(bg, l.ID, ca[0].Version); !errors.Is(err, ErrFenced) {
		t.Errorf("a's delete after its claim lapsed = %v, want ErrFenced", err)
	}
}

// What the rows hold for operators and for Stats: claimed_by is the
// writer's Config.Replica while a Create or a PutIfVersion hold lasts, NULL
// once released; revoking_since is set by every write path that makes a
// row REVOKING and cleared by those that make it anything else.
func TestClaimAndRevokingColumns(t *testing.T) {
	c, rs := replicas(t, 1)
	s := rs[0]
	type row struct {
		by            *string
		holdLeft      *float64 // seconds until claim_deadline
		revokingSince *time.Time
	}
	read := func(id string) row {
		t.Helper()
		var r row
		if err := adminPool(t, c).QueryRow(bg, `SELECT claimed_by, extract(epoch FROM claim_deadline - now())::float8, revoking_since
			FROM `+quoteIdent(c.Schema)+`.leases WHERE id = $1`, id).Scan(&r.by, &r.holdLeft, &r.revokingSince); err != nil {
			t.Fatal(err)
		}
		return r
	}
	l := testLease(t, lease.StateCreating)
	v, err := s.Create(bg, l, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if r := read(l.ID); r.by == nil || *r.by != "a" || r.holdLeft == nil || *r.holdLeft < 30 || *r.holdLeft > 90 || r.revokingSince != nil {
		t.Errorf("after Create: %+v, want claimed by a for about a minute, not revoking", r)
	}
	l.State = lease.StateActive
	if v, err = s.PutIfVersion(bg, l, v, 0); err != nil {
		t.Fatal(err)
	}
	if r := read(l.ID); r.by != nil || r.holdLeft != nil || r.revokingSince != nil {
		t.Errorf("after PutIfVersion without a hold: %+v, want no claim", r)
	}
	l.State = lease.StateRevoking
	if _, err = s.PutIfVersion(bg, l, v, time.Hour); err != nil {
		t.Fatal(err)
	}
	if r := read(l.ID); r.by == nil || *r.by != "a" || r.holdLeft == nil || *r.holdLeft < 3000 || r.revokingSince == nil {
		t.Errorf("after PutIfVersion REVOKING with a hold: %+v, want claimed by a for an hour, revoking", r)
	}
	l.State = lease.StateActive
	if err := s.Put(bg, l); err != nil {
		t.Fatal(err)
	}
	if r := read(l.ID); r.by != nil || r.revokingSince != nil {
		t.Errorf("after Put ACTIVE: %+v, want no claim, not revoking", r)
	}
	bulk := []lease.Lease{testLease(t, lease.StateRevoking), testLease(t, lease.StateActive)}
	if err := s.PutAll(bg, bulk); err != nil {
		t.Fatal(err)
	}
	if r := read(bulk[0].ID); r.revokingSince == nil {
		t.Errorf("REVOKING lease written by PutAll: %+v, want revoking_since set", r)
	}
	if r := read(bulk[1].ID); r.revokingSince != nil {
		t.Errorf("ACTIVE lease written by PutAll: %+v, want revoking_since NULL", r)
	}
}
