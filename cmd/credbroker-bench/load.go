package main

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// loadResult is one closed-loop run: every operation's latency, the
// failures and the wall time from the first start to the last finish.
type loadResult struct {
	lat      latencies
	errors   int
	firstErr error
	wall     time.Duration
	// cpu is the user+system CPU time this process spent during the run
	// (client and, for broker scenarios, broker together).
	cpu time.Duration
}

// processCPU is the CPU time this process has used so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// errStop from an op ends its worker without counting as a failure.
var errStop = errors.New("stop")

// runLoad runs op n times from conc workers, each starting its next
// operation as soon as the previous one returns (closed loop). op gets the
// worker number and the operation's index.
func runLoad(ctx context.Context, n, conc int, op func(ctx context.Context, worker, i int) error) loadResult {
	var (
		next  atomic.Int64
		mu    sync.Mutex
		res   loadResult
		wg    sync.WaitGroup
		start = time.Now()
		cpu0  = processCPU()
	)
	res.lat = make(latencies, 0, n)
	for w := range conc {
		wg.Go(func() {
			local := make(latencies, 0, n/conc+1)
			var errs int
			var first error
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= n {
					break
				}
				t := time.Now()
				err := op(ctx, w, i)
				d := time.Since(t)
				if err == errStop {
					break
				}
				if err != nil {
					errs++
					if first == nil {
						first = err
					}
					continue
				}
				local = append(local, d)
			}
			mu.Lock()
			res.lat = append(res.lat, local...)
			res.errors += errs
			if res.firstErr == nil {
				res.firstErr = first
			}
			mu.Unlock()
		})
	}
	wg.Wait()
	res.wall = time.Since(start)
	res.cpu = processCPU() - cpu0
	return res
}

// fill sets row's latency, throughput and CPU figures.
func (res loadResult) fill(row *Row) {
	res.lat.fill(row, res.wall)
	if len(res.lat) > 0 && res.cpu > 0 {
		if row.Extra == nil {
			row.Extra = map[string]float64{}
		}
		row.Extra["process_cpu_ms_per_op"] = round2(float64(res.cpu) / float64(time.Millisecond) / float64(len(res.lat)))
	}
}

// merge adds other (another round of the same measurement) to res.
func (res *loadResult) merge(other loadResult) {
	res.lat = append(res.lat, other.lat...)
	res.errors += other.errors
	res.wall += other.wall
	res.cpu += other.cpu
	if res.firstErr == nil {
		res.firstErr = other.firstErr
	}
}
