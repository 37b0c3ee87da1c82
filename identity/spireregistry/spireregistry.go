package spireregistry

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/credbroker/credbroker/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	entryv1 "github.com/spiffe/spire-api-sdk/proto/spire/api/server/entry/v1"
	"github.com/spiffe/spire-api-sdk/proto/spire/api/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
)

// DefaultInterval is the poll interval when Config.Interval is zero.
const DefaultInterval = 5 * time.Second

const (
	// defaultPageSize bounds one ListEntries response; SPIRE's own CLI uses
	// 500.
	defaultPageSize = 500
	// pageTimeout bounds one ListEntries call, so a hung server shows as an
	// error instead of stalling the loop.
	pageTimeout = 10 * time.Second
	// errorLogEvery is how often a persisting failure is logged again.
	errorLogEvery = time.Minute
)

// errClosed is returned by listings after Close.
var errClosed = errors.New("spireregistry: watcher is closed")

// Config configures a Watcher.
type Config struct {
	// Address of the SPIRE server API, host:port (TCP, mTLS).
	Address string
	// ServerID is the SPIFFE ID the server must present, normally
	// spiffe://<trust domain>/spire/server.
	ServerID spiffeid.ID
	// Source supplies the broker's SVID, which must come from an admin entry,
	// and the bundle that verifies the server.
	Source identity.Source
	// Interval between polls of Run; DefaultInterval when zero.
	Interval time.Duration
	// Logger receives failures (rate-limited) and recoveries; nothing is
	// logged when nil.
	Logger *slog.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Snapshot is one complete listing of the server's entries.
type Snapshot struct {
	// At is when the listing began: an entry deleted before At is absent, one
	// created before At and not deleted during the listing is present.
	At time.Time
	// IDs maps each SPIFFE ID that an entry yields to the newest CreatedAt
	// among those entries (zero if SPIRE reported none).
	IDs map[string]time.Time
}

// Status is the health of the watch.
type Status struct {
	// Healthy is true when the last listing succeeded. It is false before the
	// first one.
	Healthy bool
	// LastSuccess is when the last successful listing began; zero if none.
	LastSuccess time.Time
	// LastError describes the last failed listing; empty once a listing
	// succeeds again.
	LastError string
	// LastErrorAt is when LastError happened.
	LastErrorAt time.Time
	// Failures counts listings that failed in a row.
	Failures int
}

// Watcher polls a SPIRE server's registration entries. See the package
// documentation for what it promises when the server is unreachable.
type Watcher struct {
	cfg Config
	log *slog.Logger
	now func() time.Time
	// pageSize is defaultPageSize; tests lower it to cross pages.
	pageSize int32

	connMu sync.Mutex
	conn   *grpc.ClientConn // nil until the first listing and after Close
	closed bool

	mu        sync.Mutex // guards the fields below
	status    Status
	loggedErr string    // the failure last logged
	loggedAt  time.Time // when it was logged
	downSince time.Time // first failure of the current run of failures
}

// New checks cfg. It starts no goroutine and makes no connection: the first
// Poll or Run creates the gRPC client. Close releases it.
func New(cfg Config) (*Watcher, error) {
	switch {
	case cfg.Address == "":
		return nil, errors.New("spireregistry: address is required")
	case cfg.ServerID.IsZero():
		return nil, errors.New("spireregistry: server id is required")
	case cfg.Source == nil:
		return nil, errors.New("spireregistry: source is required")
	case cfg.Interval < 0:
		return nil, fmt.Errorf("spireregistry: negative interval %s", cfg.Interval)
	}
	if _, _, err := net.SplitHostPort(cfg.Address); err != nil {
		return nil, fmt.Errorf("spireregistry: address %q is not host:port: %w", cfg.Address, err)
	}
	if cfg.Interval == 0 {
		cfg.Interval = DefaultInterval
	}
	w := &Watcher{cfg: cfg, log: cfg.Logger, now: cfg.Now, pageSize: defaultPageSize}
	if w.log == nil {
		w.log = slog.New(slog.DiscardHandler)
	}
	if w.now == nil {
		w.now = time.Now
	}
	return w, nil
}

// Close releases the connection to the server. Call it after Run returned;
// listings fail afterwards.
func (w *Watcher) Close() error {
	w.connMu.Lock()
	defer w.connMu.Unlock()
	w.closed = true
	if w.conn == nil {
		return nil
	}
	err := w.conn.Close()
	w.conn = nil
	return err
}

// client returns the entry client, creating the connection on first use.
// grpc.NewClient starts goroutines, which New must not.
func (w *Watcher) client() (entryv1.EntryClient, error) {
	w.connMu.Lock()
	defer w.connMu.Unlock()
	if w.closed {
		return nil, errClosed
	}
	if w.conn == nil {
		conn, err := grpc.NewClient(w.cfg.Address,
			grpc.WithTransportCredentials(credentials.NewTLS(identity.ClientTLSConfig(w.cfg.Source, w.cfg.ServerID))),
			// gRPC's default reconnect backoff grows to two minutes; a server
			// back from an outage should be seen within about one interval.
			grpc.WithConnectParams(grpc.ConnectParams{
				Backoff: backoff.Config{
					BaseDelay:  min(time.Second, w.cfg.Interval),
					Multiplier: 1.6,
					Jitter:     0.2,
					MaxDelay:   w.cfg.Interval,
				},
				MinConnectTimeout: pageTimeout,
			}),
		)
		if err != nil {
			return nil, fmt.Errorf("spireregistry: client for %q: %w", w.cfg.Address, err)
		}
		w.conn = conn
	}
	return entryv1.NewEntryClient(w.conn), nil
}

// Poll lists all entries once and records the outcome in Status. It returns a
// snapshot only for a complete listing; on error the snapshot is empty and
// must not be read as "no entries". It does not log: the caller handles the
// error.
func (w *Watcher) Poll(ctx context.Context) (Snapshot, error) {
	at := w.now()
	ids, err := w.list(ctx)
	if err != nil {
		if ctx.Err() == nil { // our own shutdown says nothing about SPIRE
			w.recordFailure(at, err)
		}
		return Snapshot{}, err
	}
	w.recordSuccess(at)
	return Snapshot{At: at, IDs: ids}, nil
}

// Run polls now and then every Interval until ctx ends, then returns nil.
// After each complete listing it calls onSnapshot (in Run's goroutine, so
// snapshots arrive in order and never concurrently). After a failed listing
// it calls nothing: the outage is recorded in Status and logged, once per
// distinct error and then at most once a minute while it lasts.
func (w *Watcher) Run(ctx context.Context, onSnapshot func(context.Context, Snapshot)) error {
	t := time.NewTicker(w.cfg.Interval)
	defer t.Stop()
	for {
		snap, err := w.Poll(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err != nil:
			w.logFailure(err)
		default:
			onSnapshot(ctx, snap)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Status returns the health of the watch.
func (w *Watcher) Status() Status {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.status
}

// list reads every page. Any failure, including an entry it cannot read,
// fails the whole listing: a partial set of IDs would look like
// deregistrations.
func (w *Watcher) list(ctx context.Context) (map[string]time.Time, error) {
	client, err := w.client()
	if err != nil {
		return nil, err
	}
	ids := make(map[string]time.Time)
	req := &entryv1.ListEntriesRequest{
		PageSize:   w.pageSize,
		OutputMask: &types.EntryMask{SpiffeId: true, CreatedAt: true},
	}
	seen := make(map[string]bool) // page tokens, to stop a looping cursor
	for page := 1; ; page++ {
		resp, err := listPage(ctx, client, req)
		if err != nil {
			return nil, fmt.Errorf("spireregistry: list entries from %s (page %d): %w", w.cfg.Address, page, err)
		}
		for _, e := range resp.GetEntries() {
			id, err := entryID(e)
			if err != nil {
				return nil, fmt.Errorf("spireregistry: list entries from %s: %w", w.cfg.Address, err)
			}
			var created time.Time
			if c := e.GetCreatedAt(); c != 0 {
				created = time.Unix(c, 0)
			}
			if prev, ok := ids[id]; !ok || created.After(prev) {
				ids[id] = created
			}
		}
		next := resp.GetNextPageToken()
		if next == "" {
			return ids, nil
		}
		if seen[next] {
			return nil, fmt.Errorf("spireregistry: list entries from %s: page token %q repeats", w.cfg.Address, next)
		}
		seen[next] = true
		req.PageToken = next
	}
}

func listPage(ctx context.Context, client entryv1.EntryClient, req *entryv1.ListEntriesRequest) (*entryv1.ListEntriesResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, pageTimeout)
	defer cancel()
	return client.ListEntries(ctx, req)
}

func entryID(e *types.Entry) (string, error) {
	sid := e.GetSpiffeId()
	if sid == nil {
		return "", fmt.Errorf("entry %q has no spiffe id", e.GetId())
	}
	td, err := spiffeid.TrustDomainFromString(sid.GetTrustDomain())
	if err != nil {
		return "", fmt.Errorf("entry %q: %w", e.GetId(), err)
	}
	id, err := spiffeid.FromPath(td, sid.GetPath())
	if err != nil {
		return "", fmt.Errorf("entry %q: %w", e.GetId(), err)
	}
	return id.String(), nil
}

func (w *Watcher) recordSuccess(at time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.status.Failures > 0 {
		// Logged here rather than in Run so that a recovery seen by Poll (the
		// broker's first sync) closes the outage in the log too.
		w.log.Info("spireregistry: spire server listing succeeds again",
			"address", w.cfg.Address,
			"failures", w.status.Failures,
			"down_since", w.downSince)
	}
	w.status = Status{Healthy: true, LastSuccess: at}
	w.loggedErr, w.loggedAt, w.downSince = "", time.Time{}, time.Time{}
}

func (w *Watcher) recordFailure(at time.Time, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.status.Failures == 0 {
		w.downSince = at
	}
	w.status.Healthy = false
	w.status.LastError = err.Error()
	w.status.LastErrorAt = at
	w.status.Failures++
}

// logFailure logs a failed listing unless the same error was logged less
// than errorLogEvery ago: a server down for an hour at a 5 s interval should
// leave about sixty lines, not seven hundred.
func (w *Watcher) logFailure(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	msg := err.Error()
	now := w.now()
	if msg == w.loggedErr && now.Sub(w.loggedAt) < errorLogEvery {
		return
	}
	w.loggedErr, w.loggedAt = msg, now
	w.log.Error("spireregistry: cannot list spire entries; revoking nothing until a listing succeeds",
		"address", w.cfg.Address,
		"error", err,
		"failures", w.status.Failures,
		"last_success", w.status.LastSuccess)
}
