package identity

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"

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
func CallerID(ctx context.Context) (spiffeid.ID, error) {
	p, ok := peer.FromContext(ctx)
	if !ok || p.AuthInfo == nil {
		return spiffeid.ID{}, ErrNoPeerID
	}
	var state tls.ConnectionState
	switch info := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		state = info.State
	case *credentials.TLSInfo:
		if info == nil {
			return spiffeid.ID{}, ErrNoPeerID
		}
		state = info.State
	default:
		return spiffeid.ID{}, fmt.Errorf("%w: connection is %s, not tls", ErrNoPeerID, p.AuthInfo.AuthType())
	}
	if !state.HandshakeComplete {
		return spiffeid.ID{}, fmt.Errorf("%w: tls handshake not complete", ErrNoPeerID)
	}
	var leaf *x509.Certificate
	switch {
	case len(state.VerifiedChains) > 0 && len(state.VerifiedChains[0]) > 0:
		leaf = state.VerifiedChains[0][0]
	case len(state.PeerCertificates) > 0:
		leaf = state.PeerCertificates[0]
	default:
		return spiffeid.ID{}, fmt.Errorf("%w: no client certificate", ErrNoPeerID)
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %v", ErrNoPeerID, err)
	}
	return id, nil
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
