#!/usr/bin/env bash
# make test-faults: the full fault suite (issue 4) with its summary table.
# make test runs the same tests with fewer iterations and a shorter outage.
set -euo pipefail
cd "$(dirname "$0")/.."
PGDIR="$PWD/.cache/pg-faults-$$"
MYDIR="$PWD/.cache/mariadb-faults-$$"
cleanup() {
	scripts/pg-throwaway.sh stop "$PGDIR" >/dev/null 2>&1 || true
	scripts/mariadb-throwaway.sh stop "$MYDIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT
eval "$(scripts/pg-throwaway.sh start "$PGDIR")"
eval "$(scripts/mariadb-throwaway.sh start "$MYDIR")"

export CREDBROKER_FAULT_ITERATIONS=${CREDBROKER_FAULT_ITERATIONS:-50}
export CREDBROKER_FAULT_OUTAGE=${CREDBROKER_FAULT_OUTAGE:-30s}
# The HA suite's lease-store outage (three replicas on one store).
export CREDBROKER_FAULT_STORE_OUTAGE=${CREDBROKER_FAULT_STORE_OUTAGE:-20s}

echo "== in-process faults (race detector): store write failure, 50 concurrent revokes + expiry, renew vs revoke, clock jump"
go test -race -count=1 -v -run 'TestStoreWriteFailureFailsClosed|TestConcurrentRevokesAndExpiry|TestRenewRacingRevoke|TestMissingOrCorruptStore' ./broker/ | grep -E '^(---|ok|FAIL|PASS)|_test.go'
go test -race -count=1 -v -run 'TestOverdueStormRateLimited|TestConcurrentRevokeCoalesces|TestRenewRevokeRace|TestRetryForever' ./lease/ | grep -E '^(---|ok|FAIL|PASS)'

echo "== the broker binary under kill -9, database outage ($CREDBROKER_FAULT_OUTAGE) and store corruption; $CREDBROKER_FAULT_ITERATIONS iterations"
echo "   and three replicas on one PostgreSQL lease store: kills at failpoints, store outage ($CREDBROKER_FAULT_STORE_OUTAGE), partition"
go test -race -count=1 -v -timeout 40m -run 'TestFault|TestHA' ./cmd/credbroker/ | grep -vE '^=== (RUN|PAUSE|CONT)'
