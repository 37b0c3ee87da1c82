#!/usr/bin/env bash
# Runs the benchmarks of issue 5 and prints one table (also written to
# bench.json): the go test benchmarks of the in-memory parts (expiry heap at
# 1,000,000 leases, durable writes), then cmd/credbroker-bench, which
# measures the broker side by side with the raw SQL floor against a
# throwaway PostgreSQL that this script starts and removes, whatever happens.
# A second throwaway server, configured alike, holds the lease stores of the
# ha scenario (issue 10: brokers sharing a lease store in PostgreSQL), apart
# from the server where the users are created, as a deployment has them.
#
# The cluster is configured as a production server would be where it
# matters for the comparison: fsync and synchronous_commit on (the floor pays
# PostgreSQL's own commit flush, as the broker pays its lease store's), no
# statement logging (the bare floor's CREATE ROLE carries a plaintext
# password; its sessions also turn statement logging off themselves).
# Extra arguments go to credbroker-bench (e.g. -scale 0.1 for a quick look,
# -only issue).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
mkdir -p .cache

PGDIR="$PWD/.cache/pg-bench-$$"
STOREDIR="$PWD/.cache/pg-bench-store-$$"
cleanup() {
	scripts/pg-throwaway.sh stop "$PGDIR" >/dev/null 2>&1 || true
	scripts/pg-throwaway.sh stop "$STOREDIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT

echo "== go build"
go build -o .cache/credbroker-bench ./cmd/credbroker-bench

echo "== go test -bench (lease: expiry heap at 1M entries, durable writes)"
go test -run '^$' -bench 'Queue|BoltPut|IssueRevokeStore' -benchmem -count 1 ./lease/... | tee .cache/bench-go.txt

echo "== starting throwaway PostgreSQL (data, and lease store for the ha scenario)"
export PG_THROWAWAY_CONF=$'max_connections = 300\nlog_statement = none\nfsync = on\nsynchronous_commit = on\nfull_page_writes = on'
scripts/pg-throwaway.sh start "$STOREDIR" >/dev/null
CREDBROKER_BENCH_STORE_DSN=$(. "$STOREDIR/env" && echo "$CREDBROKER_TEST_PG_DSN")
export CREDBROKER_BENCH_STORE_DSN
eval "$(scripts/pg-throwaway.sh start "$PGDIR")"

echo "== credbroker-bench"
.cache/credbroker-bench -out bench.json -gobench .cache/bench-go.txt "$@"

echo "== bench done in $(( $(date +%s) - start ))s; figures in bench.json"
