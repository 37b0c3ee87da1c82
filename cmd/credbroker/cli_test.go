package main_test

import (
	"bytes"
	"context"
	"encoding/pem"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	"github.com/credbroker/credbroker/internal/testenv"
	pb "github.com/credbroker/credbroker/proto/credbroker/v1"
)

// cliResult is one run of the credbroker binary.
type cliResult struct {
	stdout, stderr string
	code           int
}

// cli runs an operator command of the binary against f's broker as the
// SVID named svid ("admin" or "client"), read from files.
func (f *fixture) cli(svid string, args ...string) cliResult {
	f.t.Helper()
	args = append(args, "-addr", f.addr,
		"-cert", filepath.Join(f.dir, svid+".pem"),
		"-key", filepath.Join(f.dir, svid+"-key.pem"),
		"-bundle", filepath.Join(f.dir, "bundle.pem"))
	return runCLI(f.t, nil, args...)
}

// runCLI runs the binary with args and env added to the test's environment.
func runCLI(t *testing.T, env []string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Env = append(os.Environ(), env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	r := cliResult{stdout: stdout.String(), stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	case err != nil:
		t.Fatalf("run %v: %v", args, err)
	}
	return r
}

// ok fails unless the command exited 0, and returns its stdout.
func (r cliResult) ok(t *testing.T) string {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	return r.stdout
}

// fails checks the exit status and that stderr says want.
func (r cliResult) fails(t *testing.T, code int, want string) {
	t.Helper()
	if r.code != code || !strings.Contains(r.stderr, want) {
		t.Fatalf("exit %d (want %d), stderr should say %q\nstdout:\n%s\nstderr:\n%s", r.code, code, want, r.stdout, r.stderr)
	}
}

// tableRows splits aligned table output into its rows of cells and checks
// the alignment: every cell starts at its header's column.
func tableRows(t *testing.T, out string) (header []string, rows [][]string) {
	t.Helper()
	lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
	head := lines[0]
	var starts []int
	for i := 0; i < len(head); i++ {
		if head[i] != ' ' && (i == 0 || head[i-1] == ' ' && (i < 2 || head[i-2] == ' ')) {
			starts = append(starts, i)
		}
	}
	cut := func(line string) []string {
		var cells []string
		for j, s := range starts {
			if s > 0 && (len(line) <= s || line[s-1] != ' ') {
				t.Fatalf("row %q is not aligned with header %q", line, head)
			}
			end := len(line)
			if j+1 < len(starts) && starts[j+1] < end {
				end = starts[j+1]
			}
			if s >= len(line) {
				cells = append(cells, "")
				continue
			}
			cells = append(cells, strings.TrimSpace(line[s:end]))
		}
		return cells
	}
	header = cut(head)
	for _, l := range lines[1:] {
		rows = append(rows, cut(l))
	}
	return header, rows
}

func column(t *testing.T, header []string, name string) int {
	t.Helper()
	i := slices.Index(header, name)
	if i < 0 {
		t.Fatalf("no column %q in %q", name, header)
	}
	return i
}

func decode[M proto.Message](t *testing.T, out string, m M) M {
	t.Helper()
	if err := protojson.Unmarshal([]byte(out), m); err != nil {
		t.Fatalf("stdout is not one %T document: %v\n%s", m, err, out)
	}
	return m
}

func (f *fixture) issueN(t *testing.T, n int) (ids []string, passwords []string) {
	t.Helper()
	for range n {
		resp, err := f.issue(time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, resp.GetLease().GetId())
		passwords = append(passwords, resp.GetCredential().GetPassword())
	}
	slices.Sort(ids)
	return ids, passwords
}

func TestCLILeasesList(t *testing.T) {
	f := newFixture(t)
	f.start("")
	ids, passwords := f.issueN(t, 3)

	out := f.cli("admin", "leases", "list").ok(t)
	header, rows := tableRows(t, out)
	idCol, roleCol, ownerCol, stateCol := column(t, header, "LEASE ID"), column(t, header, "ROLE"), column(t, header, "SPIFFE ID"), column(t, header, "STATE")
	column(t, header, "EXPIRES")
	var got []string
	for _, r := range rows {
		got = append(got, r[idCol])
		if r[roleCol] != "reader" || r[ownerCol] != "spiffe://example.org/orders/api" || r[stateCol] != "ACTIVE" {
			t.Errorf("row %q: want role reader, owner orders/api, ACTIVE", r)
		}
	}
	if !slices.Equal(got, ids) {
		t.Fatalf("table lists %v, want %v\n%s", got, ids, out)
	}
	for _, p := range passwords {
		if strings.Contains(out, p) {
			t.Fatal("a password appears in the output")
		}
	}

	for _, tc := range []struct {
		name string
		args []string
		want []string
	}{
		{"all", nil, ids},
		{"pages of two", []string{"-page-size", "2"}, ids},
		{"pages of one", []string{"-page-size", "1"}, ids},
		{"role", []string{"-role", "reader"}, ids},
		{"other role", []string{"-role", "nope"}, nil},
		{"owner", []string{"-spiffe-id", "spiffe://example.org/orders/api"}, ids},
		{"other owner", []string{"-spiffe-id", "spiffe://example.org/ops/admin"}, nil},
		{"state active", []string{"-state", "active"}, ids},
		{"state CREATING", []string{"-state", "CREATING"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := f.cli("admin", append([]string{"leases", "list", "-o", "json"}, tc.args...)...).ok(t)
			resp := decode(t, out, &pb.AdminListLeasesResponse{})
			var got []string
			for _, l := range resp.GetLeases() {
				got = append(got, l.GetId())
			}
			if !slices.Equal(got, tc.want) || resp.GetNextPageToken() != "" {
				t.Fatalf("json lists %v (next %q), want %v\n%s", got, resp.GetNextPageToken(), tc.want, out)
			}
		})
	}

	// An empty table is its header alone.
	_, rows = tableRows(t, f.cli("admin", "leases", "list", "-state", "revoking").ok(t))
	if len(rows) != 0 {
		t.Fatalf("revoking leases: %q, want none", rows)
	}
	f.cli("admin", "leases", "list", "-state", "gone").fails(t, 2, "-state must be")
	f.cli("admin", "leases", "list", "-state", "revoked").fails(t, 2, "ended leases are not kept")
	f.cli("admin", "leases", "list", "-spiffe-id", "orders").fails(t, 2, "-spiffe-id")
	f.cli("admin", "leases", "list", "-page-size", "0").fails(t, 2, "-page-size")
}

func TestCLILeasesRevoke(t *testing.T) {
	f := newFixture(t)
	f.start("")
	ids, _ := f.issueN(t, 4)
	usernames := func() []string { return f.users() }
	if n := len(usernames()); n != 4 {
		t.Fatalf("%d users, want 4", n)
	}

	// Bad input changes nothing.
	f.cli("admin", "leases", "revoke").fails(t, 2, "give -lease-id")
	f.cli("admin", "leases", "revoke", "-lease-id", "xyz").fails(t, 2, "is not a lease ID")
	f.cli("admin", "leases", "revoke", "-lease-id", ids[0], "-role", "reader").fails(t, 2, "-lease-id goes alone")
	f.cli("admin", "leases", "revoke", "-spiffe-id", "not-an-id").fails(t, 2, "-spiffe-id")
	f.cli("admin", "leases", "revoke", "-prefix", "XYZ").fails(t, 1, "INVALID_ARGUMENT: lease_id_prefix must be lowercase hex")
	f.cli("admin", "leases", "revoke", "-role", "reader", "-o", "yaml").fails(t, 2, "-o must be table or json")
	if n := len(usernames()); n != 4 {
		t.Fatalf("%d users after refused revokes, want 4", n)
	}

	if out := f.cli("admin", "leases", "revoke", "-lease-id", ids[0]).ok(t); out != "revoked 1 lease\n" {
		t.Fatalf("revoke one: %q", out)
	}
	if n := len(usernames()); n != 3 {
		t.Fatalf("%d users after revoking one lease, want 3", n)
	}
	// The user is dropped before the command returns; again, it is gone.
	r := f.cli("admin", "leases", "revoke", "-lease-id", ids[0])
	r.fails(t, 1, "NOT_FOUND: no live lease "+ids[0])
	if r.stdout != "revoked 0 leases\n" {
		t.Fatalf("second revoke printed %q", r.stdout)
	}

	out := f.cli("admin", "leases", "revoke", "-prefix", ids[1][:10], "-o", "json").ok(t)
	if resp := decode(t, out, &pb.RevokeLeasesResponse{}); resp.GetRevoked() != 1 || !strings.Contains(out, `"revoked": 1`) {
		t.Fatalf("revoke by prefix: %s", out)
	}
	// Selectors combine: nothing is owned by the admin.
	if out := f.cli("admin", "leases", "revoke", "-role", "reader", "-spiffe-id", "spiffe://example.org/ops/admin").ok(t); out != "revoked 0 leases\n" {
		t.Fatalf("revoke role and other owner: %q", out)
	}
	if out := f.cli("admin", "leases", "revoke", "-role", "reader", "-spiffe-id", "spiffe://example.org/orders/api").ok(t); out != "revoked 2 leases\n" {
		t.Fatalf("revoke role and owner: %q", out)
	}
	f.waitNoUsers(time.Second)

	out = f.cli("admin", "leases", "list", "-state", "active", "-o", "json").ok(t)
	if n := len(decode(t, out, &pb.AdminListLeasesResponse{}).GetLeases()); n != 0 {
		t.Fatalf("%d active leases after revoking all", n)
	}
}

func TestCLIWorkload(t *testing.T) {
	f := newFixture(t)
	f.start("")
	ids, _ := f.issueN(t, 2)
	const app = "spiffe://example.org/orders/api"

	out := f.cli("admin", "workload", "deregister", app).ok(t)
	first, table, _ := strings.Cut(out, "\n\n")
	if first != "deregistered "+app+": 2 leases revoked" {
		t.Fatalf("deregister printed %q", out)
	}
	header, rows := tableRows(t, table)
	var got []string
	for _, r := range rows {
		got = append(got, r[column(t, header, "LEASE ID")])
	}
	slices.Sort(got)
	if !slices.Equal(got, ids) {
		t.Fatalf("deregister listed %v, want %v", got, ids)
	}
	f.waitNoUsers(time.Second)
	if _, err := f.issue(time.Minute); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("issue after deregister: %v, want PermissionDenied", err)
	}
	// Flags may follow the ID; json is the response.
	out = f.cli("admin", "workload", "deregister", app, "-o", "json").ok(t)
	if resp := decode(t, out, &pb.DeregisterWorkloadResponse{}); resp.GetRevoked() != 0 {
		t.Fatalf("second deregister: %s", out)
	}

	out = f.cli("admin", "workload", "register", "-o", "json", app).ok(t)
	if !decode(t, out, &pb.RegisterWorkloadResponse{}).GetWasDeregistered() {
		t.Fatalf("register: %s", out)
	}
	resp, err := f.issue(time.Minute)
	if err != nil {
		t.Fatalf("issue after register: %v", err)
	}
	if out := f.cli("admin", "workload", "register", app).ok(t); out != "registered "+app+": it was not deregistered\n" {
		t.Fatalf("register again: %q", out)
	}

	f.cli("admin", "workload", "deregister").fails(t, 2, "want one SPIFFE ID")
	f.cli("admin", "workload", "deregister", "orders/api").fails(t, 2, "workload deregister")
	f.cli("admin", "workload", "forget", app).fails(t, 2, "unknown command")
	if got := f.users(); len(got) != 1 || got[0] != resp.GetLease().GetUsername() {
		t.Fatalf("users %v after refused commands, want the one lease's", got)
	}
}

func TestCLIOrphansAndRoles(t *testing.T) {
	f := newFixture(t)
	f.start("")
	// A user with this broker's marker and no lease: an orphan.
	orphan := f.prefix + "_reader_aaaaaaaaaaaaaaaaaaaaaaaaaa"
	ctx := context.Background()
	for _, q := range []string{
		"CREATE ROLE " + pgx.Identifier{orphan}.Sanitize(),
		"COMMENT ON ROLE " + pgx.Identifier{orphan}.Sanitize() + " IS 'credbroker:default'",
	} {
		if _, err := f.admin.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}

	header, rows := tableRows(t, f.cli("admin", "orphans").ok(t))
	if len(rows) != 1 || rows[0][column(t, header, "DATABASE")] != "main" || rows[0][column(t, header, "USERNAME")] != orphan || rows[0][column(t, header, "ERROR")] != "-" {
		t.Fatalf("orphans table %q %q, want main %s", header, rows, orphan)
	}
	out := f.cli("admin", "orphans", "-o", "json").ok(t)
	dbs := decode(t, out, &pb.ListOrphansResponse{}).GetDatabases()
	if len(dbs) != 1 || dbs[0].GetDatabase() != "main" || !slices.Equal(dbs[0].GetUsernames(), []string{orphan}) {
		t.Fatalf("orphans json: %s", out)
	}
	if got := f.users(); !slices.Contains(got, orphan) {
		t.Fatal("the dry run dropped the orphan")
	}

	header, rows = tableRows(t, f.cli("admin", "roles").ok(t))
	want := []string{"reader", "main", "1m0s", "10m0s", "spiffe://example.org/orders/*"}
	if len(rows) != 1 || !slices.Equal(rows[0], want) || !slices.Equal(header, []string{"NAME", "DATABASE", "DEFAULT TTL", "MAX TTL", "ALLOWED SPIFFE IDS"}) {
		t.Fatalf("roles table %q %q, want %q", header, rows, want)
	}
	out = f.cli("admin", "roles", "-o", "json").ok(t)
	roles := decode(t, out, &pb.ListRolesResponse{}).GetRoles()
	if len(roles) != 1 || roles[0].GetName() != "reader" || roles[0].GetMaxTtl().AsDuration() != 10*time.Minute {
		t.Fatalf("roles json: %s", out)
	}
	if strings.Contains(out, os.Getenv("CRASH_TEST_PG_PASSWORD")) {
		t.Fatal("the admin password appears in the roles output")
	}
}

// A workload's SVID is not an admin's: every command is refused with
// PERMISSION_DENIED, exits 1, prints nothing on stdout and changes nothing.
func TestCLINotAdmin(t *testing.T) {
	f := newFixture(t)
	f.start("")
	ids, _ := f.issueN(t, 1)
	for _, args := range [][]string{
		{"leases", "list"},
		{"leases", "revoke", "-role", "reader"},
		{"leases", "revoke", "-lease-id", ids[0]},
		{"workload", "deregister", "spiffe://example.org/orders/api"},
		{"workload", "register", "spiffe://example.org/orders/api"},
		{"orphans"},
		{"roles", "-o", "json"},
	} {
		t.Run(strings.Join(args, " "), func(t *testing.T) {
			r := f.cli("client", args...)
			r.fails(t, 1, "PERMISSION_DENIED: caller is not an admin")
			if r.stdout != "" {
				t.Fatalf("stdout %q, want nothing", r.stdout)
			}
		})
	}
	if len(f.users()) != 1 {
		t.Fatalf("users %v after refused calls, want the lease's", f.users())
	}
	if _, err := f.issue(time.Minute); err != nil {
		t.Fatalf("the workload was deregistered by a refused call: %v", err)
	}
}

func TestCLIConnection(t *testing.T) {
	f := newFixture(t)
	f.start("")
	admin := func(extra ...string) []string {
		return append([]string{"roles", "-addr", f.addr, "-cert", filepath.Join(f.dir, "admin.pem"),
			"-key", filepath.Join(f.dir, "admin-key.pem"), "-bundle", filepath.Join(f.dir, "bundle.pem")}, extra...)
	}
	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"right server id", admin("-server-id", "spiffe://example.org/credbroker"), 0, ""},
		{"other server id", admin("-server-id", "spiffe://example.org/not-the-broker"), 1, "UNAVAILABLE"},
		{"bad server id", admin("-server-id", "example.org/credbroker"), 2, "-server-id"},
		{"nothing listening", append(admin(), "-addr", closedAddr(t)), 1, "UNAVAILABLE"},
		{"no svid", []string{"roles", "-addr", f.addr}, 2, "no SVID"},
		{"half the files", []string{"roles", "-addr", f.addr, "-cert", filepath.Join(f.dir, "admin.pem")}, 2, "go together"},
		{"missing file", admin("-cert", filepath.Join(f.dir, "nope.pem")), 1, "nope.pem"},
		{"key of another svid", admin("-key", filepath.Join(f.dir, "client-key.pem")), 1, "load svid"},
		{"both sources", admin("-workload-api", "unix:///nonexistent"), 2, "not both"},
		{"bad timeout", admin("-timeout", "0s"), 2, "-timeout"},
		{"unknown flag", admin("-bogus"), 2, "flag provided but not defined"},
		{"extra argument", admin("extra"), 2, "unexpected argument"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := runCLI(t, []string{"SPIFFE_ENDPOINT_SOCKET="}, tc.args...)
			if tc.code == 0 {
				if !strings.Contains(r.ok(t), "reader") {
					t.Fatalf("roles printed %q", r.stdout)
				}
				return
			}
			r.fails(t, tc.code, tc.want)
		})
	}
}

func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// workloadAPI serves the SPIFFE Workload API's FetchX509SVID on a unix
// socket with one SVID read from PEM files, the way a SPIRE agent hands a
// workload its SVID (the real agent is exercised by the SPIRE tests).
type workloadAPI struct {
	workload.UnimplementedSpiffeWorkloadAPIServer
	svid *workload.X509SVID
}

func (w *workloadAPI) FetchX509SVID(_ *workload.X509SVIDRequest, stream workload.SpiffeWorkloadAPI_FetchX509SVIDServer) error {
	if err := stream.Send(&workload.X509SVIDResponse{Svids: []*workload.X509SVID{w.svid}}); err != nil {
		return err
	}
	<-stream.Context().Done()
	return nil
}

func pemDER(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var der []byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			return der
		}
		der = append(der, blk.Bytes...)
	}
}

func serveWorkloadAPI(t *testing.T, f *fixture, name, id string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "wlapi")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "agent.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	workload.RegisterSpiffeWorkloadAPIServer(s, &workloadAPI{svid: &workload.X509SVID{
		SpiffeId:    id,
		X509Svid:    pemDER(t, filepath.Join(f.dir, name+".pem")),
		X509SvidKey: pemDER(t, filepath.Join(f.dir, name+"-key.pem")),
		Bundle:      pemDER(t, filepath.Join(f.dir, "bundle.pem")),
	}})
	go func() { _ = s.Serve(l) }()
	t.Cleanup(s.Stop)
	return "unix://" + sock
}

func TestCLIWorkloadAPI(t *testing.T) {
	f := newFixture(t)
	f.start("")
	adminSock := serveWorkloadAPI(t, f, "admin", "spiffe://example.org/ops/admin")
	clientSock := serveWorkloadAPI(t, f, "client", "spiffe://example.org/orders/api")

	out := runCLI(t, nil, "roles", "-addr", f.addr, "-workload-api", adminSock).ok(t)
	if !strings.Contains(out, "reader") {
		t.Fatalf("roles over the workload api flag: %q", out)
	}
	out = runCLI(t, []string{"SPIFFE_ENDPOINT_SOCKET=" + adminSock}, "roles", "-addr", f.addr, "-server-id", "spiffe://example.org/credbroker", "-o", "json").ok(t)
	if roles := decode(t, out, &pb.ListRolesResponse{}).GetRoles(); len(roles) != 1 {
		t.Fatalf("roles over SPIFFE_ENDPOINT_SOCKET: %s", out)
	}
	runCLI(t, []string{"SPIFFE_ENDPOINT_SOCKET=" + clientSock}, "orphans", "-addr", f.addr).fails(t, 1, "PERMISSION_DENIED")
	runCLI(t, nil, "roles", "-addr", f.addr, "-timeout", "2s", "-workload-api", "unix:///nonexistent/agent.sock").fails(t, 1, "workload api")
}

// A lease whose revocation keeps failing stays REVOKING: the revoke command
// fails with the broker's code, and the list shows the lease with its last
// error.
func TestCLIFailingRevocation(t *testing.T) {
	f := newFixtureExtra(t, testenv.PostgresDSN(t), "", `
  broken:
    database: main
    default_ttl: 1m
    max_ttl: 10m
    allowed_spiffe_ids: ["spiffe://example.org/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}};
    revocation_statements:
      - SELECT 1/0;
`)
	f.start("")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := f.issueRole(ctx, "broken", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	id := resp.GetLease().GetId()
	r := f.cli("admin", "leases", "revoke", "-lease-id", id)
	if r.code != 1 || !strings.Contains(r.stderr, "credbroker: leases revoke: ") || r.stdout != "" {
		t.Fatalf("revoke of a lease whose drop fails: exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	out := f.cli("admin", "leases", "list", "-state", "revoking").ok(t)
	header, rows := tableRows(t, out)
	if len(rows) != 1 || rows[0][column(t, header, "LEASE ID")] != id || rows[0][column(t, header, "STATE")] != "REVOKING" ||
		rows[0][column(t, header, "LAST ERROR")] == "-" {
		t.Fatalf("revoking leases:\n%s", out)
	}
	if strings.Contains(out+r.stderr, resp.GetCredential().GetPassword()) {
		t.Fatal("the password appears in the output")
	}
	t.Logf("revoke: %s", strings.TrimSpace(r.stderr))
	t.Logf("list:\n%s", out)
}
