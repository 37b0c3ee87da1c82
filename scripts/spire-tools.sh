#!/usr/bin/env bash
# spire-tools.sh prints the directory holding spire-server and spire-agent
# v1.13.3, building them first if they are missing. Only that directory goes to
# stdout; progress goes to stderr, so a caller can do
#
#   CREDBROKER_TEST_SPIRE_BIN=$(scripts/spire-tools.sh)
#
# The binaries are cached in ${CREDBROKER_TOOLS_CACHE:-$HOME/.cache/credbroker}/spire-v1.13.3,
# outside the checkout, so every clone on this machine reuses one build. A
# build left in the checkout's .cache/tools/spire-v1.13.3 is copied instead of
# rebuilding.
#
# Why build: SPIRE publishes no Go-installable version (the module proxy does
# not list SPIRE's tags, so `go install ...@v1.13.3` fails), but
# `go mod download` of the exact version works. The build takes about 10
# minutes on 2 cores; it runs under nice and at most once at a time (flock).
set -euo pipefail

readonly SPIRE_VERSION=v1.13.3
readonly SPIRE_MODULE=github.com/spiffe/spire

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${CREDBROKER_TOOLS_CACHE:-$HOME/.cache/credbroker}
dest=$cache/spire-$SPIRE_VERSION
in_checkout=$repo/.cache/tools/spire-$SPIRE_VERSION

log() { echo "spire-tools: $*" >&2; }
die() { log "error: $*"; exit 1; }

# complete DIR: both binaries are there, run, and report exactly version
# 1.13.3 (a build without release ldflags says "1.13.3-dev-unk"; one tagged
# "v1.13.3" makes spire-server panic at start, since its datastore parses the
# tag as semver).
complete() {
	local d=$1 bin out
	for bin in spire-server spire-agent; do
		[[ -x $d/$bin ]] || return 1
		out=$("$d/$bin" --version 2>&1) || return 1
		[[ $out == "${SPIRE_VERSION#v}" ]] || return 1
	done
}

if complete "$dest"; then
	echo "$dest"
	exit 0
fi

command -v go >/dev/null || die "go is not on PATH"
command -v flock >/dev/null || die "flock is not on PATH (apt-get install util-linux)"

mkdir -p "$cache"
exec 9>"$cache/.spire-$SPIRE_VERSION.lock"
if ! flock -n 9; then
	log "another spire-tools.sh is building SPIRE $SPIRE_VERSION; waiting for it"
	flock 9
fi
# The other holder of the lock may have finished the job.
if complete "$dest"; then
	echo "$dest"
	exit 0
fi

work=$(mktemp -d "$cache/.spire-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir "$work/bin"

if complete "$in_checkout"; then
	log "copying SPIRE $SPIRE_VERSION from $in_checkout"
	cp "$in_checkout/spire-server" "$in_checkout/spire-agent" "$work/bin/"
else
	[[ -d $in_checkout ]] && log "ignoring $in_checkout: not a working SPIRE $SPIRE_VERSION build"
	log "building spire-server and spire-agent $SPIRE_VERSION into $dest (about 10 minutes on 2 cores; once per machine)"
	[[ $(go env CGO_ENABLED) == 1 ]] ||
		die "cgo is disabled; SPIRE's SQLite datastore needs it (CGO_ENABLED=1 and gcc)"
	# From the empty work directory, so no go.mod or go.sum is touched.
	json=$(cd "$work" && GOFLAGS= GOWORK=off go mod download -json "$SPIRE_MODULE@$SPIRE_VERSION") ||
		die "go mod download $SPIRE_MODULE@$SPIRE_VERSION failed: $json"
	src=$(sed -n 's/^[[:space:]]*"Dir": "\(.*\)",\{0,1\}$/\1/p' <<<"$json")
	[[ -n $src && -d $src ]] || die "go mod download printed no module directory: $json"
	# The module cache is read-only and go build wants a writable module
	# root; build a copy.
	cp -R "$src" "$work/src"
	chmod -R u+w "$work/src"
	start=$(date +%s)
	(
		cd "$work/src"
		# -buildvcs=false: the copy is not a git checkout.
		GOFLAGS=-buildvcs=false GOWORK=off nice -n 10 go build -trimpath \
			-ldflags "-X $SPIRE_MODULE/pkg/common/version.gittag=${SPIRE_VERSION#v}" \
			-o "$work/bin/" ./cmd/spire-server ./cmd/spire-agent
	) >&2 || die "go build of SPIRE $SPIRE_VERSION failed (see above)"
	log "built in $(($(date +%s) - start))s"
fi

complete "$work/bin" || die "the binaries in $work/bin do not report version $SPIRE_VERSION"
rm -rf "$dest"
mv "$work/bin" "$dest"
log "SPIRE $SPIRE_VERSION is in $dest"
echo "$dest"
