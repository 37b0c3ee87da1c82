#!/usr/bin/env bash
# promtool.sh prints the path of a promtool binary, fetching one first if
# there is none. Only that path goes to stdout; progress goes to stderr:
#
#   PROMTOOL=$(scripts/promtool.sh)
#
# Order: promtool on PATH; the copy cached in
# ${CREDBROKER_TOOLS_CACHE:-$HOME/.cache/credbroker}/promtool (outside the
# checkout, shared by every clone on this machine); else the Debian
# package's binary, extracted without installing the package (installing
# it would start a Prometheus server on 0.0.0.0:9090): `apt-get download
# prometheus` and `dpkg-deb -x`. `go install .../cmd/promtool` works too
# but compiles Prometheus with every service-discovery client (over 30
# minutes on 2 cores), so it is not used.
set -euo pipefail

cache=${CREDBROKER_TOOLS_CACHE:-$HOME/.cache/credbroker}/promtool
log() { echo "promtool.sh: $*" >&2; }

works() { "$1" --version >/dev/null 2>&1; }

if p=$(command -v promtool) && works "$p"; then
	echo "$p"; exit 0
fi
if works "$cache/promtool"; then
	echo "$cache/promtool"; exit 0
fi

command -v apt-get >/dev/null || { log "no promtool on PATH and no apt-get to fetch one; install Prometheus' promtool"; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp" # apt's _apt user writes the download
log "fetching promtool from Debian's prometheus package (not installed, only unpacked)"
if ! (cd "$tmp" && apt-get download prometheus >&2 2>/dev/null); then
	log "apt-get download failed; updating the package lists first"
	[[ $(id -u) == 0 ]] || { log "apt-get update needs root"; exit 1; }
	apt-get update >&2
	(cd "$tmp" && apt-get download prometheus >&2)
fi
dpkg-deb -x "$tmp"/prometheus_*.deb "$tmp/x"
mkdir -p "$cache"
install -m 0755 "$tmp/x/usr/bin/promtool" "$cache/promtool.new"
mv "$cache/promtool.new" "$cache/promtool"
works "$cache/promtool" || { log "the extracted promtool does not run"; exit 1; }
log "$("$cache/promtool" --version 2>&1 | head -1)"
echo "$cache/promtool"
