package spireregistry

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
)

// These tests cover what a real SPIRE server will not do on demand
// (malformed entries, a looping cursor, a failure on page two) with a fake
// entry service behind real mTLS from a DevCA. spireregistry_test.go runs the
// same watcher against real SPIRE.

var (
	td         = brokertest.TrustDomain
	serverID   = spiffeid.RequireFromPath(td, "/spire/server")
	brokerID   = brokertest.ServerID
	testCAOnce sync.Once
	testCA     *identity.DevCA
)

// devCA is one CA for all the tests of the package.
func devCA(t *testing.T) *identity.DevCA {
	t.Helper()
	testCAOnce.Do(func() { testCA = brokertest.NewCA(t) })
	return testCA
}

func source(t *testing.T, id spiffeid.ID) identity.Source {
	t.Helper()
	src, err := devCA(t).Source(id)
	if err != nil {
		t.Fatal(err)
	}
	return src
}

func entry(id string, path string, createdAt int64) *types.Entry {
	tdName, p, _ := strings.Cut(strings.TrimPrefix(path, "spiffe://"), "/")
	return &types.Entry{Id: id, SpiffeId: &types.SPIFFEID{TrustDomain: tdName, Path: "/" + p}, CreatedAt: createdAt}
}

// fakeEntries pages through entries with the index of the next entry as the
// page token, like SPIRE's cursor over entry IDs.
type fakeEntries struct {
	entryv1.UnimplementedEntryServer
	entries    []*types.Entry
	failPage   int  // 1-based page that fails; 0 for none
	loopCursor bool // hand out the first page's token forever
	calls      atomic.Int32
}

func (f *fakeEntries) ListEntries(_ context.Context, req *entryv1.ListEntriesRequest) (*entryv1.ListEntriesResponse, error) {
	page := int(f.calls.Add(1))
	if page == f.failPage {
		return nil, status.Error(codes.Internal, "datastore hiccup")
	}
	start := 0
	if req.PageToken != "" {
		start, _ = strconv.Atoi(req.PageToken)
	}
	end := min(start+int(req.PageSize), len(f.entries))
	resp := &entryv1.ListEntriesResponse{Entries: f.entries[start:end]}
	switch {
	case f.loopCursor:
		resp.NextPageToken = strconv.Itoa(int(req.PageSize))
	case end < len(f.entries):
		resp.NextPageToken = strconv.Itoa(end)
	}
	return resp, nil
}

// serveFake serves f over mTLS as presentedID and returns its address.
func serveFake(t *testing.T, f *fakeEntries, presentedID spiffeid.ID) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer(grpc.Creds(credentials.NewTLS(identity.ServerTLSConfig(source(t, presentedID), td))))
	entryv1.RegisterEntryServer(s, f)
	go s.Serve(l) //nolint:errcheck // ends with Stop
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

func newWatcher(t *testing.T, cfg Config) *Watcher {
	t.Helper()
	if cfg.ServerID.IsZero() {
		cfg.ServerID = serverID
	}
	if cfg.Source == nil {
		cfg.Source = source(t, brokerID)
	}
	w, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return w
}

func TestNewRejects(t *testing.T) {
	src := source(t, brokerID)
	for _, tc := range []struct {
		name string
		cfg  Config
		want string
	}{
		{"no address", Config{ServerID: serverID, Source: src}, "address is required"},
		{"address without port", Config{Address: "spire.example.org", ServerID: serverID, Source: src}, "not host:port"},
		{"no server id", Config{Address: "127.0.0.1:1", Source: src}, "server id is required"},
		{"no source", Config{Address: "127.0.0.1:1", ServerID: serverID}, "source is required"},
		{"negative interval", Config{Address: "127.0.0.1:1", ServerID: serverID, Source: src, Interval: -time.Second}, "negative interval"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.cfg)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("New: %v, want error containing %q", err, tc.want)
			}
		})
	}
}

func TestPollReadsAllPages(t *testing.T) {
	f := &fakeEntries{entries: []*types.Entry{
		entry("1", "spiffe://example.org/orders/api", 100),
		entry("2", "spiffe://example.org/credbroker", 50),
		entry("3", "spiffe://example.org/orders/api", 300), // newest for orders/api
		entry("4", "spiffe://other.org/billing", 0),        // kept: the broker judges
		entry("5", "spiffe://example.org/orders/api", 200),
	}}
	addr := serveFake(t, f, serverID)
	at := time.Unix(1_000, 0)
	w := newWatcher(t, Config{Address: addr, Now: func() time.Time { return at }})
	w.pageSize = 2

	snap, err := w.Poll(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if got := f.calls.Load(); got != 3 {
		t.Errorf("ListEntries called %d times, want 3 pages", got)
	}
	want := map[string]time.Time{
		"spiffe://example.org/orders/api": time.Unix(300, 0),
		"spiffe://example.org/credbroker": time.Unix(50, 0),
		"spiffe://other.org/billing":      {},
	}
	if len(snap.IDs) != len(want) {
		t.Errorf("IDs = %v, want %v", snap.IDs, want)
	}
	for id, created := range want {
		if got, ok := snap.IDs[id]; !ok || !got.Equal(created) {
			t.Errorf("IDs[%s] = %v, %v; want %v", id, got, ok, created)
		}
	}
	if !snap.At.Equal(at) {
		t.Errorf("At = %v, want %v", snap.At, at)
	}
	if st := w.Status(); !st.Healthy || !st.LastSuccess.Equal(at) || st.LastError != "" {
		t.Errorf("Status = %+v, want healthy at %v", st, at)
	}
}

// Any flaw anywhere in a listing must yield no snapshot at all: a partial
// one would read as deregistrations.
func TestPollFailsWhole(t *testing.T) {
	good := []*types.Entry{
		entry("1", "spiffe://example.org/a", 1),
		entry("2", "spiffe://example.org/b", 1),
		entry("3", "spiffe://example.org/c", 1),
	}
	for _, tc := range []struct {
		name string
		f    *fakeEntries
		want string
	}{
		{"error on page two", &fakeEntries{entries: good, failPage: 2}, "page 2"},
		{"entry without spiffe id", &fakeEntries{entries: append(good[:2:2], &types.Entry{Id: "x"})}, `entry "x" has no spiffe id`},
		{"entry with bad trust domain", &fakeEntries{entries: append(good[:2:2], entry("y", "spiffe://Bad TD/a", 1))}, `entry "y"`},
		{"entry with bad path", &fakeEntries{entries: append(good[:2:2], &types.Entry{Id: "z", SpiffeId: &types.SPIFFEID{TrustDomain: "example.org", Path: "no-slash"}})}, `entry "z"`},
		{"looping cursor", &fakeEntries{entries: good, loopCursor: true}, "repeats"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			w := newWatcher(t, Config{Address: serveFake(t, tc.f, serverID)})
			w.pageSize = 1
			snap, err := w.Poll(t.Context())
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Poll: %v, want error containing %q", err, tc.want)
			}
			if snap.IDs != nil {
				t.Errorf("failed Poll returned IDs %v", snap.IDs)
			}
			if st := w.Status(); st.Healthy || st.LastError != err.Error() || st.Failures != 1 {
				t.Errorf("Status = %+v, want unhealthy with %q", st, err)
			}
		})
	}
}

func TestPollRefusesImpostorServer(t *testing.T) {
	impostor := spiffeid.RequireFromPath(td, "/not/spire")
	w := newWatcher(t, Config{Address: serveFake(t, &fakeEntries{}, impostor)})
	if _, err := w.Poll(t.Context()); err == nil {
		t.Fatal("Poll succeeded against a server presenting " + impostor.String())
	}
	if w.Status().Healthy {
		t.Error("Status healthy after a refused server")
	}
}

func TestRunDuringOutage(t *testing.T) {
	addr := brokertest.FreeAddr(t) // nothing listens on it

	var logs brokertest.SyncBuffer // written from Run's goroutine
	var clock atomic.Int64         // seconds; the test moves it
	w := newWatcher(t, Config{
		Address:  addr,
		Interval: 10 * time.Millisecond,
		Logger:   slog.New(slog.NewTextHandler(&logs, nil)),
		Now:      func() time.Time { return time.Unix(clock.Load(), 0) },
	})
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	var snapshots atomic.Int32
	go func() {
		done <- w.Run(ctx, func(context.Context, Snapshot) { snapshots.Add(1) })
	}()

	const msg = "cannot list spire entries"
	brokertest.WaitFor(t, 30*time.Second, "5 failures", func() bool { return w.Status().Failures >= 5 })
	if n := logs.Count(msg); n != 1 {
		t.Errorf("%d failure lines after %d failures of the same error, want 1:\n%s", n, w.Status().Failures, logs.String())
	}
	clock.Add(61) // a minute later the outage is logged again
	failures := w.Status().Failures
	brokertest.WaitFor(t, 30*time.Second, "more failures", func() bool { return w.Status().Failures >= failures+3 })
	if n := logs.Count(msg); n != 2 {
		t.Errorf("%d failure lines a minute into the outage, want 2", n)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Run = %v, want nil after cancel", err)
	}
	if n := snapshots.Load(); n != 0 {
		t.Errorf("onSnapshot called %d times while the server was unreachable", n)
	}
	st := w.Status()
	if st.Healthy || !st.LastSuccess.IsZero() || !strings.Contains(st.LastError, addr) {
		t.Errorf("Status = %+v, want unhealthy, never successful, error naming %s", st, addr)
	}
}
