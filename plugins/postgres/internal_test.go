package postgres

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/internal/testenv"
	"github.com/credbroker/credbroker/plugins"
)

func adminConn(t *testing.T) *pgx.Conn {
	t.Helper()
	conn, err := pgx.Connect(t.Context(), testenv.PostgresDSN(t))
	if err != nil {
		t.Fatalf("admin connection: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close(context.Background()) })
	return conn
}

type verifier struct {
	iterations                 int
	salt, storedKey, serverKey []byte
}

func parseVerifier(t *testing.T, v string) verifier {
	t.Helper()
	rest, ok := strings.CutPrefix(v, "SCRAM-SHA-256$")
	iter, rest, ok2 := strings.Cut(rest, ":")
	salt, keys, ok3 := strings.Cut(rest, "$")
	stored, server, ok4 := strings.Cut(keys, ":")
	if !ok || !ok2 || !ok3 || !ok4 {
		t.Fatalf("malformed verifier")
	}
	n, err := strconv.Atoi(iter)
	if err != nil {
		t.Fatalf("iterations: %v", err)
	}
	dec := func(s string) []byte {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			t.Fatalf("base64: %v", err)
		}
		return b
	}
	return verifier{n, dec(salt), dec(stored), dec(server)}
}

// TestScramVerifierRFC7677 checks the verifier against the SCRAM-SHA-256
// exchange of RFC 7677 section 3 (user "user", password "pencil"): a server
// holding only our StoredKey and ServerKey must accept that client proof and
// produce that server signature.
func TestScramVerifierRFC7677(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	v, err := scramVerifier("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	pv := parseVerifier(t, v)
	authMessage := "n=user,r=rOprNGfwEbeRWgbNEkqO," +
		"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096," +
		"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
	proof, _ := base64.StdEncoding.DecodeString("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
	wantServerSig := "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="

	// Server side of RFC 5802 section 3: ClientKey = proof XOR
	// HMAC(StoredKey, AuthMessage), and H(ClientKey) must be StoredKey.
	clientSig := hmacSHA256(pv.storedKey, authMessage)
	clientKey := make([]byte, len(proof))
	for i := range proof {
		clientKey[i] = proof[i] ^ clientSig[i]
	}
	if got := sha256.Sum256(clientKey); !hmac.Equal(got[:], pv.storedKey) {
		t.Errorf("StoredKey does not verify the RFC 7677 client proof")
	}
	if got := base64.StdEncoding.EncodeToString(hmacSHA256(pv.serverKey, authMessage)); got != wantServerSig {
		t.Errorf("server signature = %s, want %s", got, wantServerSig)
	}
	if pv.iterations != 4096 || base64.StdEncoding.EncodeToString(pv.salt) != "W22ZaJ0SNY7soEsUEjb6gQ==" {
		t.Errorf("verifier header carries iterations %d, salt %x", pv.iterations, pv.salt)
	}
}

// TestScramVerifierMatchesServer has the server hash a password itself and
// checks we derive the same keys from its salt and iteration count.
func TestScramVerifierMatchesServer(t *testing.T) {
	conn := adminConn(t)
	ctx := t.Context()
	role := "cbt_scram_" + strconv.FormatInt(time.Now().UnixNano(), 36)
	const password = "ServerHashedPassword0123456789abcdefghij"
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(context.Background()) }() // nothing of this test is kept
	if _, err := tx.Exec(ctx, "SET LOCAL password_encryption = 'scram-sha-256'"); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(ctx, "CREATE ROLE "+quoteIdent(role)+" PASSWORD '"+password+"'"); err != nil {
		t.Fatal(err)
	}
	var stored string
	if err := tx.QueryRow(ctx, "SELECT rolpassword FROM pg_authid WHERE rolname = $1", role).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	server := parseVerifier(t, stored)
	ours, err := scramVerifier(password, server.salt, server.iterations)
	if err != nil {
		t.Fatal(err)
	}
	if ours != stored {
		t.Errorf("verifier differs from the server's for the same salt and iterations")
	}
}

func TestNewScramVerifierIsSalted(t *testing.T) {
	a, _ := newScramVerifier("same", DefaultScramIterations)
	b, _ := newScramVerifier("same", DefaultScramIterations)
	if a == b {
		t.Error("two verifiers of one password are equal: salt is not random")
	}
	if pv := parseVerifier(t, a); len(pv.salt) != scramSaltLen || pv.iterations != DefaultScramIterations {
		t.Errorf("salt %d bytes, %d iterations", len(pv.salt), pv.iterations)
	}
}

func TestQuoteLiteral(t *testing.T) {
	tests := []struct {
		name, in, want string
	}{
		{"plain", "abc", "'abc'"},
		{"quote", "it's", "'it''s'"},
		{"injection", "'; DROP ROLE postgres; --", "'''; DROP ROLE postgres; --'"},
		{"backslash", `a\b`, ` E'a\\b'`},
		{"backslash quote", `\'`, ` E'\\'''`},
		{"placeholder", "{{name}}", "'{{name}}'"},
		{"unicode", "ロール", "'ロール'"},
	}
	conn := adminConn(t)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := quoteLiteral(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("quoteLiteral(%q) = %s, want %s", tc.in, got, tc.want)
			}
			// The server reads back exactly the input, both ways that
			// standard_conforming_strings can be set.
			for _, scs := range []string{"on", "off"} {
				var back string
				err := conn.QueryRow(t.Context(), "SELECT set_config('standard_conforming_strings', $1, false)", scs).Scan(&back)
				if err != nil {
					t.Fatal(err)
				}
				if err := conn.QueryRow(t.Context(), "SELECT "+got, pgx.QueryExecModeExec).Scan(&back); err != nil {
					t.Fatalf("standard_conforming_strings=%s: %v", scs, err)
				}
				if back != tc.in {
					t.Errorf("standard_conforming_strings=%s: server read %q, want %q", scs, back, tc.in)
				}
			}
		})
	}
	if _, err := quoteLiteral("a\x00b"); err == nil {
		t.Error("quoteLiteral accepted a NUL byte")
	}
}

func TestNeedsACLLock(t *testing.T) {
	tests := []struct {
		name  string
		stmts []string
		want  bool
	}{
		{"membership via IN ROLE", []string{"CREATE ROLE {{name}} LOGIN PASSWORD {{password}} IN ROLE readers"}, false},
		{"membership via GRANT", []string{"CREATE ROLE {{name}} LOGIN", "GRANT readers TO {{name}}"}, false},
		{"membership, role named like on", []string{"GRANT role_on_x TO {{name}}"}, false},
		{"table grant", []string{"CREATE ROLE {{name}} LOGIN", "GRANT SELECT ON t TO {{name}}"}, true},
		{"lowercase multi-line", []string{"grant select\n  on all tables in schema s\n  to {{name}}"}, true},
		{"second statement in one string", []string{"CREATE ROLE {{name}} LOGIN; GRANT USAGE ON SCHEMA s TO {{name}};"}, true},
		{"comment after membership", []string{"GRANT readers TO {{name}}; COMMENT ON ROLE {{name}} IS 'x'"}, false},
		{"revoke", []string{"REVOKE SELECT ON t FROM {{name}}"}, true},
		{"default privileges", []string{"ALTER DEFAULT PRIVILEGES IN SCHEMA s GRANT SELECT ON TABLES TO {{name}}"}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := needsACLLock(tc.stmts); got != tc.want {
				t.Errorf("needsACLLock = %v, want %v", got, tc.want)
			}
		})
	}
}

func TestSanitizeRole(t *testing.T) {
	tests := []struct {
		in   string
		max  int
		want string
	}{
		{"orders-readonly", 33, "orders_readonly"},
		{"  Orders  Read--Only  ", 33, "orders_read_only"},
		{"___", 33, "role"},
		{"", 33, "role"},
		{"日本語", 33, "role"},
		{"abc_def", 4, "abc"},
		{"abcdefgh", 4, "abcd"},
	}
	for _, tc := range tests {
		if got := plugins.SanitizeRole(tc.in, tc.max); got != tc.want {
			t.Errorf("SanitizeRole(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
		}
	}
}
