# shellcheck shell=bash
# demo.sh: what scripts/demo.sh, demo-agent.sh and demo-ha.sh share.
# Sourced, not run.

THROWAWAY_NAME=demo
# shellcheck source=throwaway.sh
. "$(dirname "${BASH_SOURCE[0]}")/throwaway.sh"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
say() { printf '    %s\n' "$*"; }
fail() { printf '    UNEXPECTED: %s\n' "$*"; exit 1; }

# free_port prints a free 127.0.0.1 port.
free_port() { pick_port || { echo "no free port found" >&2; return 1; }; }

# stop_pids sends SIGTERM to each of its arguments that is a running pid
# and waits for it.
stop_pids() {
	local pid
	for pid in "$@"; do
		if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
			kill -TERM "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
}

# wait_for <seconds> <what> <command...>: poll until the command succeeds.
wait_for() {
	local secs=$1 what=$2
	shift 2
	for _ in $(seq 1 $((secs * 10))); do
		if "$@" >/dev/null 2>&1; then return 0; fi
		sleep 0.1
	done
	fail "no $what after ${secs}s"
}
