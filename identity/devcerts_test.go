package identity

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/pem"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

func TestDevCAIssueSVID(t *testing.T) {
	ca := newTestCA(t, testTD)
	certPEM, keyPEM, err := ca.IssueSVID(brokerID, SVIDOptions{
		DNSNames: []string{"localhost"},
		IPs:      []net.IP{net.ParseIP("127.0.0.1")},
		TTL:      time.Hour,
	})
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse(certPEM, keyPEM)
	if err != nil {
		t.Fatalf("issued SVID does not parse as an X509-SVID: %v", err)
	}
	id, chains, err := x509svid.Verify(svid.Certificates, ca.Bundle())
	if err != nil {
		t.Fatalf("issued SVID does not verify against the bundle: %v", err)
	}
	if id != brokerID || len(chains) == 0 {
		t.Errorf("verified %s with %d chains, want %s", id, len(chains), brokerID)
	}

	leaf := svid.Certificates[0]
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != brokerID.String() {
		t.Errorf("URI SANs = %v, want exactly %s", leaf.URIs, brokerID)
	}
	if len(leaf.DNSNames) != 1 || leaf.DNSNames[0] != "localhost" {
		t.Errorf("DNS SANs = %v, want [localhost]", leaf.DNSNames)
	}
	if len(leaf.IPAddresses) != 1 || !leaf.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) {
		t.Errorf("IP SANs = %v, want [127.0.0.1]", leaf.IPAddresses)
	}
	if leaf.IsCA {
		t.Error("leaf is a CA")
	}
	if leaf.KeyUsage != x509.KeyUsageDigitalSignature {
		t.Errorf("key usage = %v, want digitalSignature only", leaf.KeyUsage)
	}
	if len(leaf.ExtKeyUsage) != 2 || leaf.ExtKeyUsage[0] != x509.ExtKeyUsageServerAuth || leaf.ExtKeyUsage[1] != x509.ExtKeyUsageClientAuth {
		t.Errorf("extended key usage = %v, want serverAuth, clientAuth", leaf.ExtKeyUsage)
	}
	if pub, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || pub.Curve != elliptic.P256() {
		t.Errorf("public key %T is not ECDSA P-256", leaf.PublicKey)
	}
	if ttl := leaf.NotAfter.Sub(leaf.NotBefore); ttl < time.Hour || ttl > time.Hour+2*time.Minute {
		t.Errorf("validity %s, want about 1h", ttl)
	}
	if block, _ := pem.Decode(keyPEM); block == nil || block.Type != "PRIVATE KEY" {
		t.Error("key is not a PKCS#8 PEM block")
	}

	// What grpcurl -cacert does: web PKI verification by host name and IP.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(ca.BundlePEM())
	for _, name := range []string{"localhost", "127.0.0.1"} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
			t.Errorf("host name verification for %s: %v", name, err)
		}
	}

	// Another CA's bundle does not verify it.
	if _, _, err := x509svid.Verify(svid.Certificates, newTestCA(t, testTD).Bundle()); err == nil {
		t.Error("SVID verified against another CA's bundle")
	}
}

func TestDevCACertificate(t *testing.T) {
	ca := newTestCA(t, testTD)
	block, _ := pem.Decode(ca.BundlePEM())
	if block == nil || block.Type != "CERTIFICATE" {
		t.Fatal("BundlePEM is not a certificate PEM block")
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		t.Error("CA certificate cannot sign certificates")
	}
	if len(cert.URIs) != 1 || cert.URIs[0].String() != "spiffe://example.org" {
		t.Errorf("CA URI SANs = %v, want [spiffe://example.org]", cert.URIs)
	}
	if v := cert.NotAfter.Sub(cert.NotBefore); v < DefaultDevCAValidity || v > DefaultDevCAValidity+2*time.Minute {
		t.Errorf("CA validity %s, want about %s", v, DefaultDevCAValidity)
	}
	if !bytes.Equal(ca.Bundle().X509Authorities()[0].Raw, cert.Raw) {
		t.Error("Bundle and BundlePEM disagree")
	}
	if ca.TrustDomain() != testTD {
		t.Errorf("TrustDomain = %v", ca.TrustDomain())
	}

	// No SVID outlives its CA.
	short := newTestCA(t, testTD, WithCAValidity(time.Hour))
	certPEM, _, err := short.IssueSVID(ordersID, SVIDOptions{TTL: 48 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	block, _ = pem.Decode(certPEM)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	caCert := short.Bundle().X509Authorities()[0]
	if leaf.NotAfter.After(caCert.NotAfter) {
		t.Errorf("SVID expires %s, after its CA (%s)", leaf.NotAfter, caCert.NotAfter)
	}
}

func TestDevCARejects(t *testing.T) {
	ca := newTestCA(t, testTD)
	tests := []struct {
		name string
		run  func() error
	}{
		{"foreign trust domain", func() error { _, _, err := ca.IssueSVID(foreignID, SVIDOptions{}); return err }},
		{"trust domain id", func() error { _, _, err := ca.IssueSVID(testTD.ID(), SVIDOptions{}); return err }},
		{"negative ttl", func() error { _, _, err := ca.IssueSVID(ordersID, SVIDOptions{TTL: -time.Second}); return err }},
		{"source for foreign id", func() error { _, err := ca.Source(foreignID); return err }},
		{"zero validity", func() error { _, err := NewDevCA(testTD, WithCAValidity(0)); return err }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.run(); err == nil {
				t.Error("accepted")
			}
		})
	}
}

func TestDevCASource(t *testing.T) {
	ca := newTestCA(t, testTD)
	src := newTestSource(t, ca, ordersID)
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID != ordersID {
		t.Errorf("SVID ID = %s, want %s", svid.ID, ordersID)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, src); err != nil {
		t.Errorf("source's SVID does not verify against its own bundle: %v", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(foreignTD); err == nil {
		t.Error("source returned a bundle for a foreign trust domain")
	}
}
