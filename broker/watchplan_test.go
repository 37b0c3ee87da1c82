package broker

import (
	"strings"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins/builtin"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

func watchLease(id string, issue, expire, max time.Duration) lease.Lease {
	return lease.Lease{ID: id, IssueTime: at(issue), ExpireTime: at(expire), MaxExpireTime: at(max), State: lease.StateActive}
}

func TestWatchPlanNext(t *testing.T) {
	for _, tc := range []struct {
		name     string
		plan     watchPlan
		overlap  time.Duration
		wantStep watchStep
		wantAt   time.Time
	}{
		{
			name:     "renew before the rotation",
			plan:     watchPlan{cur: watchLease("a", 0, time.Hour, 24*time.Hour), renew: at(40 * time.Minute)},
			overlap:  time.Minute,
			wantStep: stepRenew, wantAt: at(40 * time.Minute),
		},
		{
			name: "rotate one and a half overlaps before max expiry",
			plan: watchPlan{cur: watchLease("a", 0, 24*time.Hour, 24*time.Hour), renew: at(23*time.Hour + 59*time.Minute)},
			// 24h - 1m30s comes before the renewal.
			overlap:  time.Minute,
			wantStep: stepRotate, wantAt: at(24*time.Hour - 90*time.Second),
		},
		{
			name: "overlap capped at a third of the lease's life",
			plan: watchPlan{cur: watchLease("a", 0, 2*time.Second, 6*time.Second), renew: at(5 * time.Second)},
			// overlap 2s (not 1m): rotate at 6s - 3s.
			overlap:  time.Minute,
			wantStep: stepRotate, wantAt: at(3 * time.Second),
		},
		{
			name:     "rotation delayed after a failed issuance",
			plan:     watchPlan{cur: watchLease("a", 0, 5*time.Second, 6*time.Second), renew: at(10 * time.Second), rotateNotBefore: at(4 * time.Second)},
			overlap:  2 * time.Second,
			wantStep: stepRotate, wantAt: at(4 * time.Second),
		},
		{
			name: "a renewal before the overlap's end",
			plan: watchPlan{cur: watchLease("b", 3*time.Second, 5*time.Second, 9*time.Second), renew: at(4300 * time.Millisecond),
				prev: watchLease("a", 0, 5500*time.Millisecond, 6*time.Second), prevEnd: at(5 * time.Second)},
			overlap:  2 * time.Second,
			wantStep: stepRenew, wantAt: at(4300 * time.Millisecond),
		},
		{
			name: "revoke the previous lease at the overlap's end",
			plan: watchPlan{cur: watchLease("b", 3*time.Second, 5*time.Second, 9*time.Second), renew: at(5200 * time.Millisecond),
				prev: watchLease("a", 0, 5500*time.Millisecond, 6*time.Second), prevEnd: at(5 * time.Second)},
			overlap:  2 * time.Second,
			wantStep: stepRevokePrev, wantAt: at(5 * time.Second),
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			step, when := tc.plan.next(tc.overlap)
			if step != tc.wantStep || !when.Equal(tc.wantAt) {
				t.Fatalf("next = %s at %s, want %s at %s", step, when.Sub(t0), tc.wantStep, tc.wantAt.Sub(t0))
			}
		})
	}
}

func TestRenewAt(t *testing.T) {
	for _, tc := range []struct {
		name   string
		now    time.Duration
		expire time.Duration
		j      float64
		want   time.Duration
	}{
		{"two thirds, no jitter", 0, 3 * time.Second, 0.5, 2 * time.Second},
		{"10% early", 0, 3 * time.Second, 0, 1800 * time.Millisecond},
		{"at most 10% late", 0, 3 * time.Second, 1, 2200 * time.Millisecond},
		{"measured from now", time.Minute, time.Minute + 30*time.Second, 0.5, time.Minute + 20*time.Second},
		{"already expired", time.Minute, 0, 0.5, time.Minute},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := renewAt(at(tc.now), at(tc.expire), tc.j).Sub(t0)
			if d := got - tc.want; d < -time.Microsecond || d > time.Microsecond {
				t.Fatalf("renewAt = %s, want %s", got, tc.want)
			}
		})
	}
}

func TestRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		left, want time.Duration
	}{
		{time.Hour, 5 * time.Second},
		{4 * time.Second, time.Second},
		{0, 100 * time.Millisecond},
		{-time.Second, 100 * time.Millisecond},
	} {
		if got := retryAfter(t0, t0.Add(tc.left)); got != tc.want {
			t.Errorf("retryAfter with %s left = %s, want %s", tc.left, got, tc.want)
		}
	}
}

func TestParseConfigWatch(t *testing.T) {
	for _, tc := range []struct {
		name           string
		yaml           string
		overlap, grace time.Duration
		bad            string
	}{
		{name: "defaults", overlap: DefaultWatchOverlap, grace: DefaultDisconnectGrace},
		{name: "set", yaml: "watch: {overlap: 10s, disconnect_grace: 2m}", overlap: 10 * time.Second, grace: 2 * time.Minute},
		{name: "grace 0 is never", yaml: "watch: {disconnect_grace: 0s}", overlap: DefaultWatchOverlap, grace: 0},
		{name: "negative grace", yaml: "watch: {disconnect_grace: -1s}", bad: "watch.disconnect_grace: must not be negative"},
		{name: "bad overlap", yaml: "watch: {overlap: soon}", bad: "watch.overlap: want a duration"},
		{name: "unknown key", yaml: "watch: {grace: 1s}", bad: "field grace not found"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseConfig([]byte(goodConfig+"\n"+tc.yaml+"\n"), builtin.Catalog())
			if tc.bad != "" {
				if err == nil || !strings.Contains(err.Error(), tc.bad) {
					t.Fatalf("err = %v, want it to contain %q", err, tc.bad)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			s := c.Watch.Settings()
			if s.Overlap != tc.overlap || s.DisconnectGrace != tc.grace {
				t.Fatalf("settings %+v, want overlap %s grace %s", s, tc.overlap, tc.grace)
			}
		})
	}
}
