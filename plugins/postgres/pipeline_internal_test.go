package postgres

import (
	"testing"

	"github.com/credbroker/credbroker/plugins"
)

func TestEndsAtTopLevel(t *testing.T) {
	tests := []struct {
		name string
		sql  string
		want bool
	}{
		{"plain", `CREATE ROLE "a" LOGIN;`, true},
		{"literal with doubled quote", `COMMENT ON ROLE a IS 'it''s';`, true},
		{"unterminated literal", `COMMENT ON ROLE a IS 'it`, false},
		{"escape string", `COMMENT ON ROLE a IS E'a\'b\\'`, true},
		{"escape string unterminated", `COMMENT ON ROLE a IS E'a\'`, false},
		{"backslash in standard string", `COMMENT ON ROLE a IS 'a\'`, false},
		{"identifier", `CREATE ROLE "we""ird;--" LOGIN`, true},
		{"unterminated identifier", `CREATE ROLE "a LOGIN`, false},
		{"line comment ended", "CREATE ROLE a -- note\n", true},
		{"line comment to the end", "CREATE ROLE a -- note", false},
		{"block comment", "CREATE ROLE a /* x /* nested */ y */", true},
		{"unterminated block comment", "CREATE ROLE a /* x /* nested */", false},
		{"dollar quote", "DO $$ BEGIN RAISE NOTICE 'x'; END $$;", true},
		{"tagged dollar quote", "DO $f$ BEGIN $$ x $$; END $f$", true},
		{"unterminated dollar quote", "DO $f$ BEGIN END $$", false},
		{"dollar inside identifier", "SELECT a$b FROM t", true},
		{"parameter", "SELECT $1", true},
		{"verifier literal", `CREATE ROLE a PASSWORD 'SCRAM-SHA-256$4096:c2FsdA==$c3Q=:c2s='`, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := endsAtTopLevel(tt.sql); got != tt.want {
				t.Errorf("endsAtTopLevel(%q) = %v, want %v", tt.sql, got, tt.want)
			}
		})
	}
}

// TestVerifierCache: a password handed out comes with the verifier of
// that password, once; the refill stops at Close and nothing is kept.
func TestVerifierCache(t *testing.T) {
	db := &DB{iters: 16}
	first, err := db.GeneratePassword()
	if err != nil {
		t.Fatal(err)
	}
	if len(first) != plugins.PasswordLength {
		t.Fatalf("password length %d, want %d", len(first), plugins.PasswordLength)
	}
	if _, ok := db.verifiers.take(first); ok {
		t.Error("the first password, generated with an empty buffer, has a cached verifier")
	}
	// The first call started the refill; wait for it to fill the buffer.
	db.verifiers.wg.Wait()
	if n := len(db.verifiers.ready); n != verifierBuffer {
		t.Fatalf("buffer holds %d pairs after a refill, want %d", n, verifierBuffer)
	}
	seen := map[string]bool{}
	for range verifierBuffer {
		pw, err := db.GeneratePassword()
		if err != nil {
			t.Fatal(err)
		}
		if seen[pw] {
			t.Fatal("a password was handed out twice")
		}
		seen[pw] = true
		v, ok := db.verifiers.take(pw)
		if !ok {
			t.Fatal("a password from a full buffer has no cached verifier")
		}
		p := parseVerifier(t, v)
		if want, _ := scramVerifier(pw, p.salt, p.iterations); v != want || p.iterations != 16 {
			t.Fatal("cached verifier is not the password's")
		}
		if _, ok := db.verifiers.take(pw); ok {
			t.Fatal("a verifier was handed out twice")
		}
	}
	db.verifiers.close()
	db.verifiers.mu.Lock()
	filling, ready, issued := db.verifiers.filling, len(db.verifiers.ready), len(db.verifiers.issued)
	db.verifiers.mu.Unlock()
	if filling || ready != 0 || issued != 0 {
		t.Errorf("after close: filling %v, %d ready, %d issued; want none", filling, ready, issued)
	}
	if _, err := db.GeneratePassword(); err != nil {
		t.Errorf("GeneratePassword after Close: %v", err)
	}
	if db.verifiers.filling {
		t.Error("a refill started after Close")
	}
}

// TestIssuedVerifiersBounded: passwords handed out and never used do not
// pile up.
func TestIssuedVerifiersBounded(t *testing.T) {
	db := &DB{iters: 1}
	defer db.verifiers.close()
	for range 3 * maxIssuedVerifiers {
		if _, err := db.GeneratePassword(); err != nil {
			t.Fatal(err)
		}
		db.verifiers.wg.Wait()
	}
	db.verifiers.mu.Lock()
	defer db.verifiers.mu.Unlock()
	if n := len(db.verifiers.issued); n > maxIssuedVerifiers {
		t.Errorf("%d unused verifiers kept, want at most %d", n, maxIssuedVerifiers)
	}
}
