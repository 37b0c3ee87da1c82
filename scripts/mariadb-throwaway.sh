#!/usr/bin/env bash
# mariadb-throwaway.sh: a disposable MariaDB server for integration tests.
#
#   eval "$(scripts/mariadb-throwaway.sh start .cache/mariadb-test)"
#   go test ./...
#   scripts/mariadb-throwaway.sh stop .cache/mariadb-test
#
# start prints `export` lines (also written to DIR/env) for
# CREDBROKER_TEST_MYSQL_DSN (go-sql-driver format), _HOST, _PORT and _LOG.
# The server listens on a free 127.0.0.1 port only, resolves no host names,
# gives root a random password for TCP logins (the machine's own service lets
# root in without one, which would make every password test pass vacuously)
# and writes every statement it receives to a general query log, so tests can
# prove that no plaintext password ever reaches the server.
set -euo pipefail

readonly MARKER=.mariadb-throwaway
readonly DB_USER=mysql

THROWAWAY_NAME=mariadb-throwaway
# shellcheck source=lib/throwaway.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib/throwaway.sh"

usage() {
	cat >&2 <<'EOF'
usage: mariadb-throwaway.sh start DIR   create and start a server in DIR, print export lines
       mariadb-throwaway.sh stop DIR    stop it and remove DIR (idempotent)
       mariadb-throwaway.sh pause DIR   stop the server, keep its data (outage tests)
       mariadb-throwaway.sh resume DIR  start a paused server again on the same port
EOF
	exit 2
}

find_bin() {
	local name
	for name in "$@"; do
		if command -v "$name" >/dev/null 2>&1; then
			command -v "$name"
			return 0
		fi
		if [[ -x /usr/sbin/$name ]]; then
			echo "/usr/sbin/$name"
			return 0
		fi
	done
	return 1
}

have_binaries() {
	find_bin mariadbd mysqld >/dev/null &&
		find_bin mariadb-install-db mysql_install_db >/dev/null &&
		find_bin mariadb mysql >/dev/null
}

ensure_binaries() {
	have_binaries && return 0
	is_root || die "MariaDB server binaries not found (mariadbd, mariadb-install-db, mariadb); install the 'mariadb-server' package"
	log "MariaDB server binaries not found; installing the mariadb-server package"
	# policy-rc.d keeps the package from starting (and enabling) a system
	# service: tests only ever use the throwaway server.
	DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mariadb-server mariadb-client >&2
	have_binaries || die "mariadb-server installed but mariadbd/mariadb-install-db/mariadb still not found"
}

# server_pid prints the pid of the server running from dir, if any. The pid
# file alone is not trusted: the process must be a mariadbd whose command
# line names this data directory.
server_pid() {
	local dir=$1 pid
	[[ -f $dir/mariadbd.pid ]] || return 1
	pid=$(tr -dc '0-9' <"$dir/mariadbd.pid")
	[[ -n $pid ]] || return 1
	[[ -r /proc/$pid/cmdline ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "--datadir=$dir/data" || return 1
	echo "$pid"
}

# stop_server stops a server left in dir, if any, and removes dir. It refuses
# to delete a directory this script did not create.
stop_server() {
	local dir=$1 pid i
	[[ -e $dir ]] || return 0
	if [[ ! -e $dir/$MARKER ]]; then
		if [[ -d $dir && -z $(ls -A "$dir") ]]; then
			rmdir "$dir"
			return 0
		fi
		die "$dir was not created by mariadb-throwaway.sh (no $MARKER file); not removing it"
	fi
	if pid=$(server_pid "$dir"); then
		kill -TERM "$pid" 2>/dev/null || true
		for i in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$pid" 2>/dev/null; then
			kill -KILL "$pid" 2>/dev/null || true
			sleep 0.2
		fi
	fi
	rm -rf -- "$dir"
}

# admin_sql runs SQL from stdin as the server's root over the Unix socket
# (unix_socket authentication: no password involved).
admin_sql() {
	local dir=$1 client
	client=$(find_bin mariadb mysql)
	"$client" --no-defaults --protocol=socket --socket="$dir/mysqld.sock" -u "$(id -un)" --batch --skip-column-names
}

cmd_start() {
	local dir=$1 mariadbd installdb pw port attempt errlog pid i ready

	ensure_binaries
	ensure_owner "$DB_USER"
	mariadbd=$(find_bin mariadbd mysqld)
	installdb=$(find_bin mariadb-install-db mysql_install_db)

	mkdir -p -- "$dir"
	dir=$(abs_dir "$dir")
	# A leftover server from an interrupted run is stopped and replaced.
	if [[ -n $(ls -A "$dir") ]]; then
		stop_server "$dir"
		mkdir -p -- "$dir"
	fi
	touch "$dir/$MARKER"
	chmod 700 "$dir"
	mkdir -p "$dir/tmp"
	local owner_args=()
	if is_root; then
		chown -R "$DB_USER:" "$dir"
		runuser -u "$DB_USER" -- test -w "$dir" ||
			die "user $DB_USER cannot reach $dir (a parent directory is not traversable); use a DIR elsewhere"
		owner_args=(--user="$DB_USER")
	fi

	# socket authentication: root (the OS user running this script) gets in
	# over the Unix socket only; no account can log in over TCP yet.
	if ! (cd "$dir" && "$installdb" --no-defaults --datadir="$dir/data" "${owner_args[@]}" \
		--auth-root-authentication-method=socket --auth-root-socket-user="$(id -un)" \
		--skip-name-resolve --skip-test-db >"$dir/install.log" 2>&1); then
		tail -n 20 "$dir/install.log" >&2 || true
		die "mariadb-install-db failed (log: $dir/install.log)"
	fi

	errlog=$dir/error.log
	for attempt in 1 2 3 4 5; do
		port=$(pick_port) || die "no free port found on 127.0.0.1"
		: >"$errlog"
		if is_root; then chown "$DB_USER:" "$errlog"; fi
		# The general log starts off: it is switched on once root has its
		# password, so the log holds only what tests send.
		# The redirections cover the whole background job: a shell left
		# holding the caller's stdout would keep `$(... start DIR)` waiting
		# for as long as the server runs.
		(cd "$dir" && exec setsid "$mariadbd" --no-defaults "${owner_args[@]}" \
			--datadir="$dir/data" --tmpdir="$dir/tmp" \
			--pid-file="$dir/mariadbd.pid" --socket="$dir/mysqld.sock" \
			--bind-address=127.0.0.1 --port="$port" --skip-name-resolve \
			--log-error="$errlog" --log-output=FILE \
			--general-log=0 --general-log-file="$dir/general.log" \
			--max-connections=500 --performance-schema=OFF \
			--innodb-buffer-pool-size=64M --innodb-flush-log-at-trx-commit=0 \
			--innodb-doublewrite=0 --character-set-server=utf8mb4) \
			</dev/null >/dev/null 2>&1 &
		ready=""
		for i in $(seq 1 300); do
			if [[ -S $dir/mysqld.sock ]] && echo "SELECT 1" | admin_sql "$dir" >/dev/null 2>&1; then
				ready=1
				break
			fi
			# Gone already: a failed bind or start.
			if ((i > 10)) && ! server_pid "$dir" >/dev/null; then
				break
			fi
			sleep 0.1
		done
		[[ -n $ready ]] && break
		if pid=$(server_pid "$dir"); then kill -KILL "$pid" 2>/dev/null || true; fi
		rm -f "$dir/mariadbd.pid" "$dir/mysqld.sock"
		if grep -q 'Address already in use\|Can.t start server: Bind' "$errlog" 2>/dev/null && [[ $attempt -lt 5 ]]; then
			log "port $port taken, retrying"
			continue
		fi
		tail -n 20 "$errlog" >&2 || true
		die "server did not start (log: $errlog)"
	done

	pw=$(random_password)
	# Over stdin, not argv (ps), with the general log still off.
	admin_sql "$dir" <<SQL
CREATE USER 'root'@'127.0.0.1' IDENTIFIED BY '$pw';
GRANT ALL PRIVILEGES ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION;
DELETE FROM mysql.global_priv WHERE User = '';
FLUSH PRIVILEGES;
SET GLOBAL general_log = ON;
SQL

	local dsn="root:${pw}@tcp(127.0.0.1:${port})/"
	(
		umask 077
		cat >"$dir/env" <<EOF
export CREDBROKER_TEST_MYSQL_DSN='$dsn'
export CREDBROKER_TEST_MYSQL_HOST='127.0.0.1'
export CREDBROKER_TEST_MYSQL_PORT='$port'
export CREDBROKER_TEST_MYSQL_LOG='$dir/general.log'
EOF
	)
	cat "$dir/env"
	log "$("$mariadbd" --version | awk '{print $2, $3}') listening on 127.0.0.1:$port, data in $dir (stop: $0 stop $dir)"
}

cmd_stop() {
	local dir=$1
	[[ -e $dir ]] || return 0
	stop_server "$(abs_dir "$dir")"
	log "stopped and removed $dir"
}

[[ $# -eq 2 ]] || usage
[[ -n $2 ]] || usage
# pause/resume simulate a database outage without losing the server's data:
# pause stops mariadbd and keeps its command line, resume starts it again
# with the same one (same port, same password).
cmd_pause() {
	local dir pid i
	dir=$(abs_dir "$1")
	[[ -e $dir/$MARKER ]] || die "$dir is not a mariadb-throwaway server"
	pid=$(server_pid "$dir") || die "no server running in $dir"
	cp "/proc/$pid/cmdline" "$dir/cmdline"
	kill -TERM "$pid"
	for i in $(seq 1 200); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.05
	done
	kill -0 "$pid" 2>/dev/null && die "server in $dir did not stop"
	log "paused $dir"
}

cmd_resume() {
	local dir i
	local -a args
	dir=$(abs_dir "$1")
	[[ -f $dir/cmdline ]] || die "$dir was not paused"
	mapfile -d '' args <"$dir/cmdline"
	(cd "$dir" && exec setsid "${args[@]}") </dev/null >/dev/null 2>&1 &
	for i in $(seq 1 300); do
		if [[ -S $dir/mysqld.sock ]] && echo "SELECT 1" | admin_sql "$dir" >/dev/null 2>&1; then
			echo "SET GLOBAL general_log = ON" | admin_sql "$dir" >/dev/null
			log "resumed $dir"
			return 0
		fi
		sleep 0.1
	done
	die "server in $dir did not come back (log: $dir/error.log)"
}

case $1 in
start) cmd_start "$2" ;;
stop) cmd_stop "$2" ;;
pause) cmd_pause "$2" ;;
resume) cmd_resume "$2" ;;
*) usage ;;
esac
