package main_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/credbroker/credbroker/internal/testenv"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// The fault suite drives the real broker binary against a real PostgreSQL.
// make test runs it with few iterations; make test-faults with the full
// count (CREDBROKER_FAULT_ITERATIONS=50, CREDBROKER_FAULT_OUTAGE=30s; the
// HA tests' CREDBROKER_FAULT_STORE_OUTAGE=20s) and prints the summary
// table at the end.

type faultRow struct {
	scenario   string
	iterations int
	orphans    int
	lost       int
	maxCleanup time.Duration
}

var (
	faultMu   sync.Mutex
	faultRows []faultRow
)

func recordFault(r faultRow) {
	faultMu.Lock()
	defer faultMu.Unlock()
	faultRows = append(faultRows, r)
}

func printFaultTable() {
	faultMu.Lock()
	defer faultMu.Unlock()
	if len(faultRows) == 0 {
		return
	}
	fmt.Println()
	fmt.Printf("%-52s %10s %8s %11s %22s\n", "scenario", "iterations", "orphans", "leases lost", "max seconds to clean up")
	for _, r := range faultRows {
		fmt.Printf("%-52s %10d %8d %11d %22.2f\n", r.scenario, r.iterations, r.orphans, r.lost, r.maxCleanup.Seconds())
	}
	fmt.Println()
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, err := time.ParseDuration(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// issuedPerRole counts acknowledged leases per role over a kill run, to
// prove both engines were exercised. Guarded by the run's mutex.
var issuedPerRole = map[string]int{}

type acked struct {
	id, username string
	expire       time.Time
}

// TestFaultKillAnywhere kills the broker with SIGKILL at every failpoint of
// issue and revoke, and at random moments, while workloads issue and revoke.
// After each restart: no lease acknowledged to a client and still live is
// missing, every user of an ended lease is gone within seconds, and every
// remaining broker user is backed by an active lease.
func TestFaultKillAnywhere(t *testing.T) {
	iterations := envInt("CREDBROKER_FAULT_ITERATIONS", 6)
	points := []string{"issue-after-intent", "issue-after-create-user", "issue-after-activate",
		"lease-after-revoking-written", "lease-after-drop", "random"}
	f := newFixtureBoth(t)
	row := faultRow{scenario: "kill -9 at failpoints + random (PostgreSQL + MariaDB)", iterations: iterations}
	live := map[string]acked{} // acknowledged, not revoked by its client
	var mu sync.Mutex

	for i := range iterations {
		point := points[i%len(points)]
		fp := point
		if point == "random" {
			fp = ""
		}
		if f.startMayCrash(fp) {
			crashUnderLoad(t, f, point, live, &mu)
		} else {
			t.Logf("%s: the broker killed itself while restoring leases", point)
		}
		// else: killed at a revoke failpoint while restoring leases, a crash
		// like any other; the checks below still apply.

		restart := time.Now()
		f.start("")
		present := f.allLeases()
		for id, a := range live {
			if time.Now().Before(a.expire.Add(-500*time.Millisecond)) && present[id] == nil {
				t.Errorf("iteration %d (%s): acknowledged live lease %s is missing after restart", i, point, id)
				row.lost++
				delete(live, id)
			}
		}
		// Every ended lease's user goes, and every user left is backed.
		deadline := time.Now().Add(10 * time.Second)
		for {
			orphans := f.unbackedUsers()
			expiredLeft := 0
			users := f.userSet()
			for _, a := range live {
				if time.Now().After(a.expire) && users[a.username] {
					expiredLeft++
				}
			}
			if len(orphans) == 0 && expiredLeft == 0 {
				break
			}
			if time.Now().After(deadline) {
				t.Errorf("iteration %d (%s): after 10s, %d unbacked users %v, %d expired users left\n%s", i, point, len(orphans), orphans, expiredLeft, f.logTail())
				row.orphans += len(orphans)
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if d := time.Since(restart); d > row.maxCleanup {
			row.maxCleanup = d
		}
		for id, a := range live {
			if time.Now().After(a.expire) {
				delete(live, id)
			}
		}
		f.stop()
	}
	t.Logf("acknowledged leases: %d on PostgreSQL (reader), %d on MariaDB (shop)", issuedPerRole["reader"], issuedPerRole["shop"])
	if issuedPerRole["reader"] == 0 || issuedPerRole["shop"] == 0 {
		t.Errorf("the workload did not get leases on both engines: %v", issuedPerRole)
	}
	f.start("")
	for _, role := range []string{"reader", "shop"} {
		if _, err := pb.NewAdminServiceClient(f.conn("admin")).RevokeLeases(context.Background(), &pb.RevokeLeasesRequest{Role: role}); err != nil {
			t.Errorf("final revoke of %s: %v", role, err)
		}
	}
	f.waitNoUsers(10 * time.Second)
	recordFault(row)
}

// TestFaultDatabaseOutage stops the database server while leases expire,
// for each engine: the leases stay visible as REVOKING with their last
// error, issuance answers UNAVAILABLE and leaves nothing, and when the server
// is back every user is dropped within one backoff period.
func TestFaultDatabaseOutage(t *testing.T) {
	for _, engine := range []string{"postgres", "mariadb"} {
		t.Run(engine, func(t *testing.T) { databaseOutage(t, engine) })
	}
}

func databaseOutage(t *testing.T, engine string) {
	outage := envDuration("CREDBROKER_FAULT_OUTAGE", 4*time.Second)
	srv := startOwnServer(t, engine)
	dsn := srv.dsn
	var f *fixture
	role := "reader"
	if engine == "mariadb" {
		f, role = newFixtureBothDSN(t, testenv.PostgresDSN(t), dsn), "shop"
	} else {
		f = newFixtureDSN(t, dsn)
	}
	f.start("")
	var issued []acked
	for range 5 {
		resp, err := f.issueRole(context.Background(), role, 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		l := resp.GetLease()
		issued = append(issued, acked{l.GetId(), l.GetUsername(), l.GetExpireTime().AsTime()})
	}
	srv.pause(t)
	pausedAt := time.Now()
	time.Sleep(time.Until(issued[len(issued)-1].expire) + 1500*time.Millisecond)

	// Nothing is forgotten: every lease is visible as REVOKING, with why.
	admin := pb.NewAdminServiceClient(f.conn("admin"))
	resp, err := admin.ListLeases(context.Background(), &pb.AdminListLeasesRequest{Role: role})
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.GetLeases()) != len(issued) {
		t.Fatalf("%d leases visible during the outage, want %d", len(resp.GetLeases()), len(issued))
	}
	for _, l := range resp.GetLeases() {
		if l.GetState() != pb.Lease_REVOKING || l.GetLastError() == "" {
			t.Fatalf("lease during outage: state %s, last_error %q; want REVOKING with an error", l.GetState(), l.GetLastError())
		}
	}
	// Issuance fails UNAVAILABLE and leaves no record.
	_, err = f.issueRole(context.Background(), role, time.Minute)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("issue during outage: %v, want UNAVAILABLE", err)
	}
	resp, _ = admin.ListLeases(context.Background(), &pb.AdminListLeasesRequest{Role: role})
	if len(resp.GetLeases()) != len(issued) {
		t.Fatalf("issuance during the outage left a record: %d leases", len(resp.GetLeases()))
	}
	time.Sleep(time.Until(pausedAt.Add(outage)))
	srv.resume(t)
	back := time.Now()
	if engine == "postgres" {
		// The fixture's admin connection died with the server.
		conn, err := pgx.Connect(context.Background(), dsn)
		if err != nil {
			t.Fatal(err)
		}
		f.admin.Close(context.Background())
		f.admin = conn
	}
	// backoff_max in the fixture's config is 2s: one period, plus a drop.
	cleanup := f.waitNoUsers(4 * time.Second)
	// A record leaves the store just after its user is confirmed gone.
	for {
		resp, _ = admin.ListLeases(context.Background(), &pb.AdminListLeasesRequest{})
		if len(resp.GetLeases()) == 0 {
			break
		}
		if time.Since(back) > 4*time.Second {
			t.Fatalf("leases left 4s after the server came back: %v", resp.GetLeases())
		}
		time.Sleep(20 * time.Millisecond)
	}
	cleanup = max(cleanup, time.Since(back))
	t.Logf("%s down %s; every user dropped %s after it came back", engine, outage, time.Since(back).Round(time.Millisecond))
	recordFault(faultRow{scenario: fmt.Sprintf("%s down %s during expiry", engine, outage), iterations: 1, maxCleanup: cleanup})
	f.stop()
}

// TestFaultCorruptStore: a corrupt store makes the binary refuse to start
// with a clear message, and a missing one is never taken for "no leases".
func TestFaultCorruptStore(t *testing.T) {
	f := newFixture(t)
	cfg := f.configPath()
	store := filepath.Join(f.dir, "leases.db")
	if err := os.WriteFile(store, []byte(strings.Repeat("garbage", 4096)), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(binary, "serve", "--config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "corrupt") {
		t.Fatalf("serve on a corrupt store: err %v, output %q; want a refusal naming the corruption", err, out)
	}
	if err := os.Remove(store); err != nil {
		t.Fatal(err)
	}
	out, err = exec.Command(binary, "serve", "--config", cfg).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "init-store") {
		t.Fatalf("serve on a missing store: err %v, output %q; want a refusal pointing to init-store", err, out)
	}
	recordFault(faultRow{scenario: "corrupt / missing lease store", iterations: 2})
}

// ownServer is a throwaway database server of a test's own, which the
// test may pause and resume (scripts/pg-throwaway.sh or
// mariadb-throwaway.sh); it is removed when the test ends.
type ownServer struct {
	script, dir string
	dsn         string // holds a password: never log it
}

func startOwnServer(t *testing.T, engine string) ownServer {
	t.Helper()
	// Under the checkout: the servers run as users postgres/mysql, which
	// cannot enter the test's private temp dir.
	script := filepath.Join(repoRoot(t), "scripts", "pg-throwaway.sh")
	dsnVar := "CREDBROKER_TEST_PG_DSN"
	if engine == "mariadb" {
		script = filepath.Join(repoRoot(t), "scripts", "mariadb-throwaway.sh")
		dsnVar = "CREDBROKER_TEST_MYSQL_DSN"
	}
	dir := filepath.Join(repoRoot(t), ".cache", fmt.Sprintf("%s-outage-%d-%s", engine, os.Getpid(), randomSuffix(t)))
	out, err := exec.Command(script, "start", dir).Output()
	if err != nil {
		t.Fatalf("start a server of our own: %v", err)
	}
	t.Cleanup(func() { _ = exec.Command(script, "stop", dir).Run() })
	srv := ownServer{script: script, dir: dir}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "export "+dsnVar+"="); ok {
			srv.dsn = strings.Trim(v, "'")
		}
	}
	return srv
}

// pause stops the server, keeping its data; resume starts it again.
func (s ownServer) pause(t *testing.T) {
	t.Helper()
	if err := exec.Command(s.script, "pause", s.dir).Run(); err != nil {
		t.Fatalf("pause: %v", err)
	}
}

func (s ownServer) resume(t *testing.T) {
	t.Helper()
	if err := exec.Command(s.script, "resume", s.dir).Run(); err != nil {
		t.Fatalf("resume: %v", err)
	}
}

func repoRoot(t *testing.T) string {
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Join(wd, "..", "..")
}

func (f *fixture) issueRole(ctx context.Context, role string, ttl time.Duration) (*pb.IssueCredentialResponse, error) {
	return pb.NewCredentialServiceClient(f.conn("client")).IssueCredential(ctx,
		&pb.IssueCredentialRequest{Role: role, Ttl: durationpb.New(ttl)})
}

// allLeases lists every lease of the store (through this broker, for a
// replica), by ID.
func (f *fixture) allLeases() map[string]*pb.Lease {
	f.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := pb.NewAdminServiceClient(f.conn("admin")).ListLeases(ctx, &pb.AdminListLeasesRequest{PageSize: 1000})
	if err != nil {
		f.t.Fatalf("list leases%s: %v", f.suffix(), err)
	}
	out := map[string]*pb.Lease{}
	for _, l := range resp.GetLeases() {
		out[l.GetId()] = l
	}
	return out
}

func (f *fixture) userSet() map[string]bool {
	out := map[string]bool{}
	for _, u := range f.users() {
		out[u] = true
	}
	return out
}

func (f *fixture) unbackedUsers() []string {
	active := f.activeLeaseUsers()
	var out []string
	for _, u := range f.users() {
		if !active[u] {
			out = append(out, u)
		}
	}
	return out
}

// crashUnderLoad runs a workload that issues short leases and revokes some
// until the broker dies at its failpoint (or is killed: "random", or when the
// window ends without reaching the point). Acknowledged leases go into live.
func crashUnderLoad(t *testing.T, f *fixture, point string, live map[string]acked, mu *sync.Mutex) {
	ctx, stop := context.WithTimeout(context.Background(), 10*time.Second)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for ctx.Err() == nil {
				role := "reader"
				if w >= 2 {
					role = "shop" // MariaDB
				}
				resp, err := f.issueRole(ctx, role, time.Duration(1+rand.IntN(3))*time.Second)
				if err != nil {
					if status.Code(err) == codes.Unavailable || ctx.Err() != nil {
						return
					}
					t.Errorf("issue: %v", err)
					return
				}
				l := resp.GetLease()
				mu.Lock()
				live[l.GetId()] = acked{l.GetId(), l.GetUsername(), l.GetExpireTime().AsTime()}
				issuedPerRole[role]++
				mu.Unlock()
				if w%2 == 0 {
					// Once a revoke is asked for, the lease may end
					// whether or not the answer arrives.
					mu.Lock()
					delete(live, l.GetId())
					mu.Unlock()
					_, _ = pb.NewCredentialServiceClient(f.conn("client")).RevokeLease(ctx, &pb.RevokeLeaseRequest{LeaseId: l.GetId()})
				}
			}
		})
	}
	if point == "random" {
		time.Sleep(time.Duration(100+rand.IntN(1400)) * time.Millisecond)
		f.kill()
	} else {
		select {
		case <-f.exited:
			f.cmd = nil
			f.logf.Close()
			t.Logf("%s: the broker killed itself at the failpoint", point)
		case <-time.After(8 * time.Second):
			t.Logf("%s: not reached in 8s; killed", point)
			// Not every run reaches a revoke point before the window
			// ends; kill it then, which is also a crash.
			f.kill()
		}
	}
	stop()
	wg.Wait()
}
