package broker

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/credbroker/credbroker/identity/spireregistry"
	"github.com/credbroker/credbroker/lease"
	"github.com/credbroker/credbroker/plugins"
)

// flakyDB is a fake plugin whose DeleteUser fails while down is set.
type flakyDB struct{ down bool }

var _ plugins.Database = (*flakyDB)(nil)

func (f *flakyDB) GenerateUsername(string) (string, error)                     { return "u", nil }
func (f *flakyDB) NewUser(context.Context, plugins.NewUserRequest) error       { return nil }
func (f *flakyDB) UpdateUser(context.Context, plugins.UpdateUserRequest) error { return nil }
func (f *flakyDB) ListUsers(context.Context) ([]string, error)                 { return nil, nil }
func (f *flakyDB) Ping(context.Context) error                                  { return nil }
func (f *flakyDB) Capabilities() plugins.Capabilities                          { return plugins.Capabilities{} }
func (f *flakyDB) Close()                                                      {}
func (f *flakyDB) DeleteUser(context.Context, plugins.DeleteUserRequest) error {
	if f.down {
		return errors.New("connection refused")
	}
	return nil
}

func TestPluginMetrics(t *testing.T) {
	ctx := context.Background()
	m := newMetrics()
	fake := &flakyDB{}
	db := m.observePlugin("main", fake)
	for range 3 {
		if err := db.NewUser(ctx, plugins.NewUserRequest{}); err != nil {
			t.Fatal(err)
		}
	}
	_ = db.DeleteUser(ctx, plugins.DeleteUserRequest{})
	fake.down = true
	_ = db.DeleteUser(ctx, plugins.DeleteUserRequest{})
	_ = db.DeleteUser(ctx, plugins.DeleteUserRequest{})
	if _, err := db.GenerateUsername("r"); err != nil {
		t.Fatal(err)
	}

	want := `
# HELP credbroker_plugin_call_errors_total Database plugin calls that failed, by database and operation.
# TYPE credbroker_plugin_call_errors_total counter
credbroker_plugin_call_errors_total{database="main",operation="delete_user"} 2
`
	if err := testutil.CollectAndCompare(m.pluginErrors, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
	if n := testutil.CollectAndCount(m.pluginDuration); n != 2 {
		t.Errorf("%d duration series, want 2 (new_user, delete_user)", n)
	}
	for op, want := range map[string]uint64{"new_user": 3, "delete_user": 3} {
		if got := histogramCount(t, m, "credbroker_plugin_call_duration_seconds", op); got != want {
			t.Errorf("%s calls timed: %d, want %d", op, got, want)
		}
	}
	if m.observePlugin("x", fake) == plugins.Database(fake) {
		t.Error("metrics on: the plugin is not wrapped")
	}
	var off *metrics
	if off.observePlugin("main", fake) != plugins.Database(fake) {
		t.Error("metrics off: the plugin is wrapped")
	}
}

func TestLeaseCollector(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	c := leaseCollector{
		stats: func() lease.Stats {
			return lease.Stats{
				ByState:        map[lease.State]int{lease.StateActive: 5, lease.StateRevoking: 2},
				ByRole:         map[string]int{"reader": 6, "writer": 1},
				OldestRevoking: now.Add(-90 * time.Second),
			}
		},
		now: func() time.Time { return now },
	}
	want := `
# HELP credbroker_leases Leases held, by state (CREATING, ACTIVE, REVOKING).
# TYPE credbroker_leases gauge
credbroker_leases{state="ACTIVE"} 5
credbroker_leases{state="CREATING"} 0
credbroker_leases{state="REVOKING"} 2
# HELP credbroker_leases_by_role Leases held, by role.
# TYPE credbroker_leases_by_role gauge
credbroker_leases_by_role{role="reader"} 6
credbroker_leases_by_role{role="writer"} 1
# HELP credbroker_oldest_revoking_age_seconds Age of the oldest REVOKING lease (since this broker saw it become REVOKING); 0 when none.
# TYPE credbroker_oldest_revoking_age_seconds gauge
credbroker_oldest_revoking_age_seconds 90
# HELP credbroker_revoking_leases Leases whose revocation has started and not finished (the backlog of failing drops).
# TYPE credbroker_revoking_leases gauge
credbroker_revoking_leases 2
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

// histogramCount is the sample count of the histogram name whose
// operation label is op, from m's registry.
func histogramCount(t *testing.T, m *metrics, name, op string) uint64 {
	t.Helper()
	mfs, err := m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, mt := range mf.GetMetric() {
			for _, lp := range mt.GetLabel() {
				if lp.GetName() == "operation" && lp.GetValue() == op {
					return mt.GetHistogram().GetSampleCount()
				}
			}
		}
	}
	return 0
}

func TestRegistryCollector(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		name   string
		status spireregistry.Status
		want   string
	}{
		{"never listed", spireregistry.Status{}, `
# HELP credbroker_registry_consecutive_failures Listings of the SPIRE server's entries that failed in a row (0 once one succeeds).
# TYPE credbroker_registry_consecutive_failures gauge
credbroker_registry_consecutive_failures 0
# HELP credbroker_registry_healthy 1 when the last listing of the SPIRE server's entries succeeded, else 0.
# TYPE credbroker_registry_healthy gauge
credbroker_registry_healthy 0
`},
		{"failing since a success", spireregistry.Status{LastSuccess: now.Add(-30 * time.Second), Failures: 3}, `
# HELP credbroker_registry_consecutive_failures Listings of the SPIRE server's entries that failed in a row (0 once one succeeds).
# TYPE credbroker_registry_consecutive_failures gauge
credbroker_registry_consecutive_failures 3
# HELP credbroker_registry_healthy 1 when the last listing of the SPIRE server's entries succeeded, else 0.
# TYPE credbroker_registry_healthy gauge
credbroker_registry_healthy 0
# HELP credbroker_registry_sync_age_seconds Time since the last successful listing of the SPIRE server's entries began; absent before the first.
# TYPE credbroker_registry_sync_age_seconds gauge
credbroker_registry_sync_age_seconds 30
`},
		{"healthy", spireregistry.Status{Healthy: true, LastSuccess: now.Add(-2 * time.Second)}, `
# HELP credbroker_registry_consecutive_failures Listings of the SPIRE server's entries that failed in a row (0 once one succeeds).
# TYPE credbroker_registry_consecutive_failures gauge
credbroker_registry_consecutive_failures 0
# HELP credbroker_registry_healthy 1 when the last listing of the SPIRE server's entries succeeded, else 0.
# TYPE credbroker_registry_healthy gauge
credbroker_registry_healthy 1
# HELP credbroker_registry_sync_age_seconds Time since the last successful listing of the SPIRE server's entries began; absent before the first.
# TYPE credbroker_registry_sync_age_seconds gauge
credbroker_registry_sync_age_seconds 2
`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := registryCollector{status: func() spireregistry.Status { return tc.status }, now: func() time.Time { return now }}
			if err := testutil.CollectAndCompare(c, strings.NewReader(tc.want)); err != nil {
				t.Error(err)
			}
		})
	}
}
