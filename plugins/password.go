package plugins

import (
	"crypto/rand"
	"fmt"
)

// PasswordLength is the length of passwords from GeneratePassword: 40
// characters from a 62-symbol alphabet is about 238 bits.
const PasswordLength = 40

const passwordAlphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// GeneratePassword returns a new random password. It is alphanumeric so that
// it needs no escaping in any DSN format, shell or SQL literal, and so that
// SASLprep (RFC 4013) leaves it unchanged when a plugin hashes it itself.
func GeneratePassword() (string, error) {
	// Rejection sampling keeps every symbol equally likely: bytes at or above
	// the largest multiple of 62 would bias the first symbols.
	const limit = 256 - 256%len(passwordAlphabet)
	out := make([]byte, 0, PasswordLength)
	buf := make([]byte, PasswordLength*2)
	for len(out) < PasswordLength {
		if _, err := rand.Read(buf); err != nil {
			return "", fmt.Errorf("plugins: generate password: %w", err)
		}
		for _, b := range buf {
			if int(b) >= limit {
				continue
			}
			out = append(out, passwordAlphabet[int(b)%len(passwordAlphabet)])
			if len(out) == PasswordLength {
				break
			}
		}
	}
	return string(out), nil
}
