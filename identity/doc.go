// Package identity answers two questions for the broker: who is calling, and
// may that caller have a role. It knows SPIFFE and TLS and nothing of SQL or
// leases; it reads the caller from gRPC's peer information but never produces
// gRPC status codes (the broker maps errors in one place).
//
// # Sources
//
// A [Source] supplies the broker's own X.509-SVID and the trust bundle used
// to verify callers. [FileSource] reads PEM files and picks up rotated files
// while it runs; the SPIFFE Workload API source (a SPIRE agent) is the other
// choice. Both may be swapped at any time without restarting listeners,
// because the TLS configurations built here ask the source on every
// handshake.
//
// # TLS
//
// [ServerTLSConfig] requires TLS 1.3 and a client X.509-SVID of the broker's
// trust domain, verified against the bundle during the handshake: a caller
// without one never reaches a handler. [CallerID] then reads the verified
// SPIFFE ID of the caller inside a handler or interceptor. A client
// authorizes the broker by its SPIFFE ID ([ClientTLSConfig]) or, when it does
// not know it, by its trust domain ([ClientTLSConfigMemberOf]).
//
// # Policy
//
// A role is granted by [Pattern]s: an exact SPIFFE ID, or a path prefix
// ending in "/*" that matches on segment boundaries only. [NewRolePolicy]
// denies by default. Errors never say which IDs would have been allowed.
//
// # Development certificates
//
// [DevCA] is a throwaway certificate authority for demos and tests: every
// package's tests use it to run real TLS handshakes instead of mocks.
package identity
