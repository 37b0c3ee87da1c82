package client_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/credbroker/credbroker/client"
	"github.com/credbroker/credbroker/internal/brokertest"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// events records a watcher's events.
type events struct {
	mu  sync.Mutex
	evs []client.Event
}

func (r *events) add(ev client.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, ev)
	r.mu.Unlock()
}

func (r *events) count(k client.EventKind) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	n := 0
	for _, ev := range r.evs {
		if ev.Kind == k {
			n++
		}
	}
	return n
}

// last returns the last event of kind k.
func (r *events) last(k client.EventKind) client.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := len(r.evs) - 1; i >= 0; i-- {
		if r.evs[i].Kind == k {
			return r.evs[i]
		}
	}
	return client.Event{}
}

// loop runs query on 4 goroutines every 10ms until stop, and returns the
// number of queries, the failures, and the users they ran as.
type loop struct {
	mu       sync.Mutex
	ok       int
	failures []string
	users    map[string]bool
	stop     chan struct{}
	wg       sync.WaitGroup
}

func runLoop(query func(ctx context.Context) (string, error)) *loop {
	l := &loop{users: map[string]bool{}, stop: make(chan struct{})}
	for range 4 {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				case <-time.After(10 * time.Millisecond):
				}
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				user, err := query(ctx)
				cancel()
				l.mu.Lock()
				if err != nil {
					l.failures = append(l.failures, err.Error())
				} else {
					l.ok++
					l.users[user] = true
				}
				l.mu.Unlock()
			}
		})
	}
	return l
}

func (l *loop) finish(t *testing.T, minUsers int) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if len(l.failures) != 0 {
		t.Fatalf("%d of %d queries failed; first: %s", len(l.failures), l.ok+len(l.failures), l.failures[0])
	}
	if l.ok < 50 || len(l.users) < minUsers {
		t.Fatalf("%d queries as %d users; want at least 50 as %d", l.ok, len(l.users), minUsers)
	}
	t.Logf("%d queries, 0 failed, as %d users", l.ok, len(l.users))
}

// TestPgxQueryLoopAcrossRotations: a pgx pool following a watcher keeps
// answering a query loop across two rotations (2s ttl, 6s max_ttl, 2s
// overlap) with zero failures, moving to each new user; Close leaves no
// user behind.
func TestPgxQueryLoopAcrossRotations(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var evs events
	w, err := e.client().Watch(ctx, "pg-orders", client.OnEvent(evs.add))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	cfg, err := w.PgxPoolConfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = 4
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	l := runLoop(func(ctx context.Context) (string, error) {
		var user string
		var n int
		err := pool.QueryRow(ctx, "SELECT current_user, count(*) FROM "+e.table).Scan(&user, &n)
		if err == nil && n != 3 {
			err = fmt.Errorf("%d rows", n)
		}
		return user, err
	})
	brokertest.WaitFor(t, 30*time.Second, "two rotations", func() bool { return evs.count(client.Rotated) >= 2 })
	prev := evs.last(client.Rotated).Previous
	brokertest.WaitFor(t, 15*time.Second, "the second rotation's previous user dropped", func() bool { return !e.pgUserExists(prev.Username) })
	time.Sleep(300 * time.Millisecond) // queries after the drop
	l.finish(t, 3)
	pool.Close()
	if n := evs.count(client.Disconnected) + evs.count(client.Ended); n != 0 {
		t.Errorf("%d disconnections or endings", n)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.pgUsers(); n != 0 {
		t.Fatalf("%d users left after Close", n)
	}
	if _, err := w.Current(); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Current after Close: %v, want ErrClosed", err)
	}
}

// TestMySQLConnectorAcrossRotation: database/sql with the watcher's
// connector keeps answering a query loop on MariaDB across a rotation with
// zero failures; Close leaves no account behind.
func TestMySQLConnectorAcrossRotation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var evs events
	w, err := e.client().Watch(ctx, "shop-orders", client.OnEvent(evs.add))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	db := sql.OpenDB(w.MySQLConnector(nil))
	db.SetMaxOpenConns(4)
	l := runLoop(func(ctx context.Context) (string, error) {
		var user string
		var n int
		err := db.QueryRowContext(ctx, "SELECT USER(), count(*) FROM orders").Scan(&user, &n)
		if err == nil && n != 2 {
			err = fmt.Errorf("%d rows", n)
		}
		user, _, _ = strings.Cut(user, "@")
		return user, err
	})
	brokertest.WaitFor(t, 30*time.Second, "a rotation", func() bool { return evs.count(client.Rotated) >= 1 })
	prev := evs.last(client.Rotated).Previous
	brokertest.WaitFor(t, 15*time.Second, "the previous account dropped", func() bool { return !e.myUserExists(prev.Username) })
	time.Sleep(300 * time.Millisecond)
	l.finish(t, 2)
	db.Close()
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.myUsers(); n != 0 {
		t.Fatalf("%d accounts left after Close", n)
	}
}

// TestWatcherEndsOnRevocation: an operator's revoke of the watcher's lease
// ends the watcher with ErrRevoked; a deregistration with ErrDenied.
func TestWatcherEndsOnRevocation(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	admin := e.admin()
	for _, tc := range []struct {
		name   string
		cut    func(c *client.Credential) error
		want   error
		reason string
	}{
		{"revoke", func(c *client.Credential) error {
			_, err := admin.RevokeLeases(ctx, &pb.RevokeLeasesRequest{LeaseIdPrefix: c.LeaseID})
			return err
		}, client.ErrRevoked, "ABORTED"},
		{"deregistration", func(c *client.Credential) error {
			_, err := admin.DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: ordersID.String()})
			return err
		}, client.ErrDenied, "PERMISSION_DENIED"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var evs events
			w, err := e.client().Watch(ctx, "pg-orders", client.OnEvent(evs.add))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.Close() })
			cur, err := w.Current()
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.cut(cur); err != nil {
				t.Fatal(err)
			}
			select {
			case <-w.Done():
			case <-time.After(15 * time.Second):
				t.Fatal("the watcher did not end")
			}
			if !errors.Is(w.Err(), tc.want) {
				t.Fatalf("Err = %v, want %v", w.Err(), tc.want)
			}
			if _, err := w.Current(); !errors.Is(err, tc.want) {
				t.Fatalf("Current: %v, want %v", err, tc.want)
			}
			if ev := evs.last(client.Ended); !errors.Is(ev.Err, tc.want) {
				t.Fatalf("Ended event: %+v", ev)
			}
			if e.pgUserExists(cur.Username) {
				t.Fatal("the user outlived the revocation")
			}
			if err := w.Close(); err != nil {
				t.Fatalf("Close after the end: %v", err)
			}
		})
	}
}

// TestWatcherReconnects: a broker restart breaks the stream; the watcher
// reconnects and is issued a new credential, and Close revokes both.
func TestWatcherReconnects(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	var evs events
	w, err := e.client().Watch(ctx, "pg-orders", client.WatchBackoff(50*time.Millisecond, time.Second), client.OnEvent(evs.add))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Close() })
	first, _ := w.Current()
	e.stop()
	e.start()
	brokertest.WaitFor(t, 20*time.Second, "a new credential after the restart", func() bool { return evs.count(client.Issued) >= 2 })
	if evs.count(client.Disconnected) == 0 {
		t.Error("no Disconnected event")
	}
	ev := evs.last(client.Issued)
	if ev.Previous == nil || ev.Previous.LeaseID != first.LeaseID || ev.Credential.LeaseID == first.LeaseID {
		t.Fatalf("Issued after the reconnection: %v replacing %v; want a new lease replacing %s", ev.Credential, ev.Previous, first.LeaseID)
	}
	cur, err := w.Current()
	if err != nil || cur.LeaseID != ev.Credential.LeaseID {
		t.Fatalf("Current = %v, %v", cur, err)
	}
	conn, err := pgx.Connect(ctx, cur.DSN)
	if err != nil {
		t.Fatalf("login with the new credential: %v", err)
	}
	conn.Close(ctx)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if n := e.pgUsers(); n != 0 {
		t.Fatalf("%d users left after Close (the lease from before the restart included)", n)
	}
}

// TestCredentialOneShot: Credential issues one login that works (SVID
// from files), prints and logs without its password, and Revoke ends it.
func TestCredentialOneShot(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	c := e.client()
	cred, err := c.Credential(ctx, "pg-orders", client.WithTTL(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if !cred.ExpireTime.After(time.Now()) || cred.ExpireTime.After(time.Now().Add(6*time.Second)) {
		t.Errorf("expire time %s, want about 5s from now", cred.ExpireTime)
	}
	conn, err := pgx.Connect(ctx, cred.DSN)
	if err != nil {
		t.Fatalf("login: %v", err)
	}
	conn.Close(ctx)
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("got", "credential", cred)
	for _, s := range []string{fmt.Sprint(cred), fmt.Sprintf("%v %+v %#v", cred, cred, cred), logged.String()} {
		if strings.Contains(s, cred.Password) || !strings.Contains(s, cred.Username) {
			t.Fatalf("printed credential %q: want the username and not the password", strings.ReplaceAll(s, cred.Password, "<password>"))
		}
	}
	if err := c.Revoke(ctx, cred.LeaseID); err != nil {
		t.Fatal(err)
	}
	if e.pgUserExists(cred.Username) {
		t.Fatal("user exists after Revoke")
	}
	if err := c.Revoke(ctx, cred.LeaseID); err != nil {
		t.Fatalf("second Revoke: %v", err)
	}
	if _, err := c.Credential(ctx, "no-such-role"); err == nil || !strings.Contains(err.Error(), "no such role") {
		t.Fatalf("unknown role: %v", err)
	}
	if _, err := c.Watch(ctx, "no-such-role"); err == nil || !strings.Contains(err.Error(), "no such role") {
		t.Fatalf("watch of an unknown role: %v", err)
	}
}
