package pgstore

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/credbroker/credbroker/lease"
)

// The statements of a shared store stay off sequential scans on a table
// of 100k leases, most of them neither due nor claimable: ClaimDue reads
// its partial indexes, Query the primary key or the role and owner
// indexes. The plans are logged (go test -v -run TestPlans).
func TestPlansUseIndexes(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a table of 100k leases")
	}
	_, rs := replicas(t, 1)
	s := rs[0]
	now := time.Now()
	ls := make([]lease.Lease, 100_000)
	for i := range ls {
		l := testLease(t, lease.StateActive)
		l.Owner = fmt.Sprintf("spiffe://example.org/w%d", i%500)
		l.Role = []string{"readonly", "writer", "admin", "report"}[i%4]
		l.ExpireTime = now.Add(time.Duration(i%3600) * time.Second) // spread over an hour
		switch {
		case i%100 == 0:
			l.State = lease.StateRevoking
		case i%100 == 1:
			l.State = lease.StateCreating
		case i%100 < 5:
			l.ExpireTime = now.Add(-time.Minute) // due
		}
		ls[i] = l
	}
	if err := s.PutAll(bg, ls); err != nil {
		t.Fatal(err)
	}
	// Most CREATING rows are held by a live issuance, as Create leaves them.
	if _, err := s.pool.Exec(bg, `UPDATE `+s.schema+`.leases SET claimed_by = 'x', claim_deadline = now() + interval '1 hour'
		WHERE state = 'CREATING' AND id > '1'`); err != nil {
		t.Fatal(err)
	}
	if _, err := s.pool.Exec(bg, `ANALYZE `+s.schema+`.leases`); err != nil {
		t.Fatal(err)
	}

	returning := make([]string, len(leaseCols))
	for i, c := range leaseCols {
		returning[i] = "l." + c
	}
	plans := []struct {
		name string
		sql  string
		args []any
	}{
		{"ClaimDue", s.claimSQL(returning), []any{"a", time.Minute.Microseconds(), 100, time.Minute.Microseconds()}},
	}
	for _, q := range []lease.Query{
		{Limit: 100},
		{After: ls[7].ID, Limit: 100},
		{IDPrefix: "ab", Limit: 100},
		{Role: "writer", Limit: 100},
		{Role: "writer", After: ls[7].ID, Limit: 100},
		{Owner: "spiffe://example.org/w7", States: []lease.State{lease.StateActive, lease.StateRevoking}},
	} {
		sql, args, _ := s.querySQL(q)
		plans = append(plans, struct {
			name string
			sql  string
			args []any
		}{fmt.Sprintf("Query%+v", q), sql, args})
	}
	for _, p := range plans {
		// EXPLAIN ANALYZE runs the claim: in a transaction rolled back.
		tx, err := s.pool.Begin(bg)
		if err != nil {
			t.Fatal(err)
		}
		rows, err := tx.Query(bg, `EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF, SUMMARY ON) `+p.sql, p.args...)
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		lines, err := pgx.CollectRows(rows, pgx.RowTo[string])
		tx.Rollback(bg)
		if err != nil {
			t.Fatalf("%s: %v", p.name, err)
		}
		plan := strings.Join(lines, "\n")
		t.Logf("%s:\n%s", p.name, plan)
		if strings.Contains(plan, "Seq Scan on leases") {
			t.Errorf("%s scans the whole table", p.name)
		}
		if p.name == "ClaimDue" && (!strings.Contains(plan, "Index Scan using leases_creating") || !strings.Contains(plan, "Index Scan using leases_due")) {
			t.Errorf("ClaimDue does not read its two partial indexes")
		}
	}
}
