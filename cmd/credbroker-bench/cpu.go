package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of /proc's CPU times: 100 on every Linux
// the bench runs on (Go has no sysconf without cgo).
const clockTicks = 100

// cpuMeter reads where the CPU went while a row was measured: the whole
// machine (/proc/stat), this process (the in-process brokers and their
// clients) and each PostgreSQL server (its postmaster and every child).
// The servers are throwaways on this machine (scripts/pg-throwaway.sh);
// a server whose postmaster is not found here is reported as unknown.
type cpuMeter struct {
	names       []string // "data pg", "store pg"
	postmasters []int    // 0: not found
}

// newCPUMeter finds the postmaster of each server, named by names.
func newCPUMeter(ctx context.Context, names []string, servers []*pgEnv) *cpuMeter {
	m := &cpuMeter{names: names}
	for _, e := range servers {
		pid, _ := postmasterPID(ctx, e)
		m.postmasters = append(m.postmasters, pid)
	}
	return m
}

// postmasterPID reads the first line of the server's postmaster.pid or,
// if this user may not read the data directory, takes the parent of one of
// its backends.
func postmasterPID(ctx context.Context, e *pgEnv) (int, error) {
	var dir string
	if err := e.pool.QueryRow(ctx, "SHOW data_directory").Scan(&dir); err == nil {
		if b, err := os.ReadFile(filepath.Join(dir, "postmaster.pid")); err == nil {
			line, _, _ := strings.Cut(string(b), "\n")
			if pid, err := strconv.Atoi(strings.TrimSpace(line)); err == nil {
				return pid, nil
			}
		}
	}
	var backend int
	if err := e.pool.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&backend); err != nil {
		return 0, fmt.Errorf("postmaster: %w", err)
	}
	st, err := readProcStat(strconv.Itoa(backend))
	if err != nil {
		return 0, fmt.Errorf("postmaster: %w", err)
	}
	return st.ppid, nil
}

// cpuSample is what had been spent at one instant.
type cpuSample struct {
	at          time.Time
	busy, total uint64 // /proc/stat ticks over all CPUs
	self        time.Duration
	servers     []time.Duration // per cpuMeter.names; -1: unknown
}

func (m *cpuMeter) sample() cpuSample {
	s := cpuSample{at: time.Now(), self: processCPU(), servers: make([]time.Duration, len(m.postmasters))}
	s.busy, s.total = machineTicks()
	for i := range s.servers {
		s.servers[i] = -1
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return s
	}
	var ticks = make([]uint64, len(m.postmasters))
	var found = make([]bool, len(m.postmasters))
	for _, p := range procs {
		if p.Name()[0] < '0' || p.Name()[0] > '9' {
			continue
		}
		st, err := readProcStat(p.Name())
		if err != nil {
			continue // gone since the listing
		}
		for i, pm := range m.postmasters {
			switch {
			case pm == 0:
			case st.pid == pm:
				// The postmaster's children that exited since the last
				// sample are in its cutime and cstime (it waits for them).
				ticks[i] += st.utime + st.stime + st.cutime + st.cstime
				found[i] = true
			case st.ppid == pm:
				ticks[i] += st.utime + st.stime
			}
		}
	}
	for i := range ticks {
		if found[i] {
			s.servers[i] = time.Duration(ticks[i]) * time.Second / clockTicks
		}
	}
	return s
}

// machineTicks reads the first line of /proc/stat: busy is user, nice,
// system, irq, softirq and steal; total adds idle and iowait (guest time is
// already in user).
func machineTicks() (busy, total uint64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0
	}
	v := make([]uint64, 8)
	for i := range v {
		v[i], _ = strconv.ParseUint(f[i+1], 10, 64)
	}
	user, nice, system, idle, iowait, irq, softirq, steal := v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
	busy = user + nice + system + irq + softirq + steal
	return busy, busy + idle + iowait
}

// procStat holds the fields of /proc/PID/stat the meter needs, in ticks.
type procStat struct {
	pid, ppid                    int
	utime, stime, cutime, cstime uint64
}

func readProcStat(pid string) (procStat, error) {
	b, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return procStat{}, err
	}
	// The command name, in parentheses, may hold spaces and parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("/proc/%s/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state): ppid is field 4, utime..cstime 14..17.
	if len(f) < 15 {
		return procStat{}, fmt.Errorf("/proc/%s/stat: %d fields", pid, len(f))
	}
	st := procStat{}
	st.pid, _ = strconv.Atoi(pid)
	st.ppid, _ = strconv.Atoi(f[1])
	for j, p := range []*uint64{&st.utime, &st.stime, &st.cutime, &st.cstime} {
		*p, _ = strconv.ParseUint(f[11+j], 10, 64)
	}
	return st, nil
}

// cpuUse adds up the CPU spent over the measured intervals of one row.
type cpuUse struct {
	wall        time.Duration
	busy, total uint64
	self        time.Duration
	servers     []time.Duration // -1: unknown
}

// add counts the interval from a to b.
func (u *cpuUse) add(a, b cpuSample) {
	u.wall += b.at.Sub(a.at)
	u.busy += b.busy - a.busy
	u.total += b.total - a.total
	u.self += b.self - a.self
	if u.servers == nil {
		u.servers = make([]time.Duration, len(a.servers))
	}
	for i := range a.servers {
		if a.servers[i] < 0 || b.servers[i] < 0 || u.servers[i] < 0 {
			u.servers[i] = -1
			continue
		}
		u.servers[i] += b.servers[i] - a.servers[i]
	}
}

// cores is d spent over the measured wall time, in cores.
func (u cpuUse) cores(d time.Duration) float64 {
	if u.wall <= 0 {
		return 0
	}
	return round2(float64(d) / float64(u.wall))
}

// fill puts the figures in row's extras and returns them as a note, e.g.
// "cpu 97% busy (1.94 of 2 cores): bench process 1.21, data pg 0.55, store
// pg 0.18, rest of the machine 0.00 cores; CPU per op: …", the per-op
// figures from row's ops/s (fill it first). The bench process is the in-process
// brokers and their clients together; the rest is whatever else ran.
func (u cpuUse) fill(m *cpuMeter, row *Row) string {
	if row.Extra == nil {
		row.Extra = map[string]float64{}
	}
	if u.total == 0 || u.wall <= 0 {
		return "cpu use unknown (no /proc/stat)"
	}
	busy := float64(u.busy) / float64(u.total)
	ncpu := float64(runtime.NumCPU())
	row.Extra["cpu_busy"] = round2(busy)
	note := fmt.Sprintf("cpu %.0f%% busy (%.2f of %.0f cores): bench process %.2f", 100*busy, busy*ncpu, ncpu, u.cores(u.self))
	row.Extra["bench_process_cores"] = u.cores(u.self)
	rest, restKnown := busy*ncpu-u.cores(u.self), true
	for i, name := range m.names {
		if i >= len(u.servers) || u.servers[i] < 0 {
			note += fmt.Sprintf(", %s ?", name)
			restKnown = false
			continue
		}
		c := u.cores(u.servers[i])
		row.Extra[strings.ReplaceAll(name, " ", "_")+"_cores"] = c
		note += fmt.Sprintf(", %s %.2f", name, c)
		rest -= c
	}
	if restKnown {
		rest = round2(max(rest, 0))
		row.Extra["rest_cores"] = rest
		note += fmt.Sprintf(", rest of the machine %.2f", rest)
	}
	note += " cores"
	if row.OpsPerS > 0 {
		// Where each operation's CPU went: on a saturated machine,
		// throughput is the cores left to the bench over this sum.
		perOp := func(d time.Duration) float64 { return round2(u.cores(d) / row.OpsPerS * 1000) }
		note += fmt.Sprintf("; CPU per op: bench process %.2f ms", perOp(u.self))
		for i, name := range m.names {
			if i < len(u.servers) && u.servers[i] >= 0 {
				note += fmt.Sprintf(", %s %.2f", name, perOp(u.servers[i]))
			}
		}
	}
	return note
}
