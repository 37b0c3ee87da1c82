package main_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/tcpproxy"
	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/lease"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// Several broker processes (replicas) on one PostgreSQL lease store (issue
// 10): the real binary, three replicas, the store's schema made once by
// init-store. Each replica reaches the store through a tcpproxy of its own,
// so that a test can cut one replica off while the others carry on.

// The cluster's store settings: short, so that the tests wait little.
const (
	haIssueTimeout   = time.Second
	haClaimInterval  = 500 * time.Millisecond
	haClaimLookahead = time.Second
	// haAbandonedBound is how long after its replica died an interrupted
	// issuance may take to be cleaned up: the CREATING record's hold
	// (2×issue_timeout), one claim interval, and a drop.
	haAbandonedBound = 2*haIssueTimeout + haClaimInterval + 2*time.Second
	// haTakeoverBound is the same for an interrupted revocation: its
	// REVOKING record's hold (revocation.timeout, 3 s in the fixture's
	// config, plus 2 s), one claim interval, and a drop.
	haTakeoverBound = 5*time.Second + haClaimInterval + 2*time.Second
)

// cluster is N replicas sharing the certs, the config (but for listen:
// and the store's replica name and port), the data server and the store.
// replicas[0] is the fixture that made the store; the others are copies of
// it with their own address, files and process.
type cluster struct {
	t        *testing.T
	replicas []*fixture
	proxies  []*tcpproxy.Proxy // replicas[i] reaches the store through proxies[i]
	storeCfg *pgx.ConnConfig   // the store's server, directly
	schema   string
}

// newCluster makes n replicas on the test PostgreSQL (the data server),
// with their store in a new schema of the server storeDSN reaches (empty:
// the data server). No replica is started.
func newCluster(t *testing.T, n int, storeDSN string) *cluster {
	t.Helper()
	dataDSN := testenv.PostgresDSN(t)
	if storeDSN == "" {
		storeDSN = dataDSN
	}
	spc, err := pgx.ParseConfig(storeDSN)
	if err != nil {
		t.Fatal("parse the store's DSN (not shown: it holds a password)")
	}
	schema := storeSchema(t, spc)
	t.Setenv("CRASH_TEST_STORE_PASSWORD", spc.Password)
	c := &cluster{t: t, storeCfg: spc, schema: schema}
	target := net.JoinHostPort(spc.Host, strconv.Itoa(int(spc.Port)))
	for range n {
		p, err := tcpproxy.Listen(target)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		c.proxies = append(c.proxies, p)
	}
	section := func(i int) string {
		return fmt.Sprintf(`lease_store:
  postgres:
    host: 127.0.0.1
    port: %d
    database: %s
    username: %s
    password_env: CRASH_TEST_STORE_PASSWORD
    sslmode: disable
    schema: %s
    replica: %s
    issue_timeout: %s
    claim_interval: %s
    claim_lookahead: %s`, c.proxies[i].Port(), spc.Database, spc.User, schema, replicaName(i),
			haIssueTimeout, haClaimInterval, haClaimLookahead)
	}
	first := newFixtureStore(t, dataDSN, "", "", section(0))
	first.name = replicaName(0)
	first.writeConfig(section(0))
	c.replicas = append(c.replicas, first)
	for i := 1; i < n; i++ {
		r := &fixture{t: t, dir: first.dir, addr: brokertest.FreeAddr(t), prefix: first.prefix, admin: first.admin,
			name: replicaName(i), body: first.body}
		r.writeConfig(section(i))
		t.Cleanup(r.stop) // before first's cleanup drops the leftover users
		c.replicas = append(c.replicas, r)
	}
	return c
}

// replicaName is the name of replica i: a, b, c...
func replicaName(i int) string { return string(rune('a' + i)) }

// start starts every replica.
func (c *cluster) start() {
	c.t.Helper()
	for _, r := range c.replicas {
		r.start("")
	}
}

// claimedBy is the replica whose claim on lease id holds now, read from
// the store directly ("" if none).
func (c *cluster) claimedBy(id string) string {
	c.t.Helper()
	ctx := context.Background()
	conn, err := pgx.ConnectConfig(ctx, c.storeCfg)
	if err != nil {
		c.t.Fatalf("connect to the store: %v", err)
	}
	defer conn.Close(ctx)
	var by *string
	err = conn.QueryRow(ctx, "SELECT claimed_by FROM "+pgx.Identifier{c.schema}.Sanitize()+
		".leases WHERE id = $1 AND claim_deadline > now()", id).Scan(&by)
	if errors.Is(err, pgx.ErrNoRows) || by == nil {
		return ""
	}
	if err != nil {
		c.t.Fatalf("read the claim on %s: %v", id, err)
	}
	return *by
}

// validUntil is the data server's expiry of user u (pg_authid.rolvaliduntil).
func (c *cluster) validUntil(u string) time.Time {
	c.t.Helper()
	var at *time.Time
	if err := c.replicas[0].admin.QueryRow(context.Background(),
		"SELECT rolvaliduntil FROM pg_authid WHERE rolname = $1", u).Scan(&at); err != nil {
		c.t.Fatalf("valid until of %s: %v", u, err)
	}
	if at == nil {
		c.t.Fatalf("user %s has no VALID UNTIL", u)
	}
	return *at
}

// haWorkload is the SPIFFE ID of the fixture's client certificate.
const haWorkload = "spiffe://example.org/orders/api"

// admitted asks replica r whether the workload may issue, without issuing:
// a ttl under the 1 s minimum is refused as INVALID_ARGUMENT after
// admission, PERMISSION_DENIED before.
func admitted(t *testing.T, r *fixture) bool {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err := r.issueRole(ctx, "reader", 500*time.Millisecond)
	switch status.Code(err) {
	case codes.InvalidArgument:
		return true
	case codes.PermissionDenied:
		return false
	}
	t.Fatalf("admission probe through replica %s: %v, want INVALID_ARGUMENT or PERMISSION_DENIED", r.name, err)
	return false
}

// Every call works through every replica, on leases another one made.
func TestHACrossReplica(t *testing.T) {
	c := newCluster(t, 3, "")
	c.start()
	a, b, cr := c.replicas[0], c.replicas[1], c.replicas[2]
	ctx := context.Background()

	issued, err := a.issue(time.Minute)
	if err != nil {
		t.Fatalf("issue through a: %v", err)
	}
	l := issued.GetLease()
	before := c.validUntil(l.GetUsername())

	renewed, err := pb.NewCredentialServiceClient(b.conn("client")).RenewLease(ctx,
		&pb.RenewLeaseRequest{LeaseId: l.GetId(), Increment: durationpb.New(5 * time.Minute)})
	if err != nil {
		t.Fatalf("renew through b: %v", err)
	}
	exp := renewed.GetLease().GetExpireTime().AsTime()
	if !exp.After(l.GetExpireTime().AsTime().Add(3 * time.Minute)) {
		t.Fatalf("renew through b: expiry %s, want about 5m from now (was %s)", exp, l.GetExpireTime().AsTime())
	}
	after := c.validUntil(l.GetUsername())
	if !after.After(before.Add(3*time.Minute)) || after.Sub(exp).Abs() > 2*time.Second {
		t.Fatalf("VALID UNTIL after renew through b: %s (before %s), want the lease's new expiry %s", after, before, exp)
	}

	if got := cr.allLeases()[l.GetId()]; got == nil || !got.GetExpireTime().AsTime().Equal(exp) {
		t.Fatalf("admin list through c: %v, want the lease expiring at %s", got, exp)
	}
	own, err := pb.NewCredentialServiceClient(cr.conn("client")).ListLeases(ctx, &pb.ListLeasesRequest{})
	if err != nil || len(own.GetLeases()) != 1 || own.GetLeases()[0].GetId() != l.GetId() {
		t.Fatalf("the workload's list through c: %v, %v; want its one lease", own.GetLeases(), err)
	}

	if _, err := pb.NewCredentialServiceClient(cr.conn("client")).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: l.GetId()}); err != nil {
		t.Fatalf("revoke through c: %v", err)
	}
	if users := a.users(); len(users) != 0 {
		t.Fatalf("users %v after the revoke through c answered", users)
	}
	if len(a.allLeases()) != 0 {
		t.Fatalf("leases left after the revoke through c: %v", a.allLeases())
	}

	// A deregistration through a is refused by b within a second.
	if !admitted(t, b) {
		t.Fatal("the workload is refused before any deregistration")
	}
	if _, err := pb.NewAdminServiceClient(a.conn("admin")).DeregisterWorkload(ctx, &pb.DeregisterWorkloadRequest{SpiffeId: haWorkload}); err != nil {
		t.Fatalf("deregister through a: %v", err)
	}
	denied := brokertest.WaitFor(t, time.Second, "b refuses the workload deregistered through a", func() bool { return !admitted(t, b) })
	if admitted(t, cr) {
		t.Fatal("c still admits the workload deregistered through a")
	}
	if _, err := b.issue(time.Minute); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("issue through b after the deregistration: %v, want PERMISSION_DENIED", err)
	}
	resp, err := pb.NewAdminServiceClient(cr.conn("admin")).RegisterWorkload(ctx, &pb.RegisterWorkloadRequest{SpiffeId: haWorkload})
	if err != nil || !resp.GetWasDeregistered() {
		t.Fatalf("register through c: %v, %v", resp, err)
	}
	allowed := brokertest.WaitFor(t, time.Second, "b admits the workload registered again through c", func() bool { return admitted(t, b) })
	again, err := b.issue(time.Minute)
	if err != nil {
		t.Fatalf("issue through b after registering again: %v", err)
	}
	a.assertEveryUserBacked()
	if _, err := pb.NewCredentialServiceClient(a.conn("client")).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: again.GetLease().GetId()}); err != nil {
		t.Fatalf("revoke through a: %v", err)
	}
	t.Logf("deregistration seen by b %s after a answered; registration %s after c answered",
		denied.Round(time.Millisecond), allowed.Round(time.Millisecond))
	recordFault(faultRow{scenario: "HA: (de)registration seen by another replica", iterations: 1, maxCleanup: max(denied, allowed)})
}

// haRounds is how many times a scenario runs: once in make test, more
// often under make test-faults (CREDBROKER_FAULT_ITERATIONS, per a
// round's cost in kills).
func haRounds(killsPerRound int) int {
	return max(1, envInt("CREDBROKER_FAULT_ITERATIONS", 1)/killsPerRound)
}

// A replica killed with SIGKILL at each failpoint of issuance and
// revocation, while the two others carry on: no acknowledged lease is
// lost, every user is backed, the dead replica's interrupted issuance is
// cleaned up by another replica within its bound, and its interrupted
// revocation finished by another.
func TestHAKillAtFailpoints(t *testing.T) {
	issuePoints := []string{lease.FailpointAfterIntent, lease.FailpointAfterCreateUser, lease.FailpointAfterActivate}
	revokePoints := []string{lease.FailpointAfterRevoking, lease.FailpointAfterDrop}
	points := append(issuePoints, revokePoints...)
	rounds := haRounds(10)
	c := newCluster(t, 3, "")
	c.start()
	victim, b, cr := c.replicas[0], c.replicas[1], c.replicas[2]
	issueRow := faultRow{scenario: "HA: replica killed mid-issuance"}
	revokeRow := faultRow{scenario: "HA: replica killed mid-revocation (finished)"}

	// Acknowledged leases that no kill may lose, made through every replica.
	live := map[string]acked{}
	for _, r := range c.replicas {
		resp, err := r.issue(10 * time.Minute)
		if err != nil {
			t.Fatalf("issue through %s: %v", r.name, err)
		}
		l := resp.GetLease()
		live[l.GetId()] = acked{l.GetId(), l.GetUsername(), l.GetExpireTime().AsTime()}
	}
	victim.kill()

	for round := range rounds {
		for _, point := range points {
			victim.start(point)
			before := b.allLeases()
			var target acked // the lease the revocation was asked for
			var row *faultRow
			if slices.Contains(issuePoints, point) {
				row = &issueRow
				if _, err := victim.issue(time.Minute); err == nil {
					t.Fatalf("%s: issue through the victim succeeded although it died", point)
				}
			} else {
				row = &revokeRow
				resp, err := b.issue(10 * time.Minute)
				if err != nil {
					t.Fatalf("%s: issue through b: %v", point, err)
				}
				l := resp.GetLease()
				target = acked{l.GetId(), l.GetUsername(), l.GetExpireTime().AsTime()}
				before = b.allLeases()
				_, err = pb.NewCredentialServiceClient(victim.conn("client")).RevokeLease(context.Background(),
					&pb.RevokeLeaseRequest{LeaseId: target.id})
				if err == nil {
					t.Fatalf("%s: revoke through the victim succeeded although it died", point)
				}
			}
			victim.waitKilled()
			if point == lease.FailpointAfterIntent || point == lease.FailpointAfterCreateUser {
				creating := 0
				for id, l := range b.allLeases() {
					if before[id] == nil && l.GetState() == pb.Lease_CREATING {
						creating++
					}
				}
				unbacked := len(b.unbackedUsers())
				if userMade := point == lease.FailpointAfterCreateUser; creating != 1 || userMade != (unbacked == 1) {
					t.Fatalf("%s: at the kill, %d new CREATING records and %d users without an active lease; want 1 and %v",
						point, creating, unbacked, userMade)
				}
			}

			// What the dead replica left is finished by the others: no
			// record but the acknowledged ones (and an issuance activated
			// before the kill), every user backed.
			var activated string
			took := brokertest.WaitFor(t, 20*time.Second, point+": the others finish the dead replica's work", func() bool {
				now := b.allLeases()
				for id, l := range now {
					switch {
					case before[id] != nil:
					case point == lease.FailpointAfterActivate && l.GetState() == pb.Lease_ACTIVE:
						activated = id
					default:
						return false // the interrupted issuance's record
					}
				}
				if target.id != "" && now[target.id] != nil {
					return false // the interrupted revocation's
				}
				return len(cr.unbackedUsers()) == 0
			})
			if target.id != "" && b.userSet()[target.username] {
				t.Fatalf("%s: the revoked lease's user %s still exists", point, target.username)
			}
			if point == lease.FailpointAfterActivate {
				if activated == "" || cr.allLeases()[activated] == nil {
					t.Fatalf("%s: the lease made durably ACTIVE before the kill is gone", point)
				}
				if _, err := pb.NewAdminServiceClient(cr.conn("admin")).RevokeLeases(context.Background(),
					&pb.RevokeLeasesRequest{LeaseIdPrefix: activated}); err != nil {
					t.Fatalf("%s: revoke the activated lease: %v", point, err)
				}
			}
			t.Logf("round %d, %s: the others finished the dead replica's work %s after the kill", round, point, took.Round(time.Millisecond))
			bound := haTakeoverBound
			if slices.Contains(issuePoints, point) {
				bound = haAbandonedBound
			}
			if took > bound {
				t.Errorf("%s: the dead replica's work took %s to finish, over its bound %s", point, took, bound)
			}
			row.iterations++
			row.maxCleanup = max(row.maxCleanup, took)

			present := cr.allLeases()
			for id := range live {
				if present[id] == nil {
					t.Errorf("%s: acknowledged lease %s lost", point, id)
					row.lost++
					delete(live, id)
				}
			}
			row.orphans += len(cr.unbackedUsers())
		}
	}
	b.assertEveryUserBacked()
	recordFault(issueRow)
	recordFault(revokeRow)
}

// haExpiring is how many leases TestHAExpiryExactlyOnce lets expire
// together.
const haExpiring = 100

// 100 leases, issued through the three replicas, expire within a second of
// each other: every user is dropped, by exactly one replica, once (the
// data server logs every statement), and on time.
func TestHAExpiryExactlyOnce(t *testing.T) {
	c := newCluster(t, 3, "")
	c.start()
	pgLog := testenv.PostgresLog(t)
	logStart := fileSize(t, pgLog)

	// Each lease's ttl (at least the role's minimum, 1 s) ends at the same
	// moment, however long the issuance takes.
	at := time.Now().Add(5 * time.Second)
	expiry := map[string]time.Time{}
	var mu sync.Mutex
	var g errgroup.Group
	g.SetLimit(20)
	for i := range haExpiring {
		r := c.replicas[i%len(c.replicas)]
		g.Go(func() error {
			resp, err := r.issue(time.Until(at))
			if err != nil {
				return fmt.Errorf("issue through %s: %w\n%s", r.name, err, r.logTail())
			}
			mu.Lock()
			expiry[resp.GetLease().GetUsername()] = resp.GetLease().GetExpireTime().AsTime()
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	first, last := time.Time{}, time.Time{}
	for _, e := range expiry {
		if first.IsZero() || e.Before(first) {
			first = e
		}
		if e.After(last) {
			last = e
		}
	}
	t.Logf("%d leases expiring within %s of each other", len(expiry), last.Sub(first).Round(time.Millisecond))
	if last.Sub(first) > time.Second {
		t.Fatalf("the leases expire %s apart, want within 1s: issuance too slow", last.Sub(first))
	}

	// When each user is seen gone, against its lease's expiry.
	late := time.Duration(0)
	gone := map[string]bool{}
	brokertest.WaitFor(t, time.Until(last)+10*time.Second, "every expired lease's user dropped", func() bool {
		users := c.replicas[0].userSet()
		now := time.Now()
		for u, e := range expiry {
			if !gone[u] && !users[u] {
				gone[u] = true
				late = max(late, now.Sub(e))
			}
		}
		return len(gone) == len(expiry)
	})
	brokertest.WaitFor(t, 5*time.Second, "every expired lease's record deleted", func() bool { return len(c.replicas[1].allLeases()) == 0 })

	drops := dropsPerUser(t, pgLog, logStart, expiry)
	bad := 0
	for u := range expiry {
		if drops[u] != 1 {
			t.Errorf("user %s: %d DROP ROLE statements, want exactly 1", u, drops[u])
			bad++
		}
	}
	t.Logf("%d users dropped once each; the last seen gone %s after its expiry", len(expiry)-bad, late.Round(time.Millisecond))
	recordFault(faultRow{scenario: fmt.Sprintf("HA: %d leases expiring together, 3 replicas", haExpiring),
		iterations: 1, orphans: bad, maxCleanup: late})
}

func fileSize(t *testing.T, path string) int64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}

// dropsPerUser counts, in the server log from offset on, the DROP ROLE
// statements that name each of the users (a batched drop names several).
// Only the statement's own LOG line counts, not an error's STATEMENT line
// quoting it.
func dropsPerUser(t *testing.T, path string, offset int64, users map[string]time.Time) map[string]int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(offset, io.SeekStart); err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		line := sc.Text()
		_, stmt, ok := strings.Cut(line, "DROP ROLE ")
		if !ok || !strings.Contains(line, " LOG:  ") {
			continue
		}
		for u := range users {
			out[u] += strings.Count(stmt, pgx.Identifier{u}.Sanitize())
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// The store's server is down while leases are live and some expire:
// issuance through every replica fails UNAVAILABLE and leaves no user;
// once the server is back, the expired leases are revoked within one claim
// backoff, and no live lease is lost.
func TestHAStoreOutage(t *testing.T) {
	outage := envDuration("CREDBROKER_FAULT_STORE_OUTAGE", 5*time.Second)
	srv := startOwnServer(t, "postgres")
	c := newCluster(t, 3, srv.dsn)
	c.start()
	a := c.replicas[0]

	var expiring, lasting []acked
	for i := range 6 {
		r := c.replicas[i%len(c.replicas)]
		ttl := 2 * time.Second // expires during the outage
		if i%2 == 1 {
			ttl = outage + time.Minute
		}
		resp, err := r.issue(ttl)
		if err != nil {
			t.Fatalf("issue through %s: %v", r.name, err)
		}
		l := resp.GetLease()
		ack := acked{l.GetId(), l.GetUsername(), l.GetExpireTime().AsTime()}
		if i%2 == 1 {
			lasting = append(lasting, ack)
		} else {
			expiring = append(expiring, ack)
		}
	}
	users := a.users()
	srv.pause(t)
	pausedAt := time.Now()
	time.Sleep(time.Until(expiring[len(expiring)-1].expire) + 500*time.Millisecond)
	if time.Since(pausedAt) > outage {
		t.Fatalf("the leases expire after the outage (%s) ends: lengthen it", outage)
	}

	for _, r := range c.replicas {
		_, err := r.issue(time.Minute)
		if status.Code(err) != codes.Unavailable {
			t.Fatalf("issue through %s while the store is down: %v, want UNAVAILABLE", r.name, err)
		}
	}
	if got := a.users(); !slices.Equal(got, users) {
		t.Fatalf("users while the store is down: %v, want the %d there before (issuance left one)", got, len(users))
	}
	time.Sleep(time.Until(pausedAt.Add(outage)))
	srv.resume(t)

	// A replica backs off its claims up to 5 s while the store is down;
	// then one claim, the drop, and the record's delete.
	expired := map[string]bool{}
	for _, e := range expiring {
		expired[e.username] = true
	}
	took := brokertest.WaitFor(t, 10*time.Second, "the leases expired during the outage revoked", func() bool {
		for _, u := range a.users() {
			if expired[u] {
				return false
			}
		}
		for _, e := range expiring {
			if a.allLeases()[e.id] != nil {
				return false
			}
		}
		return true
	})
	present := c.replicas[2].allLeases()
	lost := 0
	for _, l := range lasting {
		if p := present[l.id]; p == nil || p.GetState() != pb.Lease_ACTIVE {
			t.Errorf("live lease %s after the outage: %v, want ACTIVE", l.id, p)
			lost++
		}
	}
	if len(present) != len(lasting) {
		t.Errorf("%d leases after the outage, want the %d live ones", len(present), len(lasting))
	}
	a.assertEveryUserBacked()
	if _, err := c.replicas[1].issue(time.Minute); err != nil {
		t.Fatalf("issue after the outage: %v", err)
	}
	t.Logf("store down %s; the leases expired meanwhile revoked %s after it came back", outage, took.Round(time.Millisecond))
	recordFault(faultRow{scenario: fmt.Sprintf("HA: store down %s during expiry, 3 replicas", outage),
		iterations: 1, orphans: len(a.unbackedUsers()), lost: lost, maxCleanup: took})
}

// Replica a loses the store (its link cut, or blackholed) just before a
// lease's expiry, when it may have claimed the lease; the lease is renewed
// through b. When a is back, past the old expiry and past its claim's TTL,
// it has not dropped the user: the lease is ACTIVE, and is revoked at its
// new expiry.
func TestHAPartitionedReplica(t *testing.T) {
	const (
		ttl = 4 * time.Second
		// claimTTL is the Shared manager's: lookahead, one claim
		// interval, and 2 s of slack.
		claimTTL = haClaimLookahead + haClaimInterval + 2*time.Second
	)
	c := newCluster(t, 3, "")
	c.start()
	a, b, cr := c.replicas[0], c.replicas[1], c.replicas[2]
	rounds := haRounds(12)
	row := faultRow{scenario: "HA: replica cut off from store, renewed elsewhere", iterations: rounds}
	claimedByA := 0
	for round := range rounds {
		cut, mode := c.proxies[0].Cut, "cut"
		if round%2 == 1 {
			cut, mode = c.proxies[0].Blackhole, "blackholed"
		}
		resp, err := a.issue(ttl)
		if err != nil {
			t.Fatal(err)
		}
		l := resp.GetLease()
		oldExp := l.GetExpireTime().AsTime()
		// The replicas claim a lease once it expires within their
		// lookahead. Silence b and c then, so that a claims it, and cut a
		// off before the lease is due (if a has not claimed it by then,
		// the round goes on all the same).
		time.Sleep(time.Until(oldExp.Add(-haClaimLookahead - 100*time.Millisecond)))
		c.proxies[1].Blackhole()
		c.proxies[2].Blackhole()
		var by string
		for time.Until(oldExp) > 400*time.Millisecond && by == "" {
			by = c.claimedBy(l.GetId())
			time.Sleep(20 * time.Millisecond)
		}
		cut()
		c.proxies[1].Restore()
		c.proxies[2].Restore()
		if by == "a" {
			claimedByA++
		}
		// Past the old expiry and the claim's TTL, and long enough after
		// for the checks below.
		restoreAt := oldExp.Add(claimTTL + time.Second)
		renewed, err := pb.NewCredentialServiceClient(b.conn("client")).RenewLease(context.Background(),
			&pb.RenewLeaseRequest{LeaseId: l.GetId(), Increment: durationpb.New(time.Until(restoreAt) + 3*time.Second)})
		if err != nil {
			t.Fatalf("round %d: renew through b while a is %s: %v", round, mode, err)
		}
		newExp := renewed.GetLease().GetExpireTime().AsTime()
		time.Sleep(time.Until(restoreAt))
		c.proxies[0].Restore()
		time.Sleep(time.Second) // a's stale work, if any, reaches the store
		if !cr.userSet()[l.GetUsername()] {
			t.Fatalf("round %d (a %s): the renewed lease's user was dropped\n%s", round, mode, a.logTail())
		}
		if got := cr.allLeases()[l.GetId()]; got == nil || got.GetState() != pb.Lease_ACTIVE || !got.GetExpireTime().AsTime().Equal(newExp) {
			t.Fatalf("round %d (a %s): the renewed lease is %v, want ACTIVE until %s", round, mode, got, newExp)
		}
		a.assertEveryUserBacked()
		time.Sleep(time.Until(newExp))
		took := brokertest.WaitFor(t, 5*time.Second, "the renewed lease revoked at its new expiry", func() bool {
			return !cr.userSet()[l.GetUsername()] && b.allLeases()[l.GetId()] == nil
		})
		t.Logf("round %d (a %s, claimed by %q when cut off): the lease renewed through b survived; revoked %s after its new expiry",
			round, mode, by, took.Round(time.Millisecond))
		row.maxCleanup = max(row.maxCleanup, took)
	}
	t.Logf("a had claimed the lease when cut off in %d of %d rounds", claimedByA, rounds)
	recordFault(row)
}
