package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

const leasesUsage = `usage: credbroker leases <list|revoke> [flags]

  leases list   [-role R] [-spiffe-id ID] [-state S]   every lease, all pages
  leases revoke -lease-id ID                            one lease
  leases revoke [-prefix P] [-role R] [-spiffe-id ID]   in bulk (at least one; all must match)

Run "credbroker leases list -h" for the connection flags.
`

func leasesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, leasesUsage)
		return errors.New("leases: list or revoke?")
	}
	switch args[0] {
	case "list":
		return leasesList(ctx, args[1:], stdout, stderr)
	case "revoke":
		return leasesRevoke(ctx, args[1:], stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, leasesUsage)
		return nil
	}
	fmt.Fprint(stderr, leasesUsage)
	return fmt.Errorf("leases: unknown command %q", args[0])
}

// maxPageSize is the broker's largest page; leases list asks for it.
const maxPageSize = 1000

func leasesList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c clientFlags
	fs := newCLIFlagSet("leases list", "leases list [-role R] [-spiffe-id ID] [-state S] [flags]", stderr, &c)
	role := fs.String("role", "", "only the leases of this role")
	owner := fs.String("spiffe-id", "", "only the leases owned by this SPIFFE ID")
	state := fs.String("state", "", "only the leases in this state: active, revoking or creating")
	pageSize := fs.Int("page-size", maxPageSize, "leases asked for per call (all pages are fetched)")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("leases list: unexpected argument %q", pos[0])
	}
	if err := c.check(); err != nil {
		return fmt.Errorf("leases list: %w", err)
	}
	if *owner != "" {
		if _, err := spiffeid.FromString(*owner); err != nil {
			return fmt.Errorf("leases list: -spiffe-id: %w", err)
		}
	}
	if *pageSize < 1 || *pageSize > maxPageSize {
		return fmt.Errorf("leases list: -page-size must be 1 to %d", maxPageSize)
	}
	// An ended lease (REVOKED, EXPIRED) is not kept, so never listed: only
	// the states a listed lease can be in are accepted.
	var want pb.Lease_State
	if *state != "" {
		v := pb.Lease_State(pb.Lease_State_value[strings.ToUpper(*state)])
		if !slices.Contains([]pb.Lease_State{pb.Lease_ACTIVE, pb.Lease_REVOKING, pb.Lease_CREATING}, v) {
			return fmt.Errorf("leases list: -state must be active, revoking or creating, not %q (ended leases are not kept)", *state)
		}
		want = v
	}
	return c.adminCall(ctx, "leases list", func(ctx context.Context, client pb.AdminServiceClient) error {
		all := &pb.AdminListLeasesResponse{}
		req := &pb.AdminListLeasesRequest{Role: *role, SpiffeId: *owner, PageSize: int32(*pageSize)}
		for {
			resp, err := client.ListLeases(ctx, req)
			if err != nil {
				return err
			}
			for _, l := range resp.GetLeases() {
				// The broker filters by role and owner, not by state.
				if want == pb.Lease_STATE_UNSPECIFIED || l.GetState() == want {
					all.Leases = append(all.Leases, l)
				}
			}
			next := resp.GetNextPageToken()
			if next == "" {
				break
			}
			if next == req.PageToken {
				return errors.New("the broker returned the same page token twice")
			}
			req.PageToken = next
		}
		if c.output == "json" {
			return printJSON(stdout, all)
		}
		return leaseTable(stdout, all.GetLeases())
	})
}

func leasesRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c clientFlags
	fs := newCLIFlagSet("leases revoke", "leases revoke (-lease-id ID | [-prefix P] [-role R] [-spiffe-id ID]) [flags]", stderr, &c)
	id := fs.String("lease-id", "", "revoke this one lease (32 hex characters)")
	prefix := fs.String("prefix", "", "revoke the leases whose ID starts with this (lowercase hex)")
	role := fs.String("role", "", "revoke the leases of this role")
	owner := fs.String("spiffe-id", "", "revoke the leases owned by this SPIFFE ID")
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("leases revoke: unexpected argument %q", pos[0])
	}
	if err := c.check(); err != nil {
		return fmt.Errorf("leases revoke: %w", err)
	}
	switch {
	case *id == "" && *prefix == "" && *role == "" && *owner == "":
		return errors.New("leases revoke: give -lease-id, or at least one of -prefix, -role and -spiffe-id")
	case *id != "" && (*prefix != "" || *role != "" || *owner != ""):
		return errors.New("leases revoke: -lease-id goes alone")
	case *id != "" && !lease.ValidID(*id):
		return fmt.Errorf("leases revoke: -lease-id %q is not a lease ID (32 lowercase hex characters)", *id)
	}
	if *owner != "" {
		if _, err := spiffeid.FromString(*owner); err != nil {
			return fmt.Errorf("leases revoke: -spiffe-id: %w", err)
		}
	}
	// One lease is revoked as a bulk revoke by its whole ID: RevokeLease
	// on CredentialService is for the lease's owner.
	req := &pb.RevokeLeasesRequest{LeaseIdPrefix: *prefix, Role: *role, SpiffeId: *owner}
	if *id != "" {
		req.LeaseIdPrefix = *id
	}
	return c.adminCall(ctx, "leases revoke", func(ctx context.Context, client pb.AdminServiceClient) error {
		resp, err := client.RevokeLeases(ctx, req)
		if err != nil {
			return err
		}
		if c.output == "json" {
			if err := printJSON(stdout, resp); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(stdout, "revoked %d %s\n", resp.GetRevoked(), plural(resp.GetRevoked(), "lease", "leases"))
		}
		if *id != "" && resp.GetRevoked() == 0 {
			return &callError{fmt.Errorf("leases revoke: NOT_FOUND: no live lease %s", *id)}
		}
		return nil
	})
}

func plural(n int32, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

const workloadUsage = `usage: credbroker workload <deregister|register> SPIFFE_ID [flags]

  workload deregister ID   revoke every lease of ID and refuse it new credentials
  workload register ID     lift a deregistration

Run "credbroker workload deregister -h" for the connection flags.
`

func workloadCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, workloadUsage)
		return errors.New("workload: deregister or register?")
	}
	sub := args[0]
	switch sub {
	case "deregister", "register":
	case "help", "-h", "--help":
		fmt.Fprint(stdout, workloadUsage)
		return nil
	default:
		fmt.Fprint(stderr, workloadUsage)
		return fmt.Errorf("workload: unknown command %q", sub)
	}
	cmd := "workload " + sub
	var c clientFlags
	fs := newCLIFlagSet(cmd, cmd+" SPIFFE_ID [flags]", stderr, &c)
	pos, err := parseInterspersed(fs, args[1:])
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		fs.Usage()
		return fmt.Errorf("%s: want one SPIFFE ID, got %d arguments", cmd, len(pos))
	}
	if err := c.check(); err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	id, err := spiffeid.FromString(pos[0])
	if err != nil {
		return fmt.Errorf("%s: %q: %w", cmd, pos[0], err)
	}
	return c.adminCall(ctx, cmd, func(ctx context.Context, client pb.AdminServiceClient) error {
		if sub == "register" {
			resp, err := client.RegisterWorkload(ctx, &pb.RegisterWorkloadRequest{SpiffeId: id.String()})
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(stdout, resp)
			}
			if resp.GetWasDeregistered() {
				fmt.Fprintf(stdout, "registered %s: it may be issued credentials again\n", id)
			} else {
				fmt.Fprintf(stdout, "registered %s: it was not deregistered\n", id)
			}
			return nil
		}
		resp, err := client.DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: id.String()})
		if err != nil {
			return err
		}
		if c.output == "json" {
			return printJSON(stdout, resp)
		}
		fmt.Fprintf(stdout, "deregistered %s: %d %s revoked\n", id, resp.GetRevoked(), plural(resp.GetRevoked(), "lease", "leases"))
		if len(resp.GetLeases()) == 0 {
			return nil
		}
		fmt.Fprintln(stdout)
		return leaseTable(stdout, resp.GetLeases())
	})
}

// singleCmd is an operator command without subcommands or positional
// arguments (orphans, roles).
func singleCmd(ctx context.Context, name, synopsis string, args []string, stdout, stderr io.Writer,
	do func(context.Context, pb.AdminServiceClient, clientFlags) error) error {
	var c clientFlags
	fs := newCLIFlagSet(name, synopsis, stderr, &c)
	pos, err := parseInterspersed(fs, args)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%s: unexpected argument %q", name, pos[0])
	}
	if err := c.check(); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	return c.adminCall(ctx, name, func(ctx context.Context, client pb.AdminServiceClient) error {
		return do(ctx, client, c)
	})
}

func orphansCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return singleCmd(ctx, "orphans", "orphans [flags]   users marked by this broker that no lease backs (dry run)", args, stdout, stderr,
		func(ctx context.Context, client pb.AdminServiceClient, c clientFlags) error {
			resp, err := client.ListOrphans(ctx, &pb.ListOrphansRequest{})
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(stdout, resp)
			}
			t := newTable(stdout, "DATABASE", "USERNAME", "ERROR")
			for _, d := range resp.GetDatabases() {
				names := append([]string(nil), d.GetUsernames()...)
				sort.Strings(names)
				if len(names) == 0 || d.GetError() != "" {
					// A database with none (or that could not be listed)
					// still gets a row, so silence is never ambiguous.
					t.row(d.GetDatabase(), "", d.GetError())
				}
				for _, n := range names {
					t.row(d.GetDatabase(), n, "")
				}
			}
			return t.flush()
		})
}

func rolesCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	return singleCmd(ctx, "roles", "roles [flags]   the configured roles", args, stdout, stderr,
		func(ctx context.Context, client pb.AdminServiceClient, c clientFlags) error {
			resp, err := client.ListRoles(ctx, &pb.ListRolesRequest{})
			if err != nil {
				return err
			}
			if c.output == "json" {
				return printJSON(stdout, resp)
			}
			t := newTable(stdout, "NAME", "DATABASE", "DEFAULT TTL", "MAX TTL", "ALLOWED SPIFFE IDS")
			for _, r := range resp.GetRoles() {
				t.row(r.GetName(), r.GetDatabase(), dur(r.GetDefaultTtl()), dur(r.GetMaxTtl()), strings.Join(r.GetAllowedSpiffeIds(), ","))
			}
			return t.flush()
		})
}
