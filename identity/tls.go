package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
)

// ServerTLSConfig returns the broker's listener configuration: TLS 1.3 or
// later, the broker's SVID from src (fetched on every handshake, so rotation
// needs no restart), and a client X.509-SVID that is required, verified
// against src's bundle and a member of td. Anything else fails the handshake.
//
// The SVID is served as is, DNS and IP SANs included, so a client that checks
// host names against the bundle (grpcurl -cacert bundle.pem) works too.
func ServerTLSConfig(src Source, td spiffeid.TrustDomain) *tls.Config {
	c := tlsconfig.MTLSServerConfig(src, src, tlsconfig.AuthorizeMemberOf(td))
	c.MinVersion = tls.VersionTLS13
	return c
}

// ClientTLSConfig returns a TLS 1.3 client configuration presenting the SVID
// from src and accepting only a server whose SVID is serverID, verified
// against src's bundle. Host names are not checked: the SPIFFE ID is.
func ClientTLSConfig(src Source, serverID spiffeid.ID) *tls.Config {
	c := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeID(serverID))
	c.MinVersion = tls.VersionTLS13
	return c
}

// ClientTLSConfigMemberOf is ClientTLSConfig for a client that does not know
// the server's SPIFFE ID: any server SVID of td, verified against src's
// bundle, is accepted. Prefer ClientTLSConfig where the ID is known: with
// this one any workload of td can pose as the server.
func ClientTLSConfigMemberOf(src Source, td spiffeid.TrustDomain) *tls.Config {
	c := tlsconfig.MTLSClientConfig(src, src, tlsconfig.AuthorizeMemberOf(td))
	c.MinVersion = tls.VersionTLS13
	return c
}

// CallerID returns the SPIFFE ID of the gRPC peer in ctx, taken from the leaf
// of its certificate chain. It returns an error wrapping ErrNoPeerID when the
// connection is not TLS or carries no certificate with one SPIFFE ID.
//
// The chain must have been verified during the handshake. Go fills in
// VerifiedChains only when it verifies the chain itself; ServerTLSConfig
// verifies it in VerifyPeerCertificate instead (SPIFFE verification, not web
// PKI), where a failure aborts the handshake, so PeerCertificates of a
// connection it accepted are verified. Serve gRPC only with ServerTLSConfig.
//
// CallerID does not look at the certificates' validity periods: the
// handshake did, but a connection outlives it. Use PeerSVIDFromContext and
// PeerSVID.CheckValidAt to refuse a call whose SVID has expired since.
func CallerID(ctx context.Context) (spiffeid.ID, error) {
	p, err := PeerSVIDFromContext(ctx)
	return p.ID, err
}

// PeerSVID is what a call knows of its peer's X.509-SVID: the SPIFFE ID of
// the leaf and the validity period of the chain the peer presented (the
// latest NotBefore and the earliest NotAfter of the leaf and the
// intermediates it sent), fixed at the handshake.
type PeerSVID struct {
	ID        spiffeid.ID
	NotBefore time.Time
	NotAfter  time.Time
}

// CheckValidAt returns an error wrapping ErrSVIDNotValid unless now is
// within the SVID's validity period. A TLS connection is verified once, at
// its handshake; the interceptors call this on every call so that a
// connection opened with an SVID that has expired since serves nothing.
func (p PeerSVID) CheckValidAt(now time.Time) error {
	switch {
	case now.After(p.NotAfter):
		return fmt.Errorf("%w: x509-svid of %s expired at %s", ErrSVIDNotValid, p.ID, p.NotAfter.UTC().Format(time.RFC3339))
	case now.Before(p.NotBefore):
		return fmt.Errorf("%w: x509-svid of %s is not valid before %s", ErrSVIDNotValid, p.ID, p.NotBefore.UTC().Format(time.RFC3339))
	}
	return nil
}

// PeerSVIDFromContext returns the gRPC peer's SVID (see CallerID for what
// is verified and when). Errors wrap ErrNoPeerID.
func PeerSVIDFromContext(ctx context.Context) (PeerSVID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return PeerSVID{}, ErrNoPeerID
	}
	var state tls.ConnectionState
	switch info := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		state = info.State
	case *credentials.TLSInfo:
		if info == nil {
			return PeerSVID{}, ErrNoPeerID
		}
		state = info.State
	default:
		return PeerSVID{}, fmt.Errorf("%w: connection is %s, not tls", ErrNoPeerID, p.AuthInfo.AuthType())
	}
	if !state.HandshakeComplete {
		return PeerSVID{}, fmt.Errorf("%w: tls handshake not complete", ErrNoPeerID)
	}
	var chain []*x509.Certificate
	switch {
	case len(state.VerifiedChains) > 0 && len(state.VerifiedChains[0]) > 0:
		chain = state.VerifiedChains[0]
	case len(state.PeerCertificates) > 0:
		chain = state.PeerCertificates
	default:
		return PeerSVID{}, fmt.Errorf("%w: no client certificate", ErrNoPeerID)
	}
	id, err := x509svid.IDFromCert(chain[0])
	if err != nil {
		return PeerSVID{}, fmt.Errorf("%w: %v", ErrNoPeerID, err)
	}
	out := PeerSVID{ID: id, NotBefore: chain[0].NotBefore, NotAfter: chain[0].NotAfter}
	for _, c := range chain[1:] {
		if c.NotBefore.After(out.NotBefore) {
			out.NotBefore = c.NotBefore
		}
		if c.NotAfter.Before(out.NotAfter) {
			out.NotAfter = c.NotAfter
		}
	}
	return out, nil
}

type callerKey struct{}

// WithCaller returns a copy of ctx carrying id as the caller, for an
// interceptor to resolve CallerID once per call.
func WithCaller(ctx context.Context, id spiffeid.ID) context.Context {
	return context.WithValue(ctx, callerKey{}, id)
}

// CallerFromContext returns the caller stored by WithCaller; ok is false when
// there is none or it is the zero ID.
func CallerFromContext(ctx context.Context) (id spiffeid.ID, ok bool) {
	id, ok = ctx.Value(callerKey{}).(spiffeid.ID)
	return id, ok && !id.IsZero()
}
