package plugins_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/credbroker/credbroker/plugins"
)

func TestCheckPrefix(t *testing.T) {
	for p, ok := range map[string]bool{
		"cb": true, "a": true, "abcdefgh": true, "a1b2c3d4": true,
		"abcdefghi": false, "": false, "1cb": false, "Cb": false, "c-b": false, "c_b": false,
	} {
		if err := plugins.CheckPrefix(p); (err == nil) != ok {
			t.Errorf("CheckPrefix(%q) = %v, want ok=%v", p, err, ok)
		}
	}
}

func TestUsernames(t *testing.T) {
	rules := plugins.UsernameRules{Engine: "test", MaxLen: 63, MinRandom: 16, MaxRandom: 26, RoleReserve: 8}
	if _, err := plugins.NewUsernames(rules, "Bad-Prefix"); err == nil {
		t.Fatal("bad prefix accepted")
	}
	u, err := plugins.NewUsernames(rules, "cb")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		limit, random int
	}{{63, 26}, {32, 20}, {28, 16}} {
		name, err := u.Generate("Orders Read-Only!", tc.limit)
		if err != nil {
			t.Fatalf("Generate(limit %d): %v", tc.limit, err)
		}
		random := name[strings.LastIndexByte(name, '_')+1:]
		if len(name) > tc.limit || len(random) != tc.random || !strings.HasPrefix(name, "cb_orders_") || !rules.Pattern().MatchString(name) {
			t.Errorf("Generate(limit %d) = %q (random %d), want within the limit with %d random characters", tc.limit, name, len(random), tc.random)
		}
		if err := u.Check(name); err != nil {
			t.Errorf("Check(%q) = %v", name, err)
		}
	}
	if _, err := u.Generate("r", 20); err == nil {
		t.Error("Generate with no room for the role part succeeded")
	}
	for _, bad := range []string{
		"xx_role_abcdefghijklmnop",                            // other prefix
		"cb_role_abcdefghijklmno",                             // random part too short
		"cb_role_abcdefghijklmnop'",                           // quote
		"cb__abcdefghijklmnop",                                // empty role
		"cb_" + strings.Repeat("r", 50) + "_abcdefghijklmnop", // over MaxLen
	} {
		err := u.Check(bad)
		if !errors.Is(err, plugins.ErrInvalidUsername) || !plugins.KindOf(err).InvalidUsername() {
			t.Errorf("Check(%q) = %v, want ErrInvalidUsername", bad, err)
		}
		if u.Match(bad) {
			t.Errorf("Match(%q) = true", bad)
		}
	}
}
