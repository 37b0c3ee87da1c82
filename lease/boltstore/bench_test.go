package boltstore

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/lease"
)

// Benchmarks of the durable path (issue 5). They profile what the broker
// does per credential and at start:
//
//	go test -run '^$' -bench 'Bolt|Issue' -benchmem ./lease/
//	go test -run '^$' -bench 'Load/100k' -cpuprofile cpu.prof ./lease/

// benchLease is a lease as the broker writes it: every field a real one
// has, with the role's names shared by many leases.
func benchLease(i int, r *rand.Rand, now time.Time) lease.Lease {
	id := fmt.Sprintf("%016x%016x", r.Uint64(), uint64(i))
	return lease.Lease{
		ID:            id,
		Role:          "orders-readonly",
		Owner:         fmt.Sprintf("spiffe://example.org/orders/api-%d", i%50),
		Database:      "main",
		Username:      "cb_orders_readonly_" + fmt.Sprintf("%026x", r.Uint64())[:26],
		IssueTime:     now,
		ExpireTime:    now.Add(time.Hour + time.Duration(r.Int64N(int64(24*time.Hour)))),
		MaxExpireTime: now.Add(48 * time.Hour),
		State:         lease.StateActive,
	}
}

func benchBolt(b *testing.B) *Store {
	b.Helper()
	s, err := Open(filepath.Join(b.TempDir(), "leases.db"))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close() })
	return s
}

// BenchmarkBoltPut is one durable write with nothing else in flight: the
// latency the broker pays twice per credential (intent, then ACTIVE).
func BenchmarkBoltPut(b *testing.B) {
	s := benchBolt(b)
	r := rand.New(rand.NewPCG(1, 2))
	now := time.Now().UTC()
	ctx := context.Background()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if err := s.Put(ctx, benchLease(i, r, now)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkBoltPutParallel is many writers at once, sharing commits.
func BenchmarkBoltPutParallel(b *testing.B) {
	s := benchBolt(b)
	ctx := context.Background()
	now := time.Now().UTC()
	b.SetParallelism(16) // 16 × GOMAXPROCS writers
	b.ReportAllocs()
	var seed uint64
	b.RunParallel(func(pb *testing.PB) {
		seed++
		r := rand.New(rand.NewPCG(seed, 3))
		for i := 0; pb.Next(); i++ {
			if err := s.Put(ctx, benchLease(i, r, now)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// BenchmarkIssueRevokeStore is the Manager's store work for one credential
// and its revocation (Begin, Activate, Revoke) against bbolt, with a
// backend that does nothing: the broker's own overhead per lease.
func BenchmarkIssueRevokeStore(b *testing.B) {
	s := benchBolt(b)
	m, err := lease.NewManager(lease.Config{Store: s, Backend: nopBackend{}})
	if err != nil {
		b.Fatal(err)
	}
	if err := m.Load(context.Background()); err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()
	r := rand.New(rand.NewPCG(1, 2))
	now := time.Now().UTC()
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		l := benchLease(i, r, now)
		if _, err := m.Issue(ctx, l, func(ctx context.Context, intent func(context.Context) error) error {
			return intent(ctx)
		}); err != nil {
			b.Fatal(err)
		}
		if _, err := m.Revoke(ctx, l.ID); err != nil {
			b.Fatal(err)
		}
	}
}

type nopBackend struct{}

func (nopBackend) Drop(context.Context, lease.Lease) error   { return nil }
func (nopBackend) Extend(context.Context, lease.Lease) error { return nil }

// fillBolt writes n ACTIVE leases into a new store at path, in large
// transactions.
func fillBolt(tb testing.TB, path string, n int) {
	tb.Helper()
	s, err := Open(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer s.Close()
	r := rand.New(rand.NewPCG(5, 6))
	now := time.Now().UTC()
	const chunk = 50_000
	for done := 0; done < n; done += chunk {
		err := s.db.Update(func(tx *bolt.Tx) error {
			bk := tx.Bucket(bucketName)
			bk.FillPercent = 0.9
			for i := done; i < min(n, done+chunk); i++ {
				l := benchLease(i, r, now)
				v, err := encodeLease(l)
				if err != nil {
					return err
				}
				if err := bk.Put([]byte(l.ID), v); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			tb.Fatal(err)
		}
	}
}

// BenchmarkLoad opens a store of n ACTIVE leases and restores them into a
// Manager: what a broker start costs, and the heap it keeps per lease.
func BenchmarkLoad(b *testing.B) {
	for _, n := range []int{100_000, 1_000_000} {
		b.Run(fmt.Sprintf("%dk", n/1000), func(b *testing.B) {
			path := filepath.Join(b.TempDir(), "leases.db")
			fillBolt(b, path, n)
			b.ReportAllocs()
			var perLease float64
			for b.Loop() {
				runtime.GC()
				var before runtime.MemStats
				runtime.ReadMemStats(&before)
				s, err := Open(path)
				if err != nil {
					b.Fatal(err)
				}
				m, err := lease.NewManager(lease.Config{Store: s, Backend: nopBackend{}})
				if err != nil {
					b.Fatal(err)
				}
				if err := m.Load(context.Background()); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				runtime.GC()
				var after runtime.MemStats
				runtime.ReadMemStats(&after)
				perLease = float64(after.HeapAlloc-before.HeapAlloc) / float64(n)
				runtime.KeepAlive(m)
				s.Close()
				b.StartTimer()
			}
			b.ReportMetric(perLease, "heapB/lease")
		})
	}
}
