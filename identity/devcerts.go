package identity

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const (
	// DefaultDevCAValidity is how long a DevCA is valid unless WithCAValidity
	// says otherwise.
	DefaultDevCAValidity = 24 * time.Hour
	// clockSkew backdates NotBefore so a peer whose clock runs a little
	// behind still accepts a certificate issued a moment ago.
	clockSkew = time.Minute
)

// DevCA is a throwaway, in-memory certificate authority for one trust
// domain, for demos and tests. It is not for production: its key never
// leaves memory, so certificates cannot be issued after it is gone.
type DevCA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	now  func() time.Time
}

// DevCAOption configures NewDevCA.
type DevCAOption func(*devCAOptions)

type devCAOptions struct {
	validity time.Duration
	now      func() time.Time
}

// WithCAValidity sets how long the CA certificate is valid
// (DefaultDevCAValidity otherwise). No SVID it issues outlives it.
func WithCAValidity(d time.Duration) DevCAOption {
	return func(o *devCAOptions) { o.validity = d }
}

// WithCAClock sets the clock used for every validity period, so tests can
// issue certificates that are not yet valid or already expired.
func WithCAClock(now func() time.Time) DevCAOption {
	return func(o *devCAOptions) { o.now = now }
}

// NewDevCA creates a self-signed ECDSA P-256 CA for td. As SPIRE does, the CA
// certificate carries the trust domain's SPIFFE ID (spiffe://td) as URI SAN.
func NewDevCA(td spiffeid.TrustDomain, opts ...DevCAOption) (*DevCA, error) {
	if td.IsZero() {
		return nil, errors.New("identity: dev ca: trust domain is required")
	}
	o := devCAOptions{validity: DefaultDevCAValidity, now: time.Now}
	for _, opt := range opts {
		opt(&o)
	}
	if o.validity <= 0 {
		return nil, fmt.Errorf("identity: dev ca: validity must be positive, got %s", o.validity)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identity: dev ca: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := o.now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"credbroker dev"}, CommonName: "credbroker dev CA " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              now.Add(o.validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identity: dev ca: create certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identity: dev ca: parse certificate: %w", err)
	}
	return &DevCA{td: td, cert: cert, key: key, now: o.now}, nil
}

// TrustDomain returns the CA's trust domain.
func (ca *DevCA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Bundle returns the CA's trust bundle.
func (ca *DevCA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// BundlePEM returns the CA certificate in PEM, the content of bundle.pem.
func (ca *DevCA) BundlePEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}

// SVIDOptions shapes an SVID issued by a DevCA.
type SVIDOptions struct {
	// DNSNames and IPs are added as SANs, so clients that verify host names
	// (grpcurl -cacert) accept the SVID as a server certificate.
	DNSNames []string
	IPs      []net.IP
	// TTL is the validity period; until the CA expires when zero. It is
	// cut short at the CA's expiry.
	TTL time.Duration
}

// IssueSVID issues an X.509-SVID for id, which must be a workload of the CA's
// trust domain: an ECDSA P-256 leaf with exactly one URI SAN (id), key usage
// digitalSignature, extended key usages serverAuth and clientAuth, not a CA.
// It returns the certificate and its PKCS#8 private key in PEM.
func (ca *DevCA) IssueSVID(id spiffeid.ID, opts SVIDOptions) (certPEM, keyPEM []byte, err error) {
	switch {
	case id.IsZero():
		return nil, nil, errors.New("identity: dev ca: spiffe id is required")
	case !id.MemberOf(ca.td):
		return nil, nil, fmt.Errorf("identity: dev ca: %q is not in trust domain %q", id.String(), ca.td.String())
	case id.Path() == "":
		return nil, nil, fmt.Errorf("identity: dev ca: %q has no path; an svid names a workload", id.String())
	case opts.TTL < 0:
		return nil, nil, fmt.Errorf("identity: dev ca: negative ttl %s", opts.TTL)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: dev ca: generate key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := ca.now()
	notAfter := ca.cert.NotAfter
	if opts.TTL > 0 && now.Add(opts.TTL).Before(notAfter) {
		notAfter = now.Add(opts.TTL)
	}
	subject := pkix.Name{Organization: []string{"credbroker dev"}}
	if len(opts.DNSNames) > 0 {
		subject.CommonName = opts.DNSNames[0]
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               subject,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              slices.Clone(opts.DNSNames),
		IPAddresses:           slices.Clone(opts.IPs),
		NotBefore:             now.Add(-clockSkew),
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: dev ca: create certificate for %q: %w", id.String(), err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("identity: dev ca: marshal key: %w", err)
	}
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	return certPEM, keyPEM, nil
}

// Source issues an SVID for id and returns an in-memory Source holding it
// and the CA's bundle. The SVID carries the SANs localhost, 127.0.0.1 and ::1
// so the same helper serves test servers listening on loopback.
func (ca *DevCA) Source(id spiffeid.ID) (Source, error) {
	certPEM, keyPEM, err := ca.IssueSVID(id, SVIDOptions{
		DNSNames: []string{"localhost"},
		IPs:      []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	})
	if err != nil {
		return nil, err
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("identity: dev ca: %w", err)
	}
	return staticSource{svid: svid, bundle: ca.Bundle()}, nil
}

// staticSource is a Source that never changes.
type staticSource struct {
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

func (s staticSource) GetX509SVID() (*x509svid.SVID, error) { return s.svid, nil }

func (s staticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.bundle.GetX509BundleForTrustDomain(td)
}

// WriteFiles writes dir/bundle.pem and, for each name in ids, an SVID in
// dir/<name>.pem with its key in dir/<name>-key.pem (mode 0600), creating dir
// if needed. Each file is replaced atomically, so a FileSource polling them
// never reads half a file. Names are plain file names: letters, digits, '.',
// '-' and '_'.
func (ca *DevCA) WriteFiles(dir string, ids map[string]spiffeid.ID, opts SVIDOptions) error {
	names := make([]string, 0, len(ids))
	for name := range ids {
		if err := checkFileName(name); err != nil {
			return err
		}
		names = append(names, name)
	}
	slices.Sort(names)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("identity: dev ca: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, "bundle.pem"), ca.BundlePEM(), 0o644); err != nil {
		return err
	}
	for _, name := range names {
		certPEM, keyPEM, err := ca.IssueSVID(ids[name], opts)
		if err != nil {
			return err
		}
		// Key first: a poller that sees the new cert must find its key.
		if err := writeFileAtomic(filepath.Join(dir, name+"-key.pem"), keyPEM, 0o600); err != nil {
			return err
		}
		if err := writeFileAtomic(filepath.Join(dir, name+".pem"), certPEM, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func checkFileName(name string) error {
	if name == "" || name == "bundle" || strings.HasPrefix(name, ".") {
		return fmt.Errorf("identity: dev ca: bad svid file name %q", name)
	}
	for _, c := range name {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '.', c == '-', c == '_':
		default:
			return fmt.Errorf("identity: dev ca: bad svid file name %q", name)
		}
	}
	return nil
}

// writeFileAtomic writes data to a temporary file in the same directory and
// renames it over path, so readers see the old file or the new one.
func writeFileAtomic(path string, data []byte, perm os.FileMode) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("identity: dev ca: %w", err)
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	// Chmod before writing: the key is never readable by others, not even
	// for an instant.
	if err := f.Chmod(perm); err != nil {
		_ = f.Close()
		return fmt.Errorf("identity: dev ca: %w", err)
	}
	if _, err := f.Write(data); err != nil {
		_ = f.Close()
		return fmt.Errorf("identity: dev ca: write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("identity: dev ca: write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("identity: dev ca: %w", err)
	}
	return nil
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("identity: dev ca: serial number: %w", err)
	}
	return serial, nil
}
