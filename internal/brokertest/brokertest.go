// Package brokertest holds what the integration tests of several packages
// (agent, client, broker, identity/spireregistry, cmd/credbroker) need to
// stand up a broker: the SPIFFE IDs of the test trust domain, a real test
// CA and its SVID files, admin connections to the throwaway databases and
// the queries that count the users a broker made, a way to run a server on
// a listener until the test stops it, and polling and log helpers.
//
// It is imported only from _test.go files. It does not import broker:
// broker imports identity/spireregistry, whose in-package tests use this
// package, so the broker is handed to [Serve] as a function.
package brokertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/identity"
)

// The SPIFFE IDs the tests' brokers and workloads use.
var (
	TrustDomain = spiffeid.RequireTrustDomainFromString("example.org")
	ServerID    = spiffeid.RequireFromPath(TrustDomain, "/credbroker")
	OrdersID    = spiffeid.RequireFromPath(TrustDomain, "/orders/api")
	OtherID     = spiffeid.RequireFromPath(TrustDomain, "/orders/worker")
	AdminID     = spiffeid.RequireFromPath(TrustDomain, "/ops/admin")
)

// RandHex returns n random bytes in hex, to name the objects of one test
// apart from those of tests running beside it.
func RandHex(t testing.TB, n int) string {
	t.Helper()
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// NewCA makes a test CA for [TrustDomain].
func NewCA(t testing.TB) *identity.DevCA {
	t.Helper()
	ca, err := identity.NewDevCA(TrustDomain)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// SVIDFiles are the paths of one SVID's certificate and key and of the
// trust bundle, as identity.DevCA.WriteFiles writes them.
type SVIDFiles struct{ Cert, Key, Bundle string }

// WriteSVID writes name.pem, name-key.pem and bundle.pem for id into dir.
func WriteSVID(t testing.TB, ca *identity.DevCA, dir, name string, id spiffeid.ID, opts identity.SVIDOptions) SVIDFiles {
	t.Helper()
	if err := ca.WriteFiles(dir, map[string]spiffeid.ID{name: id}, opts); err != nil {
		t.Fatal(err)
	}
	return SVIDFiles{
		Cert:   filepath.Join(dir, name+".pem"),
		Key:    filepath.Join(dir, name+"-key.pem"),
		Bundle: filepath.Join(dir, "bundle.pem"),
	}
}

// FreeAddr returns a loopback address whose port nothing listened on a
// moment ago: free to listen on, or closed to dial.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// ClosedPort is the port of [FreeAddr].
func ClosedPort(t testing.TB) int {
	t.Helper()
	addr, err := net.ResolveTCPAddr("tcp", FreeAddr(t))
	if err != nil {
		t.Fatal(err)
	}
	return addr.Port
}

// Runner is a server that runs until its context ends, as a *broker.App.
type Runner interface {
	Run(ctx context.Context) error
}

// Serve listens on addr (port 0 for any), builds a server on the listener
// with newServer and runs it. It returns the address it listens on and a
// stop that ends the run, waits for it and fails the test if Run failed;
// stop may be called more than once. The caller stops it: the order of its
// cleanups matters to the checks that nothing outlives a test.
func Serve(t testing.TB, addr string, newServer func(net.Listener) (Runner, error)) (string, func()) {
	t.Helper()
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := newServer(lis)
	if err != nil {
		lis.Close()
		t.Fatalf("new app: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	var once sync.Once
	return lis.Addr().String(), func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("broker run: %v", err)
			}
		})
	}
}

// WaitFor polls cond every 20 ms until it holds and returns how long that
// took, or fails the test after timeout.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !cond() {
		if time.Since(start) > timeout {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

// SyncBuffer is a bytes.Buffer that a server's log or a process's output
// may write to while the test reads it.
type SyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (s *SyncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *SyncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Count returns how many times sub was written so far.
func (s *SyncBuffer) Count(sub string) int {
	return strings.Count(s.String(), sub)
}
