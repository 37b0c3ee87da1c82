#!/usr/bin/env bash
# pg-throwaway.sh: a disposable PostgreSQL cluster for integration tests.
#
#   eval "$(scripts/pg-throwaway.sh start .cache/pg-test)"
#   go test ./...
#   scripts/pg-throwaway.sh stop .cache/pg-test
#
# start prints `export` lines (also written to DIR/env) for
# CREDBROKER_TEST_PG_DSN, _HOST, _PORT and _LOG. The cluster uses SCRAM for TCP
# logins (the system cluster on 5432 trusts everyone, which would make every
# password test pass vacuously) and log_statement=all, so tests can prove that
# no plaintext password ever reaches the server.
#
# PG_THROWAWAY_CONF, if set, holds extra postgresql.conf lines appended after
# the defaults (later settings win), e.g. for benchmarks:
#   PG_THROWAWAY_CONF=$'max_connections = 300\nlog_statement = none'
set -euo pipefail

readonly MARKER=.pg-throwaway
readonly PG_USER=postgres

THROWAWAY_NAME=pg-throwaway
# shellcheck source=lib/throwaway.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/throwaway.sh"

usage() {
	cat >&2 <<'EOF'
usage: pg-throwaway.sh start DIR   create and start a cluster in DIR, print export lines
       pg-throwaway.sh stop DIR    stop it and remove DIR (idempotent)
       pg-throwaway.sh pause DIR   stop the server, keep its data (outage tests)
       pg-throwaway.sh resume DIR  start a paused server again on the same port
EOF
	exit 2
}

# as_owner runs a command as the cluster owner: initdb and postgres refuse to
# run as root.
as_owner() {
	if is_root; then
		runuser -u "$PG_USER" -- "$@"
	else
		"$@"
	fi
}

has_server() { [[ -x $1/initdb && -x $1/pg_ctl && -x $1/postgres ]]; }

find_bindir() {
	local d
	if command -v pg_config >/dev/null 2>&1; then
		d=$(pg_config --bindir 2>/dev/null || true)
		if [[ -n $d ]] && has_server "$d"; then
			echo "$d"
			return 0
		fi
	fi
	# Newest version first.
	while read -r d; do
		if [[ -n $d ]] && has_server "$d"; then
			echo "$d"
			return 0
		fi
	done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r)
	if command -v initdb >/dev/null 2>&1; then
		d=$(dirname "$(command -v initdb)")
		if has_server "$d"; then
			echo "$d"
			return 0
		fi
	fi
	return 1
}

ensure_bindir() {
	local d
	if d=$(find_bindir); then
		echo "$d"
		return 0
	fi
	is_root || die "PostgreSQL server binaries not found (looked at pg_config --bindir, /usr/lib/postgresql/*/bin, PATH); install the 'postgresql' package"
	log "PostgreSQL server binaries not found; installing the postgresql package"
	DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >&2
	d=$(find_bindir) || die "postgresql installed but initdb/pg_ctl/postgres still not found"
	echo "$d"
}

# stop_cluster stops a server left in dir, if any, and removes dir. It refuses
# to delete a directory this script did not create.
stop_cluster() {
	local dir=$1 bindir
	[[ -e $dir ]] || return 0
	if [[ ! -e $dir/$MARKER ]]; then
		if [[ -d $dir && -z $(ls -A "$dir") ]]; then
			rmdir "$dir"
			return 0
		fi
		die "$dir was not created by pg-throwaway.sh (no $MARKER file); not removing it"
	fi
	if [[ -f $dir/data/postmaster.pid ]]; then
		bindir=$(find_bindir) || die "cannot find pg_ctl to stop the server in $dir"
		if as_owner "$bindir/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
			as_owner "$bindir/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null ||
				die "pg_ctl stop failed for $dir"
		fi
	fi
	rm -rf -- "$dir"
}

cmd_start() {
	local dir=$1 bindir pw port attempt pwfile logfile

	bindir=$(ensure_bindir)
	ensure_owner "$PG_USER"

	mkdir -p -- "$dir"
	dir=$(abs_dir "$dir")
	# A leftover cluster from an interrupted run is stopped and replaced.
	if [[ -n $(ls -A "$dir") ]]; then
		stop_cluster "$dir"
		mkdir -p -- "$dir"
	fi
	touch "$dir/$MARKER"
	chmod 700 "$dir"
	if is_root; then
		chown -R "$PG_USER:" "$dir"
		runuser -u "$PG_USER" -- test -w "$dir" ||
			die "user $PG_USER cannot reach $dir (a parent directory is not traversable); use a DIR elsewhere"
	fi

	pw=$(random_password)
	pwfile=$dir/pwfile
	(umask 077 && printf '%s\n' "$pw" >"$pwfile")
	if is_root; then chown "$PG_USER:" "$pwfile"; fi

	# The owner may not be able to read the caller's working directory.
	if ! (cd "$dir" && as_owner "$bindir/initdb" -D "$dir/data" -U postgres \
		--auth-local=trust --auth-host=scram-sha-256 --pwfile="$pwfile" \
		-E UTF8 --locale=C --no-sync >"$dir/initdb.log" 2>&1); then
		rm -f -- "$pwfile"
		cat "$dir/initdb.log" >&2
		die "initdb failed"
	fi
	rm -f -- "$pwfile"

	logfile=$dir/server.log
	for attempt in 1 2 3 4 5; do
		port=$(pick_port) || die "no free port found on 127.0.0.1"
		cat >"$dir/data/postgresql.auto.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
password_encryption = 'scram-sha-256'
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
log_statement = 'all'
log_line_prefix = '%m [%p] %q%u@%d '
log_destination = 'stderr'
logging_collector = off
EOF
		if [[ -n ${PG_THROWAWAY_CONF:-} ]]; then
			printf '%s\n' "$PG_THROWAWAY_CONF" >>"$dir/data/postgresql.auto.conf"
		fi
		if is_root; then chown "$PG_USER:" "$dir/data/postgresql.auto.conf"; fi
		if (cd "$dir" && as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$logfile" -w -t 30 start >/dev/null 2>&1); then
			break
		fi
		# Someone may have taken the port between the check and the bind.
		if grep -q 'could not bind\|Address already in use' "$logfile" 2>/dev/null && [[ $attempt -lt 5 ]]; then
			log "port $port taken, retrying"
			: >"$logfile"
			continue
		fi
		tail -n 20 "$logfile" >&2 || true
		die "server did not start (log: $logfile)"
	done

	local dsn="postgres://postgres:${pw}@127.0.0.1:${port}/postgres?sslmode=disable"
	(
		umask 077
		cat >"$dir/env" <<EOF
export CREDBROKER_TEST_PG_DSN='$dsn'
export CREDBROKER_TEST_PG_HOST='127.0.0.1'
export CREDBROKER_TEST_PG_PORT='$port'
export CREDBROKER_TEST_PG_LOG='$logfile'
EOF
	)
	cat "$dir/env"
	log "PostgreSQL $("$bindir/postgres" --version | awk '{print $3}') listening on 127.0.0.1:$port, data in $dir (stop: $0 stop $dir)"
}

cmd_stop() {
	local dir=$1
	[[ -e $dir ]] || return 0
	stop_cluster "$(abs_dir "$dir")"
	log "stopped and removed $dir"
}

# pause/resume simulate a database outage without losing the cluster.
cmd_pause() {
	local dir bindir
	dir=$(abs_dir "$1")
	[[ -e $dir/$MARKER ]] || die "$dir is not a pg-throwaway cluster"
	bindir=$(find_bindir) || die "cannot find pg_ctl"
	as_owner "$bindir/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null || die "pg_ctl stop failed for $dir"
	log "paused $dir"
}

cmd_resume() {
	local dir bindir
	dir=$(abs_dir "$1")
	[[ -e $dir/$MARKER ]] || die "$dir is not a pg-throwaway cluster"
	bindir=$(find_bindir) || die "cannot find pg_ctl"
	(cd "$dir" && as_owner "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 start >/dev/null) ||
		die "pg_ctl start failed for $dir"
	log "resumed $dir"
}

[[ $# -eq 2 ]] || usage
[[ -n $2 ]] || usage
case $1 in
start) cmd_start "$2" ;;
stop) cmd_stop "$2" ;;
pause) cmd_pause "$2" ;;
resume) cmd_resume "$2" ;;
*) usage ;;
esac
