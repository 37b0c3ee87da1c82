package main_test

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/credbroker/credbroker/identity"
	"github.com/credbroker/credbroker/internal/brokertest"
	"github.com/credbroker/credbroker/internal/testenv"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// binary is the broker built with failpoints compiled in (test builds only).
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "credbroker-crash")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "credbroker")
	build := exec.Command("go", "build", "-tags", "failpoints", "-o", binary, ".")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build broker with failpoints:", err)
		os.Exit(1)
	}
	code := m.Run()
	printFaultTable()
	os.RemoveAll(dir)
	os.Exit(code)
}

var td = brokertest.TrustDomain

// proc is one broker subprocess sharing a config, certs and lease store
// with the runs before and after it.
type fixture struct {
	t      *testing.T
	dir    string
	addr   string
	prefix string
	admin  *pgx.Conn
	my     *sql.DB // the MariaDB of newFixtureBoth, else nil
	cmd    *exec.Cmd
	exited chan error
	logf   *os.File
	// name tells a replica of a cluster apart (its config and log files);
	// empty for a lone broker.
	name string
	// body is the config without its listen: and lease_store: lines,
	// which differ between the replicas of a cluster.
	body string
}

func newFixture(t *testing.T) *fixture {
	return newFixtureDSN(t, testenv.PostgresDSN(t))
}

// newFixtureBoth is newFixture plus a MariaDB database and its role "shop",
// so one broker's leases live on both engines.
func newFixtureBoth(t *testing.T) *fixture {
	t.Helper()
	return newFixtureBothDSN(t, testenv.PostgresDSN(t), testenv.MySQLDSN(t))
}

// newFixtureBothDSN is newFixtureBoth on the given servers.
func newFixtureBothDSN(t *testing.T, pgDSN, myDSN string) *fixture {
	t.Helper()
	my := brokertest.OpenMySQL(t, myDSN)
	t.Setenv("CRASH_TEST_MYSQL_PASSWORD", my.Config.Passwd)
	extra := fmt.Sprintf(`
  shop:
    plugin: mysql
    host: %s
    port: %s
    database: mysql
    username: %s
    password_env: CRASH_TEST_MYSQL_PASSWORD
    sslmode: disable
    username_prefix: PREFIX
    user_host: 127.0.0.1
`, my.Host, my.Port, my.Config.User)
	role := `
  shop:
    database: shop
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
`
	f := newFixtureExtra(t, pgDSN, extra, role)
	f.my = my.DB
	return f
}

// newFixtureDSN builds a fixture on the cluster at dsn (outage tests use a
// cluster of their own, since they stop it).
func newFixtureDSN(t *testing.T, dsn string) *fixture {
	return newFixtureExtra(t, dsn, "", "")
}

// newFixtureExtra adds databases and roles (YAML under databases: and
// roles:; PREFIX is replaced by the fixture's username prefix).
func newFixtureExtra(t *testing.T, dsn, extraDatabases, extraRoles string) *fixture {
	return newFixtureStore(t, dsn, extraDatabases, extraRoles, "")
}

// newFixtureStore is newFixtureExtra with the lease_store: section given
// (empty: a bbolt file in the fixture's directory).
func newFixtureStore(t *testing.T, dsn, extraDatabases, extraRoles, leaseStore string) *fixture {
	ctx := context.Background()
	pgc, err := pgx.ParseConfig(dsn)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.ConnectConfig(ctx, pgc)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{t: t, dir: t.TempDir(), admin: admin, prefix: "k" + brokertest.RandHex(t, 3)}
	// f.admin, not admin: an outage test reconnects and replaces it.
	t.Cleanup(func() { f.admin.Close(context.Background()) })

	ca := brokertest.NewCA(t)
	brokertest.WriteSVID(t, ca, f.dir, "server", brokertest.ServerID,
		identity.SVIDOptions{DNSNames: []string{"localhost"}, IPs: []net.IP{net.IPv4(127, 0, 0, 1)}})
	brokertest.WriteSVID(t, ca, f.dir, "client", brokertest.OrdersID, identity.SVIDOptions{})
	brokertest.WriteSVID(t, ca, f.dir, "admin", brokertest.AdminID, identity.SVIDOptions{})
	f.addr = brokertest.FreeAddr(t)
	if leaseStore == "" {
		leaseStore = fmt.Sprintf("lease_store: {path: %s/leases.db}", f.dir)
	}
	cfg := fmt.Sprintf(`
trust_domain: example.org
svid: {cert_file: %[1]s/server.pem, key_file: %[1]s/server-key.pem, bundle_file: %[1]s/bundle.pem}
admins: [spiffe://example.org/ops/admin]
revocation: {backoff_base: 200ms, backoff_max: 2s, timeout: 3s}
databases:
  main:
    plugin: postgres
    host: %[2]s
    port: %[3]d
    database: %[4]s
    username: %[5]s
    password_env: CRASH_TEST_PG_PASSWORD
    sslmode: disable
    username_prefix: %[6]s
roles:
  reader:
    database: main
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};
`, f.dir, pgc.Host, pgc.Port, pgc.Database, pgc.User, f.prefix)
	f.body = strings.Replace(cfg, "roles:\n", strings.ReplaceAll(extraDatabases, "PREFIX", f.prefix)+"roles:\n", 1) + extraRoles
	f.writeConfig(leaseStore)
	t.Setenv("CRASH_TEST_PG_PASSWORD", pgc.Password)
	if out, err := exec.Command(binary, "init-store", "--config", f.configPath()).CombinedOutput(); err != nil {
		t.Fatalf("init-store: %v\n%s", err, out)
	}
	t.Cleanup(func() {
		f.stop()
		f.dropLeftovers()
	})
	return f
}

// writeConfig writes the broker's config file: f.body with f.addr to
// listen on and leaseStore (a lease_store: section).
func (f *fixture) writeConfig(leaseStore string) {
	f.t.Helper()
	cfg := fmt.Sprintf("listen: %s\n%s\n%s", f.addr, leaseStore, f.body)
	if err := os.WriteFile(f.configPath(), []byte(cfg), 0o600); err != nil {
		f.t.Fatal(err)
	}
}

// configPath and logPath are the broker's files; a replica's carry its
// name.
func (f *fixture) configPath() string { return filepath.Join(f.dir, "config"+f.suffix()+".yaml") }
func (f *fixture) logPath() string    { return filepath.Join(f.dir, "broker"+f.suffix()+".log") }

func (f *fixture) suffix() string {
	if f.name == "" {
		return ""
	}
	return "-" + f.name
}

// start runs the broker; failpoint names the point at which it kills itself.
func (f *fixture) start(failpoint string) {
	f.t.Helper()
	f.launch(failpoint)
	if err := f.waitHealthy(); err != nil {
		f.t.Fatalf("broker exited during start: %v\n%s", err, f.logTail())
	}
}

// startMayCrash is start for a broker that may hit its failpoint while
// restoring leases (a revocation on startup): it reports whether the broker
// is up, and a death by SIGKILL during start is not an error.
func (f *fixture) startMayCrash(failpoint string) bool {
	f.t.Helper()
	f.launch(failpoint)
	err := f.waitHealthy()
	if err == nil {
		return true
	}
	if ee, ok := err.(*exec.ExitError); ok && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL {
		return false
	}
	f.t.Fatalf("broker exited during start: %v\n%s", err, f.logTail())
	return false
}

// launch starts the broker process without waiting for it.
func (f *fixture) launch(failpoint string) {
	f.t.Helper()
	logf, err := os.OpenFile(f.logPath(), os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		f.t.Fatal(err)
	}
	f.logf = logf
	f.cmd = exec.Command(binary, "serve", "--config", f.configPath())
	f.cmd.Env = append(os.Environ(), "CREDBROKER_FAILPOINT="+failpoint)
	f.cmd.Stdout, f.cmd.Stderr = logf, logf
	if err := f.cmd.Start(); err != nil {
		f.t.Fatal(err)
	}
	f.exited = make(chan error, 1)
	go func(c *exec.Cmd, ch chan error) { ch <- c.Wait() }(f.cmd, f.exited)
}

// waitHealthy waits until the broker answers; it returns the exit error if
// the broker ended instead (f.cmd is then nil).
func (f *fixture) waitHealthy() error {
	f.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-f.exited:
			f.cmd = nil
			f.logf.Close()
			if err == nil {
				err = fmt.Errorf("exit status 0")
			}
			return err
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_, err := healthpb.NewHealthClient(f.conn("client")).Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	f.t.Fatalf("broker not healthy\n%s", f.logTail())
	return nil
}

func (f *fixture) logTail() string {
	b, _ := os.ReadFile(f.logPath())
	s := string(b)
	if len(s) > 4000 {
		s = s[len(s)-4000:]
	}
	return s
}

// kill sends SIGKILL: the crash.
func (f *fixture) kill() {
	if f.cmd == nil {
		return
	}
	_ = f.cmd.Process.Signal(syscall.SIGKILL)
	<-f.exited
	f.cmd = nil
	f.logf.Close()
}

// waitKilled waits for the broker to kill itself at a failpoint.
func (f *fixture) waitKilled() {
	f.t.Helper()
	select {
	case err := <-f.exited:
		if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
			f.t.Fatalf("broker ended with %v, want killed by SIGKILL at the failpoint", err)
		}
	case <-time.After(10 * time.Second):
		f.t.Fatal("broker did not hit the failpoint")
	}
	f.cmd = nil
	f.logf.Close()
}

func (f *fixture) stop() {
	if f.cmd == nil {
		return
	}
	_ = f.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-f.exited:
	case <-time.After(15 * time.Second):
		f.kill()
	}
	f.cmd = nil
	f.logf.Close()
}

func (f *fixture) conn(name string) *grpc.ClientConn {
	f.t.Helper()
	svid, err := x509svid.Load(filepath.Join(f.dir, name+".pem"), filepath.Join(f.dir, name+"-key.pem"))
	if err != nil {
		f.t.Fatal(err)
	}
	bundle, err := x509bundle.Load(td, filepath.Join(f.dir, "bundle.pem"))
	if err != nil {
		f.t.Fatal(err)
	}
	cfg := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(brokertest.ServerID))
	cc, err := grpc.NewClient(f.addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		f.t.Fatal(err)
	}
	f.t.Cleanup(func() { cc.Close() })
	return cc
}

// users lists the broker's users on PostgreSQL and, if the fixture has
// one, MariaDB.
func (f *fixture) users() []string {
	f.t.Helper()
	return append(brokertest.PostgresUsers(f.t, f.admin, f.prefix), f.mysqlUsers()...)
}

func (f *fixture) mysqlUsers() []string {
	if f.my == nil {
		return nil
	}
	return brokertest.MySQLUsers(f.t, f.my, f.prefix)
}

func (f *fixture) activeLeaseUsers() map[string]bool {
	f.t.Helper()
	out := map[string]bool{}
	for _, l := range f.allLeases() {
		if l.GetState() == pb.Lease_ACTIVE {
			out[l.GetUsername()] = true
		}
	}
	return out
}

// assertEveryUserBacked is invariant 1: every broker-made user has a lease.
func (f *fixture) assertEveryUserBacked() {
	f.t.Helper()
	active := f.activeLeaseUsers()
	for _, u := range f.users() {
		if !active[u] {
			f.t.Fatalf("user %s exists with no active lease", u)
		}
	}
}

func (f *fixture) waitNoUsers(within time.Duration) time.Duration {
	f.t.Helper()
	start := time.Now()
	for len(f.users()) > 0 {
		if time.Since(start) > within {
			f.t.Fatalf("users %v still exist after %s\n%s", f.users(), within, f.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	return time.Since(start)
}

func (f *fixture) dropLeftovers() {
	for _, u := range f.mysqlUsers() {
		_, _ = f.my.Exec("DROP USER IF EXISTS '" + u + "'@'127.0.0.1'")
	}
	for _, u := range f.users() {
		_, _ = f.admin.Exec(context.Background(), "DROP ROLE "+pgx.Identifier{u}.Sanitize())
	}
}

func (f *fixture) issue(ttl time.Duration) (*pb.IssueCredentialResponse, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return f.issueRole(ctx, "reader", ttl)
}

func TestCrashDuringIssue(t *testing.T) {
	for _, tc := range []struct {
		failpoint  string
		userExists bool // at the moment of the crash
	}{
		{"issue-after-intent", false},
		{"issue-after-create-user", true},
	} {
		t.Run(tc.failpoint, func(t *testing.T) {
			f := newFixture(t)
			f.start(tc.failpoint)
			if _, err := f.issue(time.Minute); err == nil {
				t.Fatal("issue succeeded although the broker crashed")
			}
			f.waitKilled()
			if got := len(f.users()) == 1; got != tc.userExists {
				t.Fatalf("users at crash: %v, want a user: %v", f.users(), tc.userExists)
			}
			f.start("")
			// Restart dropped whatever the interrupted issuance created.
			f.waitNoUsers(5 * time.Second)
			f.assertEveryUserBacked()

			// The restarted broker still works and still revokes on time.
			resp, err := f.issue(2 * time.Second)
			if err != nil {
				t.Fatalf("issue after restart: %v", err)
			}
			f.assertEveryUserBacked()
			time.Sleep(time.Until(resp.GetLease().GetExpireTime().AsTime()))
			t.Logf("user gone %s after expiry", f.waitNoUsers(5*time.Second).Round(time.Millisecond))
		})
	}
}

func TestCrashAfterActivateKeepsLease(t *testing.T) {
	f := newFixture(t)
	f.start("issue-after-activate")
	if _, err := f.issue(time.Minute); err == nil {
		t.Fatal("issue succeeded although the broker crashed before answering")
	}
	f.waitKilled()
	f.start("")
	// The lease was durably ACTIVE: it survives and backs its user.
	if len(f.users()) != 1 {
		t.Fatalf("users %v, want the one backed by the active lease", f.users())
	}
	f.assertEveryUserBacked()
	resp, err := pb.NewAdminServiceClient(f.conn("admin")).RevokeLeases(context.Background(), &pb.RevokeLeasesRequest{Role: "reader"})
	if err != nil || resp.GetRevoked() != 1 {
		t.Fatalf("revoke: %v %v", resp, err)
	}
	f.waitNoUsers(time.Second)
}

func TestLeasesSurviveKillAndExpireOnTime(t *testing.T) {
	f := newFixture(t)
	f.start("")
	shortResp, err := f.issue(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	longResp, err := f.issue(6 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	f.kill()
	// The short lease expires while the broker is down.
	time.Sleep(time.Until(shortResp.GetLease().GetExpireTime().AsTime()) + 500*time.Millisecond)
	f.start("")
	start := time.Now()
	for {
		users := strings.Join(f.users(), ",")
		if !strings.Contains(users, shortResp.GetLease().GetUsername()) {
			break
		}
		if time.Since(start) > 5*time.Second {
			t.Fatalf("expired-while-down user still exists after restart\n%s", f.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("expired-while-down user gone %s after restart", time.Since(start).Round(time.Millisecond))
	// The live lease survived the crash and is revoked at its expiry.
	if got := f.users(); len(got) != 1 || got[0] != longResp.GetLease().GetUsername() {
		t.Fatalf("users %v, want only the live lease's", got)
	}
	f.assertEveryUserBacked()
	time.Sleep(time.Until(longResp.GetLease().GetExpireTime().AsTime()))
	t.Logf("live lease's user gone %s after expiry", f.waitNoUsers(5*time.Second).Round(time.Millisecond))
}
