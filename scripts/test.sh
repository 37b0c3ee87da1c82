#!/usr/bin/env bash
# Runs every test. Starts a throwaway PostgreSQL with scram-sha-256 host auth
# (the machine's own service trusts every loopback login, which would prove
# nothing about passwords) and removes it afterwards, whatever happens.
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

PGDIR="$PWD/.cache/pg-test-$$"
cleanup() { scripts/pg-throwaway.sh stop "$PGDIR" >/dev/null 2>&1 || true; }
trap cleanup EXIT
echo "== starting throwaway PostgreSQL"
eval "$(scripts/pg-throwaway.sh start "$PGDIR")"

echo "== go test -race"
# -count=1: never report a cached pass for tests that talk to real servers.
go test -race -count=1 -timeout 20m ./...

echo "== go test -race -tags failpoints (crash tests that kill a child process at each failpoint)"
go test -race -count=1 -timeout 10m -tags failpoints ./lease/... ./internal/failpoint/...

echo "== all tests passed in $(( $(date +%s) - start ))s"
