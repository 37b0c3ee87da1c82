package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// issueWithKey issues an SVID for id signed by ca for the given key (the
// DevCA only makes ECDSA keys; PKCS#1 needs RSA) and returns its PEM.
func issueWithKey(t *testing.T, ca *DevCA, id spiffeid.ID, key crypto.Signer) []byte {
	t.Helper()
	serial, err := newSerial()
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"credbroker test"}},
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(time.Hour),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemBlock(typ string, b []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b})
}

// keyForms are a key written in each form the file source reads.
type keyForm struct {
	name    string
	rsa     bool
	keyFile func(t *testing.T, key crypto.Signer, cert []byte) []byte
}

var keyForms = []keyForm{
	{"PKCS#8 ECDSA", false, func(t *testing.T, k crypto.Signer, _ []byte) []byte { return pemBlock("PRIVATE KEY", mustPKCS8(t, k)) }},
	{"PKCS#8 RSA", true, func(t *testing.T, k crypto.Signer, _ []byte) []byte { return pemBlock("PRIVATE KEY", mustPKCS8(t, k)) }},
	{"SEC1 ECDSA", false, func(t *testing.T, k crypto.Signer, _ []byte) []byte {
		return pemBlock("EC PRIVATE KEY", mustSEC1(t, k))
	}},
	{"SEC1 ECDSA after EC PARAMETERS (openssl ecparam -genkey)", false, func(t *testing.T, k crypto.Signer, _ []byte) []byte {
		params, err := asn1.Marshal(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7}) // prime256v1
		if err != nil {
			t.Fatal(err)
		}
		return append(pemBlock("EC PARAMETERS", params), pemBlock("EC PRIVATE KEY", mustSEC1(t, k))...)
	}},
	{"PKCS#1 RSA", true, func(t *testing.T, k crypto.Signer, _ []byte) []byte {
		return pemBlock("RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(k.(*rsa.PrivateKey)))
	}},
	{"chain then SEC1 key in one file", false, func(t *testing.T, k crypto.Signer, cert []byte) []byte {
		return append(append([]byte(nil), cert...), pemBlock("EC PRIVATE KEY", mustSEC1(t, k))...)
	}},
}

func mustPKCS8(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	b, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustSEC1(t *testing.T, k crypto.Signer) []byte {
	t.Helper()
	b, err := x509.MarshalECPrivateKey(k.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// writeKeyedSVID writes dir/svid.pem, dir/svid-key.pem in form f and
// dir/bundle.pem for id, and returns the source's config.
func writeKeyedSVID(t *testing.T, ca *DevCA, dir string, id spiffeid.ID, f keyForm, rsaKey *rsa.PrivateKey) FileSourceConfig {
	t.Helper()
	var key crypto.Signer = rsaKey
	if !f.rsa {
		ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		key = ec
	}
	cert := issueWithKey(t, ca, id, key)
	cfg := fileConfig(dir)
	mustWrite(t, cfg.CertFile, cert)
	mustWrite(t, cfg.KeyFile, f.keyFile(t, key, cert))
	mustWrite(t, cfg.BundleFile, ca.BundlePEM())
	return cfg
}

// TestFileSourceKeyFormats: a file SVID whose key is PKCS#8, SEC1 or PKCS#1
// loads, and serves a real mTLS handshake as the broker's own SVID (server)
// and as a workload's (client), the client's ID reaching the server.
func TestFileSourceKeyFormats(t *testing.T) {
	ca := newTestCA(t, testTD)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range keyForms {
		t.Run(f.name, func(t *testing.T) {
			server, err := NewFileSource(writeKeyedSVID(t, ca, t.TempDir(), brokerID, f, rsaKey))
			if err != nil {
				t.Fatalf("server svid: %v", err)
			}
			client, err := NewFileSource(writeKeyedSVID(t, ca, t.TempDir(), ordersID, f, rsaKey))
			if err != nil {
				t.Fatalf("client svid: %v", err)
			}
			ts := startTestServer(t, server)
			if err := healthCheck(t, ts.addr, ClientTLSConfig(client, brokerID)); err != nil {
				t.Fatalf("handshake: %v", err)
			}
			seen := ts.seenCallers()
			if len(seen) != 1 || seen[0].err != nil || seen[0].id != ordersID {
				t.Fatalf("server saw %+v, want %s", seen, ordersID)
			}
		})
	}
}

// TestFileSourceKeyRefusals: an encrypted key or a block of another type
// is refused with a message naming the block found and how to convert it,
// and without key material.
func TestFileSourceKeyRefusals(t *testing.T) {
	ca := newTestCA(t, testTD)
	dir := t.TempDir()
	writeSVIDFiles(t, ca, dir, brokerID)
	junk := make([]byte, 64)
	if _, err := rand.Read(junk); err != nil {
		t.Fatal(err)
	}
	cert, err := os.ReadFile(filepath.Join(dir, "svid.pem"))
	if err != nil {
		t.Fatal(err)
	}
	const convert = "openssl pkcs8 -topk8 -nocrypt -in "
	cases := []struct {
		name string
		key  []byte
		want []string
	}{
		{"encrypted PKCS#8", pemBlock("ENCRYPTED PRIVATE KEY", junk), []string{`"ENCRYPTED PRIVATE KEY" block is encrypted`, convert}},
		{"legacy encrypted PKCS#1", pem.EncodeToMemory(&pem.Block{
			Type:    "RSA PRIVATE KEY",
			Headers: map[string]string{"Proc-Type": "4,ENCRYPTED", "DEK-Info": "AES-256-CBC,00112233445566778899AABBCCDDEEFF"},
			Bytes:   junk,
		}), []string{`"RSA PRIVATE KEY" block is encrypted`, convert}},
		{"OpenSSH key", pemBlock("OPENSSH PRIVATE KEY", junk), []string{`found a "OPENSSH PRIVATE KEY" PEM block`, convert}},
		{"public key", pemBlock("PUBLIC KEY", junk), []string{`found a "PUBLIC KEY" PEM block`, convert}},
		{"not PEM", []byte("MHcCAQEEI..."), []string{"no PEM private key block found"}},
		{"only the certificate", cert, []string{"no PEM private key block found"}},
		{"broken SEC1", pemBlock("EC PRIVATE KEY", junk), []string{`the "EC PRIVATE KEY" block does not parse`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fileConfig(dir)
			cfg.KeyFile = filepath.Join(t.TempDir(), "key.pem")
			mustWrite(t, cfg.KeyFile, tc.key)
			_, err := NewFileSource(cfg)
			if !errors.Is(err, ErrKeyFormat) {
				t.Fatalf("NewFileSource = %v, want ErrKeyFormat", err)
			}
			msg := err.Error()
			for _, w := range append(tc.want, cfg.KeyFile) {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not say %q", msg, w)
				}
			}
			if strings.Contains(msg, "-----BEGIN") || strings.Contains(msg, base64.StdEncoding.EncodeToString(junk)[:16]) {
				t.Errorf("error %q shows key material", msg)
			}
		})
	}
}
