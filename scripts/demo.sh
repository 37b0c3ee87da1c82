#!/usr/bin/env bash
# make demo: the whole life of one credential on a throwaway PostgreSQL
# (default; DB=postgres) or MariaDB (make demo DB=mysql).
# Starts everything it needs under .cache/demo and removes it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DB=${DB:-postgres}
case $DB in
postgres | mysql) ;;
*) echo "demo: DB must be postgres or mysql, got '$DB'" >&2; exit 2 ;;
esac
DEMO="$ROOT/.cache/demo"
PGDIR="$DEMO/pg"
MYDIR="$DEMO/mariadb"
BIN="$ROOT/bin/credbroker"
GRPCURL="$ROOT/.cache/tools/bin/grpcurl"
TD=demo.example
BROKER_PID=""

. scripts/lib/demo.sh # step, say, fail, free_port, stop_pids, start_shop_pg, admin_psql

cleanup() {
	stop_pids "$BROKER_PID"
	scripts/pg-throwaway.sh stop "$PGDIR" >/dev/null 2>&1 || true
	scripts/mariadb-throwaway.sh stop "$MYDIR" >/dev/null 2>&1 || true
	rm -rf "$DEMO"
}
trap cleanup EXIT
rm -rf "$DEMO"
mkdir -p "$DEMO"

step "Building credbroker"
go build -o "$BIN" ./cmd/credbroker
say "built $BIN"

# Each leg sets up its server and defines what differs: the broker's
# database and role config (DB_YAML, ROLE_YAML), user_sql (SQL as the issued
# user), user_count (admin: users with a name), DENIED (how a refusal
# reads), SERVER/SERVER_LOG/LOG_WHAT (the statement log).
if [[ $DB == postgres ]]; then
	step "Starting a throwaway PostgreSQL (scram-sha-256 password auth) under .cache/demo"
	start_shop_pg "$PGDIR"
	say "PostgreSQL is listening on $PGHOST:$PGPORT"

	step "Creating database 'shop' with tables 'orders' (readable by the role) and 'payments' (not)"
	admin_psql -d shop <<'SQL'
CREATE TABLE payments (id int PRIMARY KEY, card text);
INSERT INTO payments VALUES (1, '4111-xxxx');
SQL
	say "group role 'orders_reader' holds SELECT on orders; nobody is granted payments"

	DB_YAML="plugin: postgres
    host: $PGHOST
    port: $PGPORT
    database: shop
    username: postgres
    password_file: $DEMO/pg-admin.password
    sslmode: disable"
	ROLE_YAML="creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE orders_reader;"
	user_sql() { PGPASSWORD="$PASSWORD" psql -X -q -v ON_ERROR_STOP=1 -h "$PGHOST" -p "$PGPORT" -U "$USERNAME" -d shop -At -c "$1"; }
	user_count() { admin_psql -d shop -At -c "SELECT count(*) FROM pg_roles WHERE rolname = '$1'"; }
	COUNT_ORDERS="SELECT count(*) || ' orders: ' || string_agg(item, ', ' ORDER BY id) FROM orders"
	DENIED='permission denied.*'
	LOGIN_REFUSED='FATAL: *.*'
	SERVER=PostgreSQL SERVER_LOG=$CREDBROKER_TEST_PG_LOG LOG_WHAT="log_statement=all"
else
	step "Starting a throwaway MariaDB (root with a random password, general query log on) under .cache/demo"
	eval "$(scripts/mariadb-throwaway.sh start "$MYDIR")"
	MYHOST=$CREDBROKER_TEST_MYSQL_HOST MYPORT=$CREDBROKER_TEST_MYSQL_PORT
	# The admin password goes to a file the broker reads (never inline in
	# config), and to a client option file (never on a command line).
	ADMIN_PW=$(sed -n 's|^root:\([^@]*\)@.*|\1|p' <<<"$CREDBROKER_TEST_MYSQL_DSN")
	umask 077
	printf '%s\n' "$ADMIN_PW" >"$DEMO/mysql-admin.password"
	printf '[client]\nuser=root\npassword=%s\nhost=%s\nport=%s\n' "$ADMIN_PW" "$MYHOST" "$MYPORT" >"$DEMO/mysql-admin.cnf"
	umask 022
	say "MariaDB is listening on $MYHOST:$MYPORT"

	admin_sql() { mariadb --defaults-extra-file="$DEMO/mysql-admin.cnf" --batch --skip-column-names "$@"; }

	step "Creating database 'shop' with tables 'orders' (readable by the role) and 'payments' (not)"
	admin_sql <<'SQL'
CREATE DATABASE shop;
CREATE TABLE shop.orders (id int PRIMARY KEY, item text);
INSERT INTO shop.orders VALUES (1, 'coffee'), (2, 'tea'), (3, 'cake');
CREATE TABLE shop.payments (id int PRIMARY KEY, card text);
INSERT INTO shop.payments VALUES (1, '4111-xxxx');
CREATE ROLE orders_reader;
GRANT SELECT ON shop.orders TO orders_reader;
SQL
	say "role 'orders_reader' holds SELECT on shop.orders; nobody is granted payments"

	DB_YAML="plugin: mysql
    host: $MYHOST
    port: $MYPORT
    database: shop
    username: root
    password_file: $DEMO/mysql-admin.password
    sslmode: disable
    user_host: 127.0.0.1"
	# No VALID UNTIL here: MariaDB cannot expire a user, the broker's
	# expiry loop does.
	ROLE_YAML="creation_statements:
      - CREATE USER {{name}} IDENTIFIED BY PASSWORD {{password}}
      - GRANT orders_reader TO {{name}}
      - SET DEFAULT ROLE orders_reader FOR {{name}}"
	user_sql() {
		# The password goes through an option file, not the command line.
		(umask 077 && printf '[client]\nuser=%s\npassword=%s\nhost=%s\nport=%s\n' "$USERNAME" "$PASSWORD" "$MYHOST" "$MYPORT" >"$DEMO/user.cnf")
		mariadb --defaults-extra-file="$DEMO/user.cnf" --batch --skip-column-names -D shop -e "$1"
	}
	user_count() { admin_sql -e "SELECT COUNT(*) FROM mysql.user WHERE User = '$1'"; }
	COUNT_ORDERS="SELECT CONCAT(COUNT(*), ' orders: ', GROUP_CONCAT(item ORDER BY id SEPARATOR ', ')) FROM orders"
	DENIED='[A-Z]* command denied.*'
	LOGIN_REFUSED='ERROR 1045.*'
	SERVER=MariaDB SERVER_LOG=$CREDBROKER_TEST_MYSQL_LOG LOG_WHAT="general query log"
	EXPIRY_NOTE="MariaDB has no VALID UNTIL: at expiry the broker's expiry loop drops the user"
fi

step "Minting a dev trust bundle and X.509-SVIDs (trust domain $TD)"
"$BIN" dev-certs --out "$DEMO/certs" --trust-domain "$TD" \
	--server "spiffe://$TD/credbroker" \
	--id "client=spiffe://$TD/orders/api" \
	--id "admin=spiffe://$TD/ops/admin"
say "bundle.pem, server.pem (SPIFFE ID + DNS localhost + IP 127.0.0.1), client.pem, admin.pem"

PORT=$(free_port)
MPORT=$(free_port)
cat >"$DEMO/credbroker.yaml" <<YAML
listen: 127.0.0.1:$PORT
metrics:
  listen: 127.0.0.1:$MPORT
trust_domain: $TD
svid:
  cert_file: $DEMO/certs/server.pem
  key_file: $DEMO/certs/server-key.pem
  bundle_file: $DEMO/certs/bundle.pem
admins: [spiffe://$TD/ops/admin]
lease_store:
  path: $DEMO/leases.db
audit:
  file: $DEMO/audit.log
log:
  format: text
databases:
  shop:
    $DB_YAML
roles:
  orders-readonly:
    database: shop
    default_ttl: 5m
    max_ttl: 1h
    allowed_spiffe_ids: ["spiffe://$TD/orders/*"]
    $ROLE_YAML
YAML

step "Starting the broker on 127.0.0.1:$PORT (embedded lease store, mTLS only)"
"$BIN" check-config --config "$DEMO/credbroker.yaml" | sed 's/^/    /'
"$BIN" init-store --config "$DEMO/credbroker.yaml" | sed 's/^/    /'
"$BIN" serve --config "$DEMO/credbroker.yaml" 2>"$DEMO/broker.log" &
BROKER_PID=$!

as() { # as <identity> <grpcurl args...>
	local who=$1; shift
	"$GRPCURL" -cacert "$DEMO/certs/bundle.pem" -cert "$DEMO/certs/$who.pem" -key "$DEMO/certs/$who-key.pem" "$@"
}
for i in $(seq 1 100); do
	if as client "127.0.0.1:$PORT" grpc.health.v1.Health/Check >/dev/null 2>&1; then break; fi
	if ! kill -0 "$BROKER_PID" 2>/dev/null; then echo "broker exited:"; cat "$DEMO/broker.log"; exit 1; fi
	sleep 0.1
done
say "health check: $(as client "127.0.0.1:$PORT" grpc.health.v1.Health/Check | tr -d '\n ')"

step "Workload spiffe://$TD/orders/api asks for a credential (grpcurl, no .proto file: reflection)"
RESP=$(as client -d '{"role":"orders-readonly","ttl":"300s"}' "127.0.0.1:$PORT" credbroker.v1.CredentialService/IssueCredential)
field() { grep -o "\"$1\": *\"[^\"]*\"" <<<"$RESP" | head -1 | sed 's/.*: *"\(.*\)"/\1/'; }
LEASE_ID=$(field id)
USERNAME=$(field username)
PASSWORD=$(field password)
say "lease $LEASE_ID, new database user $USERNAME, expires $(field expireTime) (password not shown)"
if [[ -n ${EXPIRY_NOTE:-} ]]; then say "$EXPIRY_NOTE"; fi

step "An operator lists the leases (credbroker leases list, with the admin SVID)"
"$BIN" leases list -addr "127.0.0.1:$PORT" -server-id "spiffe://$TD/credbroker" \
	-cert "$DEMO/certs/admin.pem" -key "$DEMO/certs/admin-key.pem" -bundle "$DEMO/certs/bundle.pem" | sed 's/^/    /'

step "Logging in as $USERNAME and reading orders (allowed)"
user_sql "$COUNT_ORDERS" | sed 's/^/    /'

step "Reading payments as $USERNAME (not granted: must be refused)"
if out=$(user_sql "SELECT * FROM payments" 2>&1); then
	echo "    UNEXPECTED: the query succeeded"; exit 1
fi
say "refused: $(grep -o "$DENIED" <<<"$out" | head -1)"

step "Revoking the lease (RevokeLease drops the user and ends its sessions)"
REV=$(as client -d "{\"lease_id\":\"$LEASE_ID\"}" "127.0.0.1:$PORT" credbroker.v1.CredentialService/RevokeLease)
say "lease state: $(grep -o '"state": *"[A-Z]*"' <<<"$REV" | sed 's/.*"\([A-Z]*\)"/\1/')"

step "Logging in again with the revoked credential (must fail)"
if out=$(user_sql "SELECT 1" 2>&1); then
	echo "    UNEXPECTED: login succeeded"; exit 1
fi
why=$(grep -o "$LOGIN_REFUSED" <<<"$out" | head -1 || true)
say "login refused: ${why:-$(head -1 <<<"$out")}"
left=$(user_count "$USERNAME")
say "users named $USERNAME left in $SERVER: $left"
[[ "$left" == 0 ]] || { echo "    UNEXPECTED: the user still exists"; exit 1; }

step "Prometheus metrics (plain HTTP on 127.0.0.1:$MPORT/metrics; docs/metrics.md)"
METRICS=$(curl -fsS "http://127.0.0.1:$MPORT/metrics")
grep -E '^credbroker_(leases_issued_total|leases_revoked_total|grpc_requests_total\{.*CredentialService/|plugin_call_duration_seconds_count)' <<<"$METRICS" | sed 's/^/    /'
if grep -qF -- "$PASSWORD" <<<"$METRICS" || grep -qF -- "$USERNAME" <<<"$METRICS"; then
	echo "    UNEXPECTED: a password or username appears in the metrics"; exit 1
fi
say "checked: neither the password nor the username is in the metrics"

step "Cleaning up (broker stopped, $SERVER stopped, .cache/demo removed)"
kill -TERM "$BROKER_PID"; wait "$BROKER_PID" || true; BROKER_PID=""
if ! grep -qF -- "$USERNAME" "$SERVER_LOG"; then
	echo "    UNEXPECTED: $SERVER's log does not show the user: wrong log?"; exit 1
fi
if grep -qF -- "$PASSWORD" "$DEMO/broker.log" "$SERVER_LOG" 2>/dev/null; then
	echo "    UNEXPECTED: the password appears in a log"; exit 1
fi
say "checked: the password appears in neither the broker's log nor $SERVER's ($LOG_WHAT)"

step "The audit log: one hash-chained JSON record per event (docs/audit.md)"
sed 's/^/    /' "$DEMO/audit.log"
if grep -qF -- "$PASSWORD" "$DEMO/audit.log"; then
	echo "    UNEXPECTED: the password appears in the audit log"; exit 1
fi
"$BIN" audit verify "$DEMO/audit.log" | sed 's/^/    /'
say "checked: the password is not in the audit log"
echo
echo "Demo finished: issued, used, refused beyond its grants, revoked, locked out, and audited."
