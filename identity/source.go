package identity

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source supplies the broker's own X.509-SVID and the X.509 bundle of its
// trust domain. Implementations must be safe for concurrent use: the TLS
// stack calls them on every handshake.
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// DefaultPollInterval is how often a FileSource looks for new files when
// FileSourceConfig.PollInterval is zero.
const DefaultPollInterval = 5 * time.Second

// FileSourceConfig names the PEM files of a FileSource.
type FileSourceConfig struct {
	// CertFile holds the SVID certificate, then any intermediates.
	CertFile string
	// KeyFile holds the SVID's private key, unencrypted, in PEM: PKCS#8
	// ("PRIVATE KEY"), SEC1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE
	// KEY"). An encrypted key is refused.
	KeyFile string
	// BundleFile holds the CA certificates of TrustDomain.
	BundleFile string
	// TrustDomain is the trust domain of the SVID and of the bundle.
	TrustDomain spiffeid.TrustDomain
	// PollInterval is how often Run checks the files; DefaultPollInterval
	// when zero.
	PollInterval time.Duration
	// Logger receives reloads and rejected files; nothing is logged when nil.
	Logger *slog.Logger
}

// FileSource is a Source backed by PEM files, for deployments without a
// SPIFFE Workload API (or with a sidecar such as spiffe-helper writing
// files). Run picks up rotated files; a rotation that does not load is
// logged and the previous SVID and bundle stay in service.
type FileSource struct {
	cfg FileSourceConfig
	log *slog.Logger

	cur atomic.Pointer[fileMaterial]

	mu         sync.Mutex // serializes reloads
	lastFailed string     // the last failure logged by poll
}

var _ Source = (*FileSource)(nil)

// fileMaterial is swapped as a whole so a handshake never sees the SVID of one
// rotation with the bundle of another.
type fileMaterial struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
	hash   [sha256.Size]byte
}

// NewFileSource loads the files once and fails if they do not form an SVID
// of cfg.TrustDomain that verifies against the bundle. It starts nothing;
// call Run to follow rotations.
func NewFileSource(cfg FileSourceConfig) (*FileSource, error) {
	switch {
	case cfg.CertFile == "":
		return nil, errors.New("identity: file source: cert file is required")
	case cfg.KeyFile == "":
		return nil, errors.New("identity: file source: key file is required")
	case cfg.BundleFile == "":
		return nil, errors.New("identity: file source: bundle file is required")
	case cfg.TrustDomain.IsZero():
		return nil, errors.New("identity: file source: trust domain is required")
	case cfg.PollInterval < 0:
		return nil, fmt.Errorf("identity: file source: negative poll interval %s", cfg.PollInterval)
	}
	if cfg.PollInterval == 0 {
		cfg.PollInterval = DefaultPollInterval
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	m, err := loadFiles(cfg)
	if err != nil {
		return nil, err
	}
	s := &FileSource{cfg: cfg, log: log}
	s.cur.Store(m)
	return s, nil
}

// GetX509SVID implements x509svid.Source.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) {
	return s.cur.Load().svid, nil
}

// GetX509BundleForTrustDomain implements x509bundle.Source. Only the
// source's own trust domain has a bundle.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.cur.Load().bundle.GetX509BundleForTrustDomain(td)
}

// Reload reads the files and, if their content changed and loads cleanly,
// swaps the new SVID and bundle in. It reports whether it swapped. On error
// the previous SVID and bundle stay in service. Run calls it on every tick;
// call it directly to reload on demand (for example on SIGHUP).
func (s *FileSource) Reload() (changed bool, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed, _, err = s.reloadLocked()
	return changed, err
}

// reloadLocked also returns the hash of the files it read, so poll can log a
// bad rotation once rather than on every tick.
func (s *FileSource) reloadLocked() (bool, [sha256.Size]byte, error) {
	raw, err := readFiles(s.cfg)
	if err != nil {
		return false, raw.hash, err
	}
	if raw.hash == s.cur.Load().hash {
		return false, raw.hash, nil
	}
	m, err := raw.parse(s.cfg)
	if err != nil {
		return false, raw.hash, err
	}
	s.cur.Store(m)
	return true, raw.hash, nil
}

// Run polls the files every PollInterval until ctx ends, then returns nil.
// New content that fails to load is logged once (per content) and skipped.
func (s *FileSource) Run(ctx context.Context) error {
	t := time.NewTicker(s.cfg.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			s.poll()
		}
	}
}

func (s *FileSource) poll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	changed, hash, err := s.reloadLocked()
	switch {
	case err != nil:
		failure := fmt.Sprintf("%x %v", hash, err)
		if failure == s.lastFailed {
			return
		}
		s.lastFailed = failure
		s.log.Error("identity: keeping previous svid and bundle; new files do not load", "error", err)
	case changed:
		s.lastFailed = ""
		svid := s.cur.Load().svid
		s.log.Info("identity: reloaded svid and bundle",
			"spiffe_id", svid.ID.String(),
			"not_after", svid.Certificates[0].NotAfter)
	default:
		s.lastFailed = "" // back to good files: log the next failure again
	}
}

type rawFiles struct {
	cert, key, bundle []byte
	hash              [sha256.Size]byte
}

func readFiles(cfg FileSourceConfig) (rawFiles, error) {
	var r rawFiles
	var err error
	if r.cert, err = os.ReadFile(cfg.CertFile); err != nil {
		return r, fmt.Errorf("identity: read svid cert file: %w", err)
	}
	if r.key, err = os.ReadFile(cfg.KeyFile); err != nil {
		return r, fmt.Errorf("identity: read svid key file: %w", err)
	}
	if r.bundle, err = os.ReadFile(cfg.BundleFile); err != nil {
		return r, fmt.Errorf("identity: read bundle file: %w", err)
	}
	h := sha256.New()
	for _, b := range [][]byte{r.cert, r.key, r.bundle} {
		// Length-prefixed, so moving bytes from one file to the next changes
		// the hash.
		h.Write(binary.BigEndian.AppendUint64(nil, uint64(len(b))))
		h.Write(b)
	}
	h.Sum(r.hash[:0])
	return r, nil
}

func (r rawFiles) parse(cfg FileSourceConfig) (*fileMaterial, error) {
	key, err := pkcs8KeyPEM(r.key, cfg.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	svid, err := x509svid.Parse(r.cert, key)
	if err != nil {
		return nil, fmt.Errorf("identity: load svid from %q and %q: %w", cfg.CertFile, cfg.KeyFile, err)
	}
	if !svid.ID.MemberOf(cfg.TrustDomain) {
		return nil, fmt.Errorf("identity: svid %q in %q is not in trust domain %q", svid.ID.String(), cfg.CertFile, cfg.TrustDomain.String())
	}
	if len(bytes.TrimSpace(r.bundle)) == 0 {
		return nil, fmt.Errorf("identity: bundle file %q is empty", cfg.BundleFile)
	}
	bundle, err := x509bundle.Parse(cfg.TrustDomain, r.bundle)
	if err != nil {
		return nil, fmt.Errorf("identity: load bundle from %q: %w", cfg.BundleFile, err)
	}
	if bundle.Empty() {
		return nil, fmt.Errorf("identity: bundle file %q holds no certificate", cfg.BundleFile)
	}
	// Catches a cert and bundle from different CAs at load time rather than
	// at the first handshake, and an expired SVID.
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		return nil, fmt.Errorf("identity: svid in %q does not verify against bundle %q: %w", cfg.CertFile, cfg.BundleFile, err)
	}
	return &fileMaterial{svid: svid, bundle: bundle, hash: r.hash}, nil
}

func loadFiles(cfg FileSourceConfig) (*fileMaterial, error) {
	raw, err := readFiles(cfg)
	if err != nil {
		return nil, err
	}
	return raw.parse(cfg)
}
