#!/usr/bin/env bash
# Runs every native Go fuzz target in turn for FUZZTIME each (default 1m)
# and prints a table of targets, execs and outcome. A target that finds a
# failure writes its input to PKG/testdata/fuzz/FuzzX/ (commit it once the
# bug is fixed: plain `go test` then replays it) and makes the run fail.
#   scripts/fuzz.sh                 every target, FUZZTIME=1m
#   FUZZTIME=30s scripts/fuzz.sh    shorter
#   scripts/fuzz.sh FuzzQuoting     only targets whose name matches (grep -E)
#   FUZZPARALLEL=1 scripts/fuzz.sh  one fuzzing worker per target (default: GOMAXPROCS)
set -uo pipefail
cd "$(dirname "$0")/.."
FUZZTIME=${FUZZTIME:-1m}
parallel=()
if [[ -n "${FUZZPARALLEL:-}" ]]; then parallel=(-parallel="$FUZZPARALLEL"); fi
only=${1:-.}

# package and target, one per line: every func FuzzX in a _test.go file.
mapfile -t targets < <(grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]+' . |
	grep -v '^./.cache/' | sed -E 's#^(.*)/[^/]+_test\.go:func (Fuzz.*)$#\1 \2#' | sort -u | grep -E -- "$only")
if [[ ${#targets[@]} -eq 0 ]]; then
	echo "no fuzz target matches $only" >&2; exit 1
fi

rows=() failed=0
for t in "${targets[@]}"; do
	pkg=${t% *} name=${t#* }
	echo "== $pkg $name ($FUZZTIME)"
	log=$(mktemp)
	go test -timeout=0 "${parallel[@]}" -run='^$' -fuzz="^${name}\$" -fuzztime="$FUZZTIME" "$pkg" >"$log" 2>&1
	rc=$?
	grep -vE '^fuzz: elapsed: ' "$log" | tail -n 40
	# The last progress line: "fuzz: elapsed: 1m0s, execs: 1234567 (20576/sec), new interesting: 3 (total: 15)"
	execs=$(grep -Eo 'fuzz: elapsed: [^,]+, execs: [0-9]+' "$log" | tail -1 | sed -E 's/.*execs: //')
	result=ok
	if [[ $rc -ne 0 ]]; then
		result="FAIL (see $pkg/testdata/fuzz/$name)"; failed=1
	fi
	rows+=("$(printf '%-28s %-20s %12s  %s' "${pkg#./}" "$name" "${execs:-?}" "$result")")
	rm -f "$log"
done

echo
printf '%-28s %-20s %12s  %s\n' package target execs result
for r in "${rows[@]}"; do echo "$r"; done
exit $failed
