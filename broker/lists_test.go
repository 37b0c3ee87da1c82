package broker

import (
	"context"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// dropBackend is a lease.Backend whose users always drop; it records which.
type dropBackend struct {
	mu    sync.Mutex
	drops []string
}

func (b *dropBackend) Drop(_ context.Context, l lease.Lease) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.drops = append(b.drops, l.Owner)
	return nil
}

func (b *dropBackend) Extend(context.Context, lease.Lease) error { return nil }

// listServer is a Server and a registry sweep on a real lease.Manager over
// a MemStore, with no database: enough for the paths that only list and
// revoke leases.
func listServer(t *testing.T) (*Server, *registrySweep, *lease.Manager, *dropBackend, *time.Time) {
	t.Helper()
	now := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	b := &dropBackend{}
	store := lease.NewMemStore()
	m, err := lease.NewManager(lease.Config{Store: store, Backend: b, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Load(context.Background()); err != nil {
		t.Fatal(err)
	}
	reg, err := openRegistry(context.Background(), store, filepath.Join(t.TempDir(), "dereg.json"))
	if err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	revoker := bulkRevoker{leases: m}
	s := NewServer(ServerConfig{Leases: m, registry: reg, revoker: revoker, Now: func() time.Time { return now },
		Logger: log})
	return s, newRegistrySweep(reg, m, revoker, nil, nil, log), m, b, &now
}

func issueFor(t *testing.T, m *lease.Manager, owner string, issued time.Time) lease.Lease {
	t.Helper()
	id, err := lease.NewID()
	if err != nil {
		t.Fatal(err)
	}
	l, err := m.Issue(context.Background(), lease.Lease{ID: id, Role: "reader", Owner: owner, Database: "pg",
		Username: "cb_" + id[:8], IssueTime: issued, ExpireTime: issued.Add(time.Hour), MaxExpireTime: issued.Add(time.Hour)},
		func(ctx context.Context, intent func(context.Context) error) error { return intent(ctx) })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// TestObserveRegistryRevokesGoneOwners: a complete listing without an
// owner revokes that owner's leases, and only those.
func TestObserveRegistryRevokesGoneOwners(t *testing.T) {
	_, sweep, m, b, now := listServer(t)
	kept, gone := "spiffe://example.org/kept", "spiffe://example.org/gone"
	for range 3 {
		issueFor(t, m, kept, *now)
		issueFor(t, m, gone, *now)
	}
	sweep.observe(context.Background(), *now, map[string]time.Time{kept: *now})
	if len(b.drops) != 3 || slices.ContainsFunc(b.drops, func(o string) bool { return o != gone }) {
		t.Errorf("drops = %v, want the 3 leases of %s", b.drops, gone)
	}
	left, err := m.List(context.Background(), lease.Query{})
	if err != nil || len(left) != 3 || slices.ContainsFunc(left, func(l lease.Lease) bool { return l.Owner != kept }) {
		t.Errorf("left = %v %v", left, err)
	}
}

// TestListLeasesIssueOrder: a workload still sees its own leases, in issue
// order, whatever their ids, and nobody else's.
func TestListLeasesIssueOrder(t *testing.T) {
	s, _, m, _, now := listServer(t)
	me := spiffeid.RequireFromString("spiffe://example.org/me")
	var want []string
	for i := range 6 {
		want = append(want, issueFor(t, m, me.String(), now.Add(time.Duration(i)*time.Second)).ID)
		issueFor(t, m, "spiffe://example.org/other", *now)
	}
	ctx := identity.WithCaller(context.Background(), me)
	resp, err := credentialService{Server: s}.ListLeases(ctx, &pb.ListLeasesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range resp.GetLeases() {
		got = append(got, l.GetId())
	}
	if !slices.Equal(got, want) {
		t.Errorf("ListLeases = %v, want %v (issue order)", got, want)
	}
}
