package leasetest

import (
	"errors"
	"fmt"
	"reflect"
	"sync"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// SharedHarness makes the stores RunShared tests: several stores (the
// replicas of one deployment) on one backing store, and the clock their
// claims and holds run on.
//
//	func TestSharedConformance(t *testing.T) {
//		leasetest.RunShared(t, leasetest.SharedHarness{
//			Open: func(t *testing.T) func(t *testing.T, replica string) lease.SharedStore {
//				... // a new, empty backing store
//				return func(t *testing.T, replica string) lease.SharedStore { ... }
//			},
//			Now:   time.Now,
//			Sleep: time.Sleep,
//		})
//	}
type SharedHarness struct {
	// Open makes a new, empty backing store and returns how to open a
	// store on it as the replica named replica: each call a new store (as
	// another broker would open it), all of them seeing the same leases.
	// Required. RunShared closes every store it opens.
	Open func(t *testing.T) func(t *testing.T, replica string) lease.SharedStore
	// Now reads the stores' clock: the one their claims, holds and
	// Stats.OldestRevoking are on, against which ExpireTime is due.
	// Required (time.Now for a store on a real clock: within a minute of
	// the store's is close enough).
	Now func() time.Time
	// Sleep makes d pass on that clock: time.Sleep for a real one,
	// advancing a fake one. Required.
	Sleep func(d time.Duration)
	// Hold is the short hold and claim TTL of the cases that wait for one
	// to lapse; each such case sleeps twice it. It must be long enough
	// for a few of the store's calls. Default 200ms.
	Hold time.Duration
}

// RunShared runs the conformance suite of lease.SharedStore against the
// stores of h, each case a subtest of t. It checks what the Shared manager
// relies on: versions bumped by every write and claim, conditional writes
// that fail with lease.ErrConflict once anyone else wrote, claims that go
// to one replica at a time and lapse on the store's clock, and the queries
// answering as lease.Manager's do. Run checks the lease.Store contract.
func RunShared(t *testing.T, h SharedHarness) {
	if h.Open == nil || h.Now == nil || h.Sleep == nil {
		t.Fatal("leasetest: SharedHarness.Open, Now and Sleep are required")
	}
	if h.Hold <= 0 {
		h.Hold = 200 * time.Millisecond
	}
	tests := []struct {
		name string
		fn   func(t *testing.T, h SharedHarness)
	}{
		{"Create", testSharedCreate},
		{"CreateWithin", testSharedCreateWithin},
		{"ConcurrentCreateWithin", testSharedConcurrentCreateWithin},
		{"Versions", testSharedVersions},
		{"PutIfVersionConflict", testSharedPutConflict},
		{"DeleteIfVersionConflict", testSharedDeleteConflict},
		{"ClaimLookahead", testSharedClaimLookahead},
		{"ClaimRevoking", testSharedClaimRevoking},
		{"ClaimCreating", testSharedClaimCreating},
		{"ClaimOrder", testSharedClaimOrder},
		{"ClaimLapses", testSharedClaimLapses},
		{"HoldBlocksClaims", testSharedHold},
		{"ConcurrentClaims", testSharedConcurrentClaims},
		{"Query", testSharedQuery},
		{"QueryPages", testSharedQueryPages},
		{"FindRequest", testSharedFindRequest},
		{"Owners", testSharedOwners},
		{"Stats", testSharedStats},
		{"OldestRevoking", testSharedOldestRevoking},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { tt.fn(t, h) })
	}
}

// replicas opens one store per name on a new backing store of h.
func replicas(t *testing.T, h SharedHarness, names ...string) []lease.SharedStore {
	t.Helper()
	open := h.Open(t)
	ss := make([]lease.SharedStore, len(names))
	for i, name := range names {
		s := open(t, name)
		t.Cleanup(func() { _ = s.Close() })
		ss[i] = s
	}
	return ss
}

// sharedLease is a valid lease in state st of owner, expiring at expire.
func sharedLease(t *testing.T, h SharedHarness, st lease.State, owner string, expire time.Time) lease.Lease {
	t.Helper()
	l := newLease(t, st, owner)
	l.IssueTime = h.Now().Add(-time.Minute)
	l.ExpireTime = expire
	l.MaxExpireTime = expire.Add(time.Hour)
	return l
}

func mustVersion(t *testing.T, s lease.SharedStore, id string) lease.Versioned {
	t.Helper()
	v, err := s.GetVersion(bg, id)
	if err != nil {
		t.Fatalf("GetVersion %s: %v", id, err)
	}
	return v
}

func mustCreate(t *testing.T, s lease.SharedStore, l lease.Lease, hold time.Duration) int64 {
	t.Helper()
	v, err := s.Create(bg, l, hold)
	if err != nil {
		t.Fatalf("Create %s: %v", l.ID, err)
	}
	return v
}

func mustPutIf(t *testing.T, s lease.SharedStore, l lease.Lease, version int64, hold time.Duration) int64 {
	t.Helper()
	v, err := s.PutIfVersion(bg, l, version, hold)
	if err != nil {
		t.Fatalf("PutIfVersion %s at %d: %v", l.ID, version, err)
	}
	if v <= version {
		t.Errorf("PutIfVersion %s at %d returned version %d, want it bumped", l.ID, version, v)
	}
	return v
}

// claimIDs claims one batch with s and returns the claimed IDs in order.
func claimIDs(t *testing.T, s lease.SharedStore, req lease.ClaimRequest) []string {
	t.Helper()
	c, err := s.ClaimDue(bg, req)
	if err != nil {
		t.Fatalf("ClaimDue(%+v): %v", req, err)
	}
	var out []string
	for _, v := range c.Leases {
		out = append(out, v.Lease.ID)
	}
	return out
}

func claimOne(t *testing.T, s lease.SharedStore, id string, req lease.ClaimRequest) lease.Versioned {
	t.Helper()
	c, err := s.ClaimDue(bg, req)
	if err != nil {
		t.Fatalf("ClaimDue: %v", err)
	}
	if len(c.Leases) != 1 || c.Leases[0].Lease.ID != id {
		t.Fatalf("ClaimDue claimed %v, want only %s", versionedIDs(c.Leases), id)
	}
	return c.Leases[0]
}

func versionedIDs(vs []lease.Versioned) []string {
	out := make([]string, len(vs))
	for i, v := range vs {
		out[i] = v.Lease.ID
	}
	return out
}

func wantConflict(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, lease.ErrConflict) {
		t.Errorf("%s = %v, want ErrConflict", what, err)
	}
}

// long is a TTL or hold that no case outlives.
const long = time.Hour

func claimReq(limit int) lease.ClaimRequest {
	return lease.ClaimRequest{Limit: limit, TTL: long}
}

func testSharedCreate(t *testing.T, h SharedHarness) {
	a := replicas(t, h, "a")[0]
	owner, other := "spiffe://example.org/a", "spiffe://example.org/b"
	l := sharedLease(t, h, lease.StateCreating, owner, h.Now().Add(time.Hour))
	l.RequestID = "req-1"
	v := mustCreate(t, a, l, long)
	got := mustVersion(t, a, l.ID)
	if got.Version != v || !reflect.DeepEqual(got.Lease, normalized(l)) {
		t.Errorf("GetVersion after Create = %+v at %d\nwant %+v at %d", got.Lease, got.Version, normalized(l), v)
	}

	sameID := l
	sameID.RequestID = "req-2"
	if _, err := a.Create(bg, sameID, long); !errors.Is(err, lease.ErrExists) || errors.Is(err, lease.ErrRequestExists) {
		t.Errorf("Create of an existing id = %v, want ErrExists (not ErrRequestExists)", err)
	}
	sameRequest := sharedLease(t, h, lease.StateCreating, owner, h.Now().Add(time.Hour))
	sameRequest.RequestID = l.RequestID
	if _, err := a.Create(bg, sameRequest, long); !errors.Is(err, lease.ErrRequestExists) || !errors.Is(err, lease.ErrExists) {
		t.Errorf("Create with the owner's request id = %v, want ErrRequestExists (an ErrExists)", err)
	}
	mustBeGone(t, a, sameRequest.ID)
	otherOwner := sameRequest
	otherOwner.Owner = other
	mustCreate(t, a, otherOwner, long)

	active := sharedLease(t, h, lease.StateActive, owner, h.Now().Add(time.Hour))
	if _, err := a.Create(bg, active, long); err == nil {
		t.Error("Create of an ACTIVE lease succeeded, want an error: Create stores CREATING leases")
	}
	mustBeGone(t, a, active.ID)
	mustGet(t, a, l)
}

// wantLimit checks that err is a refusal by the cap max, per owner or per
// role.
func wantLimit(t *testing.T, what string, err error, owner bool, max int) {
	t.Helper()
	le, ok := errors.AsType[*lease.LimitError](err)
	if !ok || !errors.Is(err, lease.ErrLimit) || le.Owner != owner || le.Max != max {
		t.Errorf("%s = %v, want a *LimitError (ErrLimit) with Owner %v, Max %d", what, err, owner, max)
	}
}

// CreateWithin counts the role's CREATING and ACTIVE leases, and the
// owner's among them; REVOKING ones and other roles' do not count; a
// refusal writes nothing; zero limits are Create.
func testSharedCreateWithin(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	x, y, z := "spiffe://example.org/x", "spiffe://example.org/y", "spiffe://example.org/z"
	later := h.Now().Add(time.Hour)
	held := sharedLease(t, h, lease.StateActive, x, later)
	revoking := sharedLease(t, h, lease.StateRevoking, x, later)
	otherRole := sharedLease(t, h, lease.StateActive, x, later)
	otherRole.Role = "writer"
	if err := lease.PutAll(bg, a, []lease.Lease{held, revoking, otherRole}); err != nil {
		t.Fatal(err)
	}
	lim := lease.Limits{Role: 3, Owner: 2}
	create := func(s lease.SharedStore, owner string) (lease.Lease, error) {
		l := sharedLease(t, h, lease.StateCreating, owner, later)
		_, err := s.CreateWithin(bg, l, long, lim)
		return l, err
	}
	if _, err := create(a, x); err != nil { // role 2, x 2
		t.Fatalf("CreateWithin under both caps: %v", err)
	}
	l, err := create(b, x)
	wantLimit(t, "CreateWithin past the owner's cap", err, true, 2)
	mustBeGone(t, a, l.ID)
	if _, err := create(b, y); err != nil { // role 3
		t.Fatalf("CreateWithin of another owner under the role's cap: %v", err)
	}
	l, err = create(a, z)
	wantLimit(t, "CreateWithin past the role's cap", err, false, 3)
	mustBeGone(t, b, l.ID)

	// A lease that leaves the live states frees its place.
	v := mustVersion(t, a, held.ID)
	gone := held
	gone.State = lease.StateRevoking
	mustPutIf(t, a, gone, v.Version, 0)
	if _, err := create(a, z); err != nil {
		t.Fatalf("CreateWithin after a lease of the role went REVOKING: %v", err)
	}

	// Within the caps, the id and request id checks are Create's.
	dup := sharedLease(t, h, lease.StateCreating, y, later)
	dup.ID = held.ID
	if _, err := b.CreateWithin(bg, dup, long, lease.Limits{Role: 100}); !errors.Is(err, lease.ErrExists) {
		t.Errorf("CreateWithin of an existing id = %v, want ErrExists", err)
	}
	// Zero limits cap nothing.
	for range 3 {
		l := sharedLease(t, h, lease.StateCreating, x, later)
		if _, err := a.CreateWithin(bg, l, long, lease.Limits{}); err != nil {
			t.Fatalf("CreateWithin with no limits: %v", err)
		}
	}
	if _, err := a.CreateWithin(bg, sharedLease(t, h, lease.StateCreating, x, later), long, lease.Limits{Role: -1}); err == nil {
		t.Error("CreateWithin with a negative cap succeeded, want an error")
	}
}

// Replicas creating at once never pass a cap together.
func testSharedConcurrentCreateWithin(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b", "c")
	const max, tries = 5, 10
	later := h.Now().Add(time.Hour)
	var (
		mu      sync.Mutex
		created []string
		wg      sync.WaitGroup
	)
	for i, s := range ss {
		for j := range tries {
			wg.Go(func() {
				l := sharedLease(t, h, lease.StateCreating, fmt.Sprintf("spiffe://example.org/w%d-%d", i, j), later)
				_, err := s.CreateWithin(bg, l, long, lease.Limits{Role: max})
				switch {
				case err == nil:
					mu.Lock()
					created = append(created, l.ID)
					mu.Unlock()
				case !errors.Is(err, lease.ErrLimit):
					t.Errorf("CreateWithin: %v, want nil or ErrLimit", err)
				}
			})
		}
	}
	wg.Wait()
	if len(created) != max {
		t.Errorf("%d of %d concurrent creations under a cap of %d succeeded, want exactly %d", len(created), len(ss)*tries, max, max)
	}
	ls, err := ss[0].Query(bg, lease.Query{Role: "readonly", States: []lease.State{lease.StateCreating}})
	if err != nil {
		t.Fatal(err)
	}
	if len(ls) != len(created) {
		t.Errorf("the store holds %d CREATING leases of the role, want the %d created", len(ls), len(created))
	}
}

// Every write and every claim bumps the version; GetVersion reads it.
func testSharedVersions(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	l := sharedLease(t, h, lease.StateCreating, "spiffe://example.org/a", h.Now().Add(time.Hour))
	v := mustCreate(t, a, l, long)
	if got := mustVersion(t, b, l.ID).Version; got != v {
		t.Fatalf("another replica's GetVersion after Create = %d, want %d", got, v)
	}
	last := v
	bumped := func(what string) int64 {
		t.Helper()
		got := mustVersion(t, b, l.ID).Version
		if got <= last {
			t.Errorf("version after %s = %d, want above %d", what, got, last)
		}
		last = got
		return got
	}

	l.State = lease.StateActive
	if got := mustPutIf(t, a, l, last, 0); got != bumped("PutIfVersion") {
		t.Errorf("PutIfVersion returned %d, GetVersion says %d", got, last)
	}
	l.ExpireTime = h.Now().Add(-time.Minute) // due
	if err := b.Put(bg, l); err != nil {
		t.Fatal(err)
	}
	bumped("Put")
	c := claimOne(t, b, l.ID, claimReq(10))
	if c.Version != bumped("ClaimDue") {
		t.Errorf("ClaimDue returned version %d, GetVersion says %d", c.Version, last)
	}
	if !reflect.DeepEqual(c.Lease, normalized(l)) {
		t.Errorf("claimed %+v\nwant %+v", c.Lease, normalized(l))
	}
	l.State = lease.StateRevoking
	mustPutIf(t, b, l, last, long)
	bumped("PutIfVersion with a hold")
	if err := b.DeleteIfVersion(bg, l.ID, last); err != nil {
		t.Errorf("DeleteIfVersion at the current version: %v", err)
	}
	mustBeGone(t, a, l.ID)
	if _, err := a.GetVersion(bg, l.ID); !errors.Is(err, lease.ErrNotFound) {
		t.Errorf("GetVersion of a deleted lease = %v, want ErrNotFound", err)
	}
}

// A PutIfVersion at a version read before anyone else's write (a Put,
// another PutIfVersion, a claim, a delete) writes nothing.
func testSharedPutConflict(t *testing.T, h SharedHarness) {
	for _, tt := range []struct {
		name string
		// write changes the lease behind the stale reader's back, and
		// returns it as it then is (State 0: deleted).
		write func(t *testing.T, s lease.SharedStore, cur lease.Versioned) lease.Lease
	}{
		{"AfterPut", func(t *testing.T, s lease.SharedStore, cur lease.Versioned) lease.Lease {
			l := cur.Lease
			l.ExpireTime = l.ExpireTime.Add(time.Hour)
			if err := s.Put(bg, l); err != nil {
				t.Fatal(err)
			}
			return l
		}},
		{"AfterPutIfVersion", func(t *testing.T, s lease.SharedStore, cur lease.Versioned) lease.Lease {
			l := cur.Lease
			l.State = lease.StateRevoking
			mustPutIf(t, s, l, cur.Version, 0)
			return l
		}},
		{"AfterClaim", func(t *testing.T, s lease.SharedStore, cur lease.Versioned) lease.Lease {
			l := cur.Lease
			l.ExpireTime = h.Now().Add(-time.Minute)
			mustPutIf(t, s, l, cur.Version, 0)
			claimOne(t, s, l.ID, claimReq(1))
			return l
		}},
		{"AfterDelete", func(t *testing.T, s lease.SharedStore, cur lease.Versioned) lease.Lease {
			if err := s.DeleteIfVersion(bg, cur.Lease.ID, cur.Version); err != nil {
				t.Fatal(err)
			}
			return lease.Lease{}
		}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ss := replicas(t, h, "a", "b")
			a, b := ss[0], ss[1]
			l := sharedLease(t, h, lease.StateActive, "spiffe://example.org/a", h.Now().Add(time.Hour))
			put(t, a, l)
			stale := mustVersion(t, a, l.ID)
			cur := mustVersion(t, b, l.ID)
			want := tt.write(t, b, cur)
			renewed := stale.Lease
			renewed.ExpireTime = h.Now().Add(3 * time.Hour)
			_, err := a.PutIfVersion(bg, renewed, stale.Version, 0)
			wantConflict(t, "stale PutIfVersion", err)
			if want.State == 0 {
				mustBeGone(t, b, l.ID)
				return
			}
			mustGet(t, b, want)
		})
	}
}

func testSharedDeleteConflict(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	l := sharedLease(t, h, lease.StateActive, "spiffe://example.org/a", h.Now().Add(time.Hour))
	put(t, a, l)
	stale := mustVersion(t, a, l.ID)
	l.ExpireTime = l.ExpireTime.Add(time.Hour)
	put(t, b, l)
	wantConflict(t, "DeleteIfVersion at a stale version", a.DeleteIfVersion(bg, l.ID, stale.Version))
	mustGet(t, b, l)
	cur := mustVersion(t, b, l.ID)
	wantConflict(t, "DeleteIfVersion at a version never reached", a.DeleteIfVersion(bg, l.ID, cur.Version+1))
	if err := a.DeleteIfVersion(bg, l.ID, cur.Version); err != nil {
		t.Fatalf("DeleteIfVersion at the current version: %v", err)
	}
	wantConflict(t, "DeleteIfVersion of a deleted lease", b.DeleteIfVersion(bg, l.ID, cur.Version))
	missing := sharedLease(t, h, lease.StateActive, "spiffe://example.org/a", h.Now())
	wantConflict(t, "DeleteIfVersion of a lease never stored", a.DeleteIfVersion(bg, missing.ID, 1))
}

// ACTIVE leases are claimed once due, or within the lookahead; Claimed.Now
// is the store's clock.
func testSharedClaimLookahead(t *testing.T, h SharedHarness) {
	a := replicas(t, h, "a")[0]
	now := h.Now()
	owner := "spiffe://example.org/a"
	due := sharedLease(t, h, lease.StateActive, owner, now.Add(-time.Minute))
	soon := sharedLease(t, h, lease.StateActive, owner, now.Add(30*time.Minute))
	late := sharedLease(t, h, lease.StateActive, owner, now.Add(3*time.Hour))
	put(t, a, due, soon, late)

	c, err := a.ClaimDue(bg, claimReq(10))
	if err != nil {
		t.Fatal(err)
	}
	if got := versionedIDs(c.Leases); !reflect.DeepEqual(got, []string{due.ID}) {
		t.Errorf("without lookahead claimed %v, want the due lease %s", got, due.ID)
	}
	if d := c.Now.Sub(h.Now()); d < -time.Minute || d > time.Minute {
		t.Errorf("Claimed.Now = %v, harness clock %v: want the store's clock", c.Now, h.Now())
	}
	got := claimIDs(t, a, lease.ClaimRequest{Limit: 10, TTL: long, Lookahead: time.Hour})
	if !reflect.DeepEqual(got, []string{soon.ID}) {
		t.Errorf("with an hour of lookahead claimed %v, want the lease due in 30 minutes %s", got, soon.ID)
	}
}

// REVOKING leases are claimed at once, whatever their expiry, unless a
// replica holds them.
func testSharedClaimRevoking(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	owner := "spiffe://example.org/a"
	free := sharedLease(t, h, lease.StateRevoking, owner, h.Now().Add(3*time.Hour))
	held := sharedLease(t, h, lease.StateActive, owner, h.Now().Add(3*time.Hour))
	put(t, a, free, held)
	held.State = lease.StateRevoking
	mustPutIf(t, a, held, mustVersion(t, a, held.ID).Version, long)
	if got := claimIDs(t, b, claimReq(10)); !reflect.DeepEqual(got, []string{free.ID}) {
		t.Errorf("b claimed %v, want only the REVOKING lease nobody holds (%s)", got, free.ID)
	}
	if got := claimIDs(t, a, claimReq(10)); len(got) != 0 {
		t.Errorf("a claimed %v, want nothing: its own hold counts too", got)
	}
}

// A CREATING lease is claimed once its creator's hold has lapsed: an
// issuance whose replica did not finish.
func testSharedClaimCreating(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	owner := "spiffe://example.org/a"
	busy := sharedLease(t, h, lease.StateCreating, owner, h.Now().Add(time.Hour))
	stalled := sharedLease(t, h, lease.StateCreating, owner, h.Now().Add(time.Hour))
	mustCreate(t, a, busy, long)
	v := mustCreate(t, a, stalled, h.Hold)
	h.Sleep(2 * h.Hold)
	c := claimOne(t, b, stalled.ID, claimReq(10))
	if c.Version <= v || !reflect.DeepEqual(c.Lease, normalized(stalled)) {
		t.Errorf("claimed %+v at %d, want %+v above version %d", c.Lease, c.Version, normalized(stalled), v)
	}
	stalled.State = lease.StateActive
	_, err := a.PutIfVersion(bg, stalled, v, 0)
	wantConflict(t, "the stalled creator's PutIfVersion", err)
	if got := claimIDs(t, b, claimReq(10)); len(got) != 0 {
		t.Errorf("b claimed %v, want nothing (a holds its issuance for an hour)", got)
	}
}

// REVOKING and CREATING leases come before ACTIVE ones; ACTIVE ones by
// expiry, the most overdue first.
func testSharedClaimOrder(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	now := h.Now()
	owner := "spiffe://example.org/a"
	late := sharedLease(t, h, lease.StateActive, owner, now.Add(-time.Minute))
	early := sharedLease(t, h, lease.StateActive, owner, now.Add(-time.Hour))
	revoking := sharedLease(t, h, lease.StateRevoking, owner, now.Add(time.Hour))
	creating := sharedLease(t, h, lease.StateCreating, owner, now.Add(time.Hour))
	put(t, a, late, early, revoking)
	mustCreate(t, a, creating, h.Hold)
	h.Sleep(2 * h.Hold)
	got := claimIDs(t, b, claimReq(10))
	if len(got) != 4 || !reflect.DeepEqual(got[2:], []string{early.ID, late.ID}) ||
		!reflect.DeepEqual(set2(got[:2]), map[string]bool{revoking.ID: true, creating.ID: true}) {
		t.Errorf("claimed %v, want REVOKING %s and CREATING %s (either order), then ACTIVE %s, %s",
			got, revoking.ID, creating.ID, early.ID, late.ID)
	}
	// A batch smaller than what is due takes the most overdue.
	c := replicas(t, h, "c")[0]
	put(t, c, sharedLease(t, h, lease.StateActive, owner, now.Add(-time.Minute)))
	first := sharedLease(t, h, lease.StateActive, owner, now.Add(-2*time.Hour))
	put(t, c, first)
	if got := claimIDs(t, c, claimReq(1)); !reflect.DeepEqual(got, []string{first.ID}) {
		t.Errorf("a batch of 1 claimed %v, want the most overdue %s", got, first.ID)
	}
}

func set2(ids []string) map[string]bool {
	out := map[string]bool{}
	for _, id := range ids {
		out[id] = true
	}
	return out
}

// A claim holds for its TTL, against every replica; once it lapses
// another replica claims the lease, which fences the first.
func testSharedClaimLapses(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	owner := "spiffe://example.org/a"
	held := sharedLease(t, h, lease.StateActive, owner, h.Now().Add(-time.Hour))
	put(t, a, held)
	claimOne(t, a, held.ID, claimReq(10))
	for _, s := range []lease.SharedStore{a, b} {
		if got := claimIDs(t, s, claimReq(10)); len(got) != 0 {
			t.Errorf("claimed %v under a live claim", got)
		}
	}

	short := sharedLease(t, h, lease.StateActive, owner, h.Now().Add(-time.Minute))
	put(t, a, short)
	ca := claimOne(t, a, short.ID, lease.ClaimRequest{Limit: 10, TTL: h.Hold})
	h.Sleep(2 * h.Hold)
	cb := claimOne(t, b, short.ID, claimReq(10))
	if cb.Version <= ca.Version {
		t.Errorf("b's claim at version %d, a's at %d: want it bumped", cb.Version, ca.Version)
	}
	revoking := ca.Lease
	revoking.State = lease.StateRevoking
	_, err := a.PutIfVersion(bg, revoking, ca.Version, long)
	wantConflict(t, "a's PutIfVersion after its claim lapsed", err)
	wantConflict(t, "a's DeleteIfVersion after its claim lapsed", a.DeleteIfVersion(bg, short.ID, ca.Version))
	v := mustPutIf(t, b, revoking, cb.Version, long)
	if err := b.DeleteIfVersion(bg, short.ID, v); err != nil {
		t.Errorf("b's DeleteIfVersion under its claim: %v", err)
	}
	mustBeGone(t, a, short.ID)
}

// PutIfVersion with a hold keeps the lease from every replica's claims
// until the hold lapses; with none it releases the lease at once.
func testSharedHold(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b")
	a, b := ss[0], ss[1]
	owner := "spiffe://example.org/a"
	l := sharedLease(t, h, lease.StateActive, owner, h.Now().Add(-time.Minute))
	put(t, a, l)
	c := claimOne(t, a, l.ID, claimReq(10))
	l.State = lease.StateRevoking
	v := mustPutIf(t, a, l, c.Version, long)
	if got := claimIDs(t, b, claimReq(10)); len(got) != 0 {
		t.Errorf("b claimed %v while a holds the lease", got)
	}
	l.Attempts, l.LastError = 1, "drop: refused"
	v = mustPutIf(t, a, l, v, 0)
	c = claimOne(t, b, l.ID, claimReq(10))
	if c.Version <= v {
		t.Errorf("claimed at version %d after a released it at %d", c.Version, v)
	}
	// b's hold lapses on the store's clock.
	v = mustPutIf(t, b, l, c.Version, h.Hold)
	h.Sleep(2 * h.Hold)
	if c = claimOne(t, a, l.ID, claimReq(10)); c.Version <= v {
		t.Errorf("claimed at version %d after b's hold at %d lapsed", c.Version, v)
	}
}

// Replicas claiming at the same time get disjoint batches, which together
// are every due lease.
func testSharedConcurrentClaims(t *testing.T, h SharedHarness) {
	ss := replicas(t, h, "a", "b", "c")
	now := h.Now()
	due := map[string]bool{}
	var ls []lease.Lease
	for i := range 200 {
		st := lease.StateActive
		if i%10 == 0 {
			st = lease.StateRevoking
		}
		l := sharedLease(t, h, st, fmt.Sprintf("spiffe://example.org/w%d", i%7), now.Add(-time.Duration(i)*time.Second))
		ls = append(ls, l)
		due[l.ID] = true
	}
	for i := range 20 {
		ls = append(ls, sharedLease(t, h, lease.StateActive, "spiffe://example.org/x", now.Add(time.Hour+time.Duration(i)*time.Second)))
	}
	if err := lease.PutAll(bg, ss[0], ls); err != nil {
		t.Fatal(err)
	}
	var (
		mu  sync.Mutex
		got = map[string]int{} // lease → replica
		wg  sync.WaitGroup
	)
	for i, s := range ss {
		wg.Go(func() {
			for range 200 {
				c, err := s.ClaimDue(bg, lease.ClaimRequest{Limit: 7, TTL: long})
				if err != nil {
					t.Errorf("ClaimDue: %v", err)
					return
				}
				if len(c.Leases) == 0 {
					return
				}
				mu.Lock()
				for _, v := range c.Leases {
					if other, dup := got[v.Lease.ID]; dup {
						t.Errorf("%s claimed by replicas %d and %d", v.Lease.ID, other, i)
					}
					got[v.Lease.ID] = i
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	for id := range got {
		if !due[id] {
			t.Errorf("%s claimed, not due", id)
		}
	}
	for id := range due {
		if _, ok := got[id]; !ok {
			t.Errorf("due lease %s never claimed", id)
		}
	}
}
