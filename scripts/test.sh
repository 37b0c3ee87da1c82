#!/usr/bin/env bash
# Runs every test. Starts a throwaway PostgreSQL with scram-sha-256 host auth
# (the machine's own service trusts every loopback login, which would prove
# nothing about passwords) and a throwaway MariaDB whose root has a random
# password (the machine's service lets root in without one), each logging
# every statement, and removes both afterwards, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.cache/*'))
if [[ -n "$unformatted" ]]; then
	echo "gofmt needed on:"; echo "$unformatted"; exit 1
fi

echo "== go vet"
go vet ./...

echo "== promtool: deploy/monitoring's alert rules (syntax, then their unit tests)"
PROMTOOL=$(scripts/promtool.sh)
(cd deploy/monitoring && "$PROMTOOL" check rules credbroker-alerts.yaml && "$PROMTOOL" test rules credbroker-alerts.test.yaml)

PGDIR="$PWD/.cache/pg-test-$$"
MYDIR="$PWD/.cache/mariadb-test-$$"
cleanup() {
	scripts/pg-throwaway.sh stop "$PGDIR" >/dev/null 2>&1 || true
	scripts/mariadb-throwaway.sh stop "$MYDIR" >/dev/null 2>&1 || true
}
trap cleanup EXIT
echo "== starting throwaway PostgreSQL"
eval "$(scripts/pg-throwaway.sh start "$PGDIR")"
echo "== starting throwaway MariaDB"
eval "$(scripts/mariadb-throwaway.sh start "$MYDIR")"

echo "== SPIRE v1.13.3 server and agent (built once into ~/.cache/credbroker, about 10 min cold)"
CREDBROKER_TEST_SPIRE_BIN=$(scripts/spire-tools.sh)
export CREDBROKER_TEST_SPIRE_BIN

echo "== go test -race -v (each test's name and result; the whole output in .cache/test-go.log)"
# -count=1: never report a cached pass for tests that talk to real servers.
# plugins/mysql, the SPIRE tests and the fault suite (with the HA one: three
# broker processes on one PostgreSQL lease store) run on their own below.
slow='TestSPIRE|TestWatchRealSPIRE|TestFault|TestHA'
mysql_broker='TestPostgresAndMariaDBExpire|TestMariaDBIssueRenewRevoke|TestParseConfigMySQL'
mkdir -p .cache
if ! go test -race -count=1 -timeout 20m -v -skip "$slow|$mysql_broker" $(go list ./... | grep -v '/plugins/mysql$') >.cache/test-go.log 2>&1; then
	grep -E '^(--- |ok |FAIL)|^\s+[A-Za-z0-9_]+_test\.go:[0-9]+: ' .cache/test-go.log || true
	echo "== go test failed; the end of .cache/test-go.log:"
	tail -n 60 .cache/test-go.log
	exit 1
fi
grep -E '^(--- |ok )' .cache/test-go.log
if grep -q -- '--- SKIP' .cache/test-go.log; then
	echo "(skipped tests above are listed with the reason they give: none may be a database, TLS or SPIRE test)"
fi

echo "== go test -race -v: SPIRE integration (real server + agent) and the reduced fault and HA suites (make test-faults runs the full ones)"
go test -race -count=1 -timeout 15m -v -run "$slow" ./broker/ ./cmd/credbroker/ ./identity/spireregistry/ ./internal/spiretest/ |
	grep -E '^(--- |ok |FAIL|PASS$)|^    [a-z_]+_test\.go:[0-9]+: |^(scenario|kill|postgres|mariadb|corrupt|HA:) '

echo "== go test -race -v: MySQL/MariaDB (plugin conformance suite and MySQL cases, broker end to end; a SKIP fails the run)"
if ! out=$(go test -race -count=1 -timeout 10m -v ./plugins/mysql/ 2>&1 &&
	go test -race -count=1 -timeout 10m -v -run "$mysql_broker" ./broker/ 2>&1); then
	echo "$out"; exit 1
fi
grep -E '^(--- |ok )|^    --- [A-Z]+: TestConformance/|^ +(suite|create_test|delete_test|mysql_e2e_test)\.go:[0-9]+: ' <<<"$out"
if grep -q -- '--- SKIP' <<<"$out"; then
	echo "MySQL tests were skipped:"; grep -- '--- SKIP' <<<"$out"; exit 1
fi

echo "== go test -race -tags failpoints (crash tests that kill a child process at each failpoint)"
go test -race -count=1 -timeout 10m -tags failpoints ./lease/... ./internal/failpoint/...

echo "== deploy/kubernetes: the manifests, decoded strictly with the Kubernetes API types (a module of its own)"
(cd deploy/kubernetes && go vet ./... && go test -count=1 ./...)

# demo runs one of the README's demos (make ARGS) and shows the lines of its
# output that match PATTERN; if it fails, all of its output. The demos never
# print a password.
demo() {
	local pattern=$1 out
	shift
	if ! out=$(make --no-print-directory "$@" 2>&1); then
		echo "$out"; exit 1
	fi
	grep -E "$pattern" <<<"$out"
}

for db in postgres mysql; do
	echo "== make demo DB=$db: the README's first command end to end (issue, log in, refused beyond the grants, revoke, locked out, audited)"
	demo '^ +checked: |^Demo finished' demo DB="$db"
done

echo "== make demo-agent: the README's agent demo (a credential in the app's environment, a rotation, SIGTERM revokes)"
demo '^ +(checked|users in PostgreSQL|agent exit status)|^Demo finished' demo-agent

echo "== make demo-ha: the README's three-replica demo end to end (issue, list, renew on three replicas; kill -9 one; expiry revoked by another)"
demo 'dropped .* after its expiry|revoked by replica|^Demo finished' demo-ha

echo "== all tests passed in $(( $(date +%s) - start ))s"
