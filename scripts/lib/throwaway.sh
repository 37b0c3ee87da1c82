# shellcheck shell=bash
# throwaway.sh: what scripts/pg-throwaway.sh and scripts/mariadb-throwaway.sh
# share. Sourced, not run: the sourcing script sets THROWAWAY_NAME (its log
# prefix) first.

log() { printf '%s: %s\n' "$THROWAWAY_NAME" "$*" >&2; }
die() { log "error: $*"; exit 1; }

is_root() { [[ $(id -u) -eq 0 ]]; }

# ensure_owner creates system user $1, which owns the server's files, when
# running as root (servers refuse to run as root).
ensure_owner() {
	is_root || return 0
	if ! id -u "$1" >/dev/null 2>&1; then
		log "creating system user $1"
		useradd --system --user-group --no-create-home --shell /usr/sbin/nologin "$1"
	fi
}

# random_password has no characters that need escaping in a URL, a DSN, SQL
# or a shell.
random_password() { od -An -tx1 -N24 /dev/urandom | tr -d ' \n'; }

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# pick_port prints a free 127.0.0.1 port from 20000 up to the start of the
# kernel's ephemeral range (net.ipv4.ip_local_port_range, 32768 by default).
# A port inside that range can be taken, between this check and the server's
# bind, by any outgoing connection's local end: a broker's own connection to
# its store did that to a replica in a CI run.
pick_port() {
	local p i low=32768
	if [[ -r /proc/sys/net/ipv4/ip_local_port_range ]]; then
		read -r low _ </proc/sys/net/ipv4/ip_local_port_range
	fi
	((low > 21000)) || low=60000
	for i in $(seq 1 50); do
		p=$((20000 + RANDOM % (low - 20000)))
		if ! port_in_use "$p"; then
			echo "$p"
			return 0
		fi
	done
	return 1
}

abs_dir() { (cd "$1" && pwd -P); }
