package main

import (
	"flag"
	"fmt"
	"io"
	"net"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/identity"
)

// idFlags collects repeated --id name=spiffe://... flags.
type idFlags map[string]spiffeid.ID

func (f idFlags) String() string { return "" }

func (f idFlags) Set(v string) error {
	name, raw, ok := strings.Cut(v, "=")
	if !ok || name == "" {
		return fmt.Errorf("want name=spiffe://trust.domain/path, got %q", v)
	}
	id, err := spiffeid.FromString(raw)
	if err != nil {
		return fmt.Errorf("%q: %w", raw, err)
	}
	f[name] = id
	return nil
}

func devCerts(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("dev-certs", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("out", "dev-certs", "directory to write bundle.pem and the SVIDs to")
	tdName := fs.String("trust-domain", "example.org", "trust domain of the dev CA")
	server := fs.String("server", "", "SPIFFE ID of the broker; written as server.pem with DNS localhost and IP 127.0.0.1 (default spiffe://<trust-domain>/credbroker)")
	ttl := fs.Duration("ttl", 24*time.Hour, "validity of the CA and the SVIDs")
	ids := idFlags{}
	fs.Var(ids, "id", "name=SPIFFE ID of a workload SVID to mint as <name>.pem (repeatable)")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: credbroker dev-certs [--out DIR] [--trust-domain TD] [--server ID] [--id name=ID]...")
		fmt.Fprintln(stderr, "Mints a throwaway CA and X.509-SVIDs for demos and local testing. Not for production: use SPIRE.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	td, err := spiffeid.TrustDomainFromString(*tdName)
	if err != nil {
		return fmt.Errorf("dev-certs: --trust-domain: %w", err)
	}
	serverID := spiffeid.RequireFromPath(td, "/credbroker")
	if *server != "" {
		if serverID, err = spiffeid.FromString(*server); err != nil {
			return fmt.Errorf("dev-certs: --server: %w", err)
		}
	}
	if _, taken := ids["server"]; taken {
		return fmt.Errorf("dev-certs: --id name \"server\" is reserved for the broker")
	}
	ca, err := identity.NewDevCA(td, identity.WithCAValidity(*ttl))
	if err != nil {
		return err
	}
	if err := ca.WriteFiles(*out, map[string]spiffeid.ID{"server": serverID}, identity.SVIDOptions{
		DNSNames: []string{"localhost"},
		IPs:      []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}); err != nil {
		return err
	}
	if err := ca.WriteFiles(*out, ids, identity.SVIDOptions{}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "wrote %s/bundle.pem and server.pem (%s)\n", *out, serverID)
	for name, id := range ids {
		fmt.Fprintf(stdout, "wrote %s/%s.pem (%s)\n", *out, name, id)
	}
	return nil
}
