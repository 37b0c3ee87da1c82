package identity

import (
	"bytes"
	"context"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// syncBuffer is a log sink safe for Run's goroutine and the test to share.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func writeSVIDFiles(t *testing.T, ca *DevCA, dir string, id spiffeid.ID) {
	t.Helper()
	if err := ca.WriteFiles(dir, map[string]spiffeid.ID{"svid": id}, SVIDOptions{}); err != nil {
		t.Fatal(err)
	}
}

func fileConfig(dir string) FileSourceConfig {
	return FileSourceConfig{
		CertFile:    filepath.Join(dir, "svid.pem"),
		KeyFile:     filepath.Join(dir, "svid-key.pem"),
		BundleFile:  filepath.Join(dir, "bundle.pem"),
		TrustDomain: testTD,
	}
}

func currentID(t *testing.T, s Source) spiffeid.ID {
	t.Helper()
	svid, err := s.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return svid.ID
}

func TestFileSourceLoads(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := t.TempDir()
	writeSVIDFiles(t, ca, dir, brokerID)
	src, err := NewFileSource(fileConfig(dir))
	if err != nil {
		t.Fatal(err)
	}
	if got := currentID(t, src); got != brokerID {
		t.Errorf("SVID ID = %s, want %s", got, brokerID)
	}
	b, err := src.GetX509BundleForTrustDomain(testTD)
	if err != nil || !b.Equal(ca.Bundle()) {
		t.Errorf("bundle = %v, %v; want the CA's", b, err)
	}
	if _, err := src.GetX509BundleForTrustDomain(foreignTD); err == nil {
		t.Error("file source returned a bundle for a foreign trust domain")
	}

	// A real handshake through the file source on both ends.
	ts := startTestServer(t, src)
	if err := healthCheck(t, ts.addr, ClientTLSConfig(newTestSource(t, ca, ordersID), brokerID)); err != nil {
		t.Fatalf("health check through file source: %v", err)
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	ca := newTestCA(t, testTD)
	good := t.TempDir()
	writeSVIDFiles(t, ca, good, brokerID)
	other := t.TempDir()
	writeSVIDFiles(t, newTestCA(t, testTD), other, brokerID)
	expired := t.TempDir()
	writeSVIDFiles(t, newTestCA(t, testTD, WithCAClock(func() time.Time { return time.Now().Add(-48 * time.Hour) })), expired, brokerID)
	garbage := filepath.Join(t.TempDir(), "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	empty := filepath.Join(t.TempDir(), "empty.pem")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		edit    func(*FileSourceConfig)
		wantMsg string
	}{
		{"missing cert file", func(c *FileSourceConfig) { c.CertFile = filepath.Join(good, "nope.pem") }, "nope.pem"},
		{"missing key file", func(c *FileSourceConfig) { c.KeyFile = filepath.Join(good, "nope-key.pem") }, "nope-key.pem"},
		{"missing bundle file", func(c *FileSourceConfig) { c.BundleFile = filepath.Join(good, "nobundle.pem") }, "nobundle.pem"},
		{"garbage cert", func(c *FileSourceConfig) { c.CertFile = garbage }, "garbage.pem"},
		{"garbage key", func(c *FileSourceConfig) { c.KeyFile = garbage }, "garbage.pem"},
		{"garbage bundle", func(c *FileSourceConfig) { c.BundleFile = garbage }, "garbage.pem"},
		{"empty bundle", func(c *FileSourceConfig) { c.BundleFile = empty }, "empty.pem"},
		{"key of another svid", func(c *FileSourceConfig) { c.KeyFile = filepath.Join(other, "svid-key.pem") }, "does not match"},
		{"bundle of another ca", func(c *FileSourceConfig) { c.BundleFile = filepath.Join(other, "bundle.pem") }, "does not verify"},
		{"wrong trust domain", func(c *FileSourceConfig) { c.TrustDomain = foreignTD }, "not in trust domain"},
		{"expired svid", func(c *FileSourceConfig) { *c = fileConfig(expired) }, "expired"},
		{"no cert file", func(c *FileSourceConfig) { c.CertFile = "" }, "cert file is required"},
		{"no trust domain", func(c *FileSourceConfig) { c.TrustDomain = spiffeid.TrustDomain{} }, "trust domain is required"},
		{"negative interval", func(c *FileSourceConfig) { c.PollInterval = -time.Second }, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := fileConfig(good)
			tt.edit(&cfg)
			_, err := NewFileSource(cfg)
			if err == nil {
				t.Fatal("NewFileSource succeeded")
			}
			if !strings.Contains(err.Error(), tt.wantMsg) {
				t.Errorf("error %q does not mention %q", err, tt.wantMsg)
			}
			// Block types may be named ("EC PRIVATE KEY"); PEM content never.
			if strings.Contains(err.Error(), "-----BEGIN") {
				t.Errorf("error %q shows key material", err)
			}
		})
	}
}

func TestFileSourceReload(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := t.TempDir()
	writeSVIDFiles(t, ca, dir, brokerID)
	src, err := NewFileSource(fileConfig(dir))
	if err != nil {
		t.Fatal(err)
	}

	changed, err := src.Reload()
	if err != nil || changed {
		t.Fatalf("Reload of unchanged files = %v, %v; want false, nil", changed, err)
	}

	// Rotation: a new SVID from the same CA.
	rotatedID := spiffeid.RequireFromString("spiffe://example.org/credbroker/v2")
	writeSVIDFiles(t, ca, dir, rotatedID)
	changed, err = src.Reload()
	if err != nil || !changed {
		t.Fatalf("Reload after rotation = %v, %v; want true, nil", changed, err)
	}
	if got := currentID(t, src); got != rotatedID {
		t.Fatalf("SVID ID = %s, want %s", got, rotatedID)
	}

	// CA rotation: new CA, new bundle, new SVID, swapped together.
	newCA := newTestCA(t, testTD)
	writeSVIDFiles(t, newCA, dir, brokerID)
	if changed, err := src.Reload(); err != nil || !changed {
		t.Fatalf("Reload after CA rotation = %v, %v; want true, nil", changed, err)
	}
	if b, _ := src.GetX509BundleForTrustDomain(testTD); !b.Equal(newCA.Bundle()) {
		t.Fatal("bundle not rotated")
	}

	bad := []struct {
		name  string
		write func(t *testing.T)
	}{
		{"garbage key", func(t *testing.T) { mustWrite(t, filepath.Join(dir, "svid-key.pem"), []byte("garbage")) }},
		{"truncated cert", func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join(dir, "svid.pem"))
			if err != nil {
				t.Fatal(err)
			}
			mustWrite(t, filepath.Join(dir, "svid.pem"), b[:len(b)/2])
		}},
		{"svid from a CA not in the bundle", func(t *testing.T) {
			certPEM, keyPEM, err := ca.IssueSVID(ordersID, SVIDOptions{})
			if err != nil {
				t.Fatal(err)
			}
			mustWrite(t, filepath.Join(dir, "svid-key.pem"), keyPEM)
			mustWrite(t, filepath.Join(dir, "svid.pem"), certPEM)
		}},
		{"cert file removed", func(t *testing.T) {
			if err := os.Remove(filepath.Join(dir, "svid.pem")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			writeSVIDFiles(t, newCA, dir, brokerID)
			if _, err := src.Reload(); err != nil {
				t.Fatal(err)
			}
			before, _ := src.GetX509SVID()
			tt.write(t)
			changed, err := src.Reload()
			if err == nil || changed {
				t.Fatalf("Reload of bad files = %v, %v; want an error", changed, err)
			}
			after, _ := src.GetX509SVID()
			if after != before {
				t.Error("a bad file replaced the SVID")
			}
			if b, _ := src.GetX509BundleForTrustDomain(testTD); !b.Equal(newCA.Bundle()) {
				t.Error("a bad file replaced the bundle")
			}
		})
	}
}

func mustWrite(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestFileSourceRun(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := t.TempDir()
	writeSVIDFiles(t, ca, dir, brokerID)
	logs := &syncBuffer{}
	cfg := fileConfig(dir)
	cfg.PollInterval = 5 * time.Millisecond
	cfg.Logger = slog.New(slog.NewTextHandler(logs, nil))
	src, err := NewFileSource(cfg)
	if err != nil {
		t.Fatal(err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run returned %v", err)
		}
	}()

	waitFor := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); !cond(); {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s; log:\n%s", what, logs.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	rotatedID := spiffeid.RequireFromString("spiffe://example.org/credbroker/v2")
	writeSVIDFiles(t, ca, dir, rotatedID)
	waitFor("rotation", func() bool { return currentID(t, src) == rotatedID })
	waitFor("reload log", func() bool { return strings.Contains(logs.String(), "reloaded") })

	// Atomically, as a plain write could be polled half-done: a second,
	// different bad content that is rightly logged too.
	if err := writeFileAtomic(filepath.Join(dir, "svid-key.pem"), []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// WriteFiles replaces the key, then the cert: a poll in between rightly
	// logs a mismatch. Count only the failure of the bad key.
	const badKey = "cannot parse PEM encoded private key"
	waitFor("error log", func() bool { return strings.Contains(logs.String(), badKey) })
	time.Sleep(50 * time.Millisecond) // about ten more polls of the same bad file
	if n := strings.Count(logs.String(), badKey); n != 1 {
		t.Errorf("bad file logged %d times, want once; log:\n%s", n, logs.String())
	}
	if got := currentID(t, src); got != rotatedID {
		t.Errorf("SVID ID after bad file = %s, want %s", got, rotatedID)
	}
	if strings.Contains(logs.String(), "AAAA") {
		t.Errorf("log shows key file content:\n%s", logs.String())
	}

	writeSVIDFiles(t, ca, dir, brokerID)
	waitFor("recovery", func() bool { return currentID(t, src) == brokerID })
}

func TestWriteFiles(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := filepath.Join(t.TempDir(), "certs")
	ids := map[string]spiffeid.ID{"broker": brokerID, "orders": ordersID}
	if err := ca.WriteFiles(dir, ids, SVIDOptions{DNSNames: []string{"localhost"}}); err != nil {
		t.Fatal(err)
	}
	wantMode := map[string]fs.FileMode{
		"bundle.pem":     0o644,
		"broker.pem":     0o644,
		"broker-key.pem": 0o600,
		"orders.pem":     0o644,
		"orders-key.pem": 0o600,
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != len(wantMode) {
		t.Errorf("dir holds %d files, want %d (no temporary files left)", len(entries), len(wantMode))
	}
	for name, mode := range wantMode {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Error(err)
			continue
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode().Perm(), mode)
		}
	}
	bundle, err := os.ReadFile(filepath.Join(dir, "bundle.pem"))
	if err != nil || !bytes.Equal(bundle, ca.BundlePEM()) {
		t.Errorf("bundle.pem differs from BundlePEM (err %v)", err)
	}
	for name, id := range ids {
		src, err := NewFileSource(FileSourceConfig{
			CertFile:    filepath.Join(dir, name+".pem"),
			KeyFile:     filepath.Join(dir, name+"-key.pem"),
			BundleFile:  filepath.Join(dir, "bundle.pem"),
			TrustDomain: testTD,
		})
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := currentID(t, src); got != id {
			t.Errorf("%s holds %s, want %s", name, got, id)
		}
	}

	for _, name := range []string{"", "bundle", "../x", "a/b", ".hidden", "a b"} {
		if err := ca.WriteFiles(dir, map[string]spiffeid.ID{name: ordersID}, SVIDOptions{}); err == nil {
			t.Errorf("WriteFiles accepted file name %q", name)
		}
	}
	if err := ca.WriteFiles(dir, map[string]spiffeid.ID{"evil": foreignID}, SVIDOptions{}); err == nil {
		t.Error("WriteFiles issued an SVID outside the trust domain")
	}
}
