package pgstore

import (
	"syscall"
	"testing"
	"time"

	"github.com/credbroker/credbroker/lease"
)

// BenchmarkIssueWrites is the store's part of one issuance on a replica:
// the CREATING record (Create, claimed) and the ACTIVE one (PutIfVersion),
// from 8 callers at once as under load, sharing group commits. It reports
// the process's CPU per issuance next to the time.
func BenchmarkIssueWrites(b *testing.B) {
	benchIssueWrites(b, func(s *Store, l lease.Lease) (int64, error) { return s.Create(bg, l, time.Minute) })
}

// BenchmarkIssueWritesCapped is BenchmarkIssueWrites for a role with a
// live-lease cap (never reached): the CREATING record is written by
// CreateWithin, every caller's in turn under the role's lock.
func BenchmarkIssueWritesCapped(b *testing.B) {
	lim := lease.Limits{Role: 1 << 30}
	benchIssueWrites(b, func(s *Store, l lease.Lease) (int64, error) { return s.CreateWithin(bg, l, time.Minute, lim) })
}

func benchIssueWrites(b *testing.B, create func(*Store, lease.Lease) (int64, error)) {
	c := testConfig(b)
	c.MaxConns = 8
	s := initOpen(b, c)
	b.SetParallelism(8)
	cpu0 := processCPU()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			l := testLease(b, lease.StateCreating)
			v, err := create(s, l)
			if err != nil {
				b.Error(err)
				return
			}
			l.State = lease.StateActive
			if _, err := s.PutIfVersion(bg, l, v, 0); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(processCPU()-cpu0)/float64(time.Microsecond)/float64(b.N), "cpu-µs/op")
}

func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
