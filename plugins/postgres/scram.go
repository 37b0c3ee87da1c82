package postgres

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
)

// PostgreSQL's defaults (SCRAM_SHA_256_DEFAULT_ITERATIONS, SCRAM_DEFAULT_SALT_LEN).
const (
	DefaultScramIterations = 4096
	scramSaltLen           = 16
	// MaxScramIterations bounds the setting: each iteration is server CPU
	// at every CREATE ROLE.
	MaxScramIterations = 1 << 20
)

// scramVerifier returns the SCRAM-SHA-256 verifier PostgreSQL stores in
// pg_authid.rolpassword:
//
//	SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
//
// with SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations),
// StoredKey = SHA-256(HMAC(SaltedPassword, "Client Key")) and
// ServerKey = HMAC(SaltedPassword, "Server Key") (RFC 5802 section 3,
// RFC 7677). RFC 5802 asks for SASLprep of the password first; it is skipped
// because the broker's passwords are ASCII alphanumerics
// (plugins.GeneratePassword), which SASLprep leaves unchanged.
func scramVerifier(password string, salt []byte, iterations int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("scram: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iterations, b64(salt), b64(storedKey[:]), b64(serverKey)), nil
}

// newScramVerifier uses a fresh random salt, as the server would.
func newScramVerifier(password string, iterations int) (string, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("scram: salt: %w", err)
	}
	return scramVerifier(password, salt, iterations)
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}
