package plugins_test

import (
	"strings"
	"testing"

	"github.com/credbroker/credbroker/plugins"
)

func TestGeneratePassword(t *testing.T) {
	seen := make(map[string]bool)
	var counts [256]int
	const n = 2000
	for range n {
		pw, err := plugins.GeneratePassword()
		if err != nil {
			t.Fatal(err)
		}
		if len(pw) != plugins.PasswordLength || len(pw) < 32 {
			t.Fatalf("password of %d characters, want %d", len(pw), plugins.PasswordLength)
		}
		if seen[pw] {
			t.Fatal("duplicate password")
		}
		seen[pw] = true
		for i := range len(pw) {
			c := pw[i]
			if !strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789", rune(c)) {
				t.Fatalf("password has a non-alphanumeric character %q", c)
			}
			counts[c]++
		}
	}
	// 80,000 symbols over 62: about 1290 each. A modulo bias or a missing
	// symbol would show far outside these bounds.
	for _, c := range []byte("AZaz09") {
		if counts[c] < 1000 || counts[c] > 1600 {
			t.Errorf("symbol %q appeared %d times, want about %d", c, counts[c], n*plugins.PasswordLength/62)
		}
	}
}
