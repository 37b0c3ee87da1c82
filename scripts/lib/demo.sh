# shellcheck shell=bash
# demo.sh: what scripts/demo.sh, demo-agent.sh and demo-ha.sh share.
# Sourced, not run.

THROWAWAY_NAME=demo
# shellcheck source=throwaway.sh
. "$(dirname "${BASH_SOURCE[0]}")/throwaway.sh"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
say() { printf '    %s\n' "$*"; }
fail() { printf '    UNEXPECTED: %s\n' "$*"; exit 1; }

# free_port prints a free 127.0.0.1 port, never one it printed before in
# this demo (two picks made before either server binds could otherwise be
# the same port): the ports printed are kept in $DEMO/.ports.
free_port() {
	local p i
	for i in 1 2 3 4 5 6 7 8 9 10; do
		p=$(pick_port) || break
		if ! grep -qx "$p" "$DEMO/.ports" 2>/dev/null; then
			echo "$p" >>"$DEMO/.ports"
			echo "$p"
			return 0
		fi
	done
	echo "no free port found" >&2
	return 1
}

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

# admin_psql runs psql as the throwaway server's admin (start_shop_pg).
admin_psql() { PGPASSWORD="$ADMIN_PW" psql -X -q -v ON_ERROR_STOP=1 -h "$PGHOST" -p "$PGPORT" -U postgres "$@"; }

# start_shop_pg DIR starts a throwaway PostgreSQL in DIR (its CREDBROKER_TEST_PG_*
# exported, PGHOST, PGPORT and ADMIN_PW set), writes the admin password to
# $DEMO/pg-admin.password for the broker (never inline in config), and
# creates database shop with table orders and group role orders_reader,
# which may read it.
start_shop_pg() {
	eval "$(scripts/pg-throwaway.sh start "$1")"
	PGHOST=$CREDBROKER_TEST_PG_HOST PGPORT=$CREDBROKER_TEST_PG_PORT
	ADMIN_PW=$(sed -n 's|^postgres://postgres:\([^@]*\)@.*|\1|p' <<<"$CREDBROKER_TEST_PG_DSN")
	(umask 077 && printf '%s\n' "$ADMIN_PW" >"$DEMO/pg-admin.password")
	admin_psql -d postgres -c "CREATE DATABASE shop"
	admin_psql -d shop <<'SQL'
CREATE TABLE orders (id int PRIMARY KEY, item text);
INSERT INTO orders VALUES (1, 'coffee'), (2, 'tea'), (3, 'cake');
CREATE ROLE orders_reader NOLOGIN;
GRANT SELECT ON orders TO orders_reader;
SQL
}
