#!/usr/bin/env bash
# make demo: the whole life of one credential on a throwaway PostgreSQL.
# Starts everything it needs under .cache/demo and removes it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO="$ROOT/.cache/demo"
PGDIR="$DEMO/pg"
BIN="$ROOT/bin/credbroker"
GRPCURL="$ROOT/.cache/tools/bin/grpcurl"
TD=demo.example
BROKER_PID=""

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
say() { printf '    %s\n' "$*"; }

cleanup() {
	if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
		kill -TERM "$BROKER_PID" 2>/dev/null || true
		wait "$BROKER_PID" 2>/dev/null || true
	fi
	scripts/pg-throwaway.sh stop "$PGDIR" >/dev/null 2>&1 || true
	rm -rf "$DEMO"
}
trap cleanup EXIT
rm -rf "$DEMO"
mkdir -p "$DEMO"

free_port() {
	local p
	for _ in $(seq 1 50); do
		p=$(( 20000 + RANDOM % 20000 ))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"; return 0
		fi
	done
	echo "no free port found" >&2; return 1
}

step "Building credbroker"
go build -o "$BIN" ./cmd/credbroker
say "built $BIN"

step "Starting a throwaway PostgreSQL (scram-sha-256 password auth) under .cache/demo"
eval "$(scripts/pg-throwaway.sh start "$PGDIR")"
PGHOST=$CREDBROKER_TEST_PG_HOST PGPORT=$CREDBROKER_TEST_PG_PORT
# The admin password goes to a file the broker reads (never inline in config).
ADMIN_PW=$(sed -n 's|^postgres://postgres:\([^@]*\)@.*|\1|p' <<<"$CREDBROKER_TEST_PG_DSN")
umask 077
printf '%s\n' "$ADMIN_PW" >"$DEMO/pg-admin.password"
umask 022
say "PostgreSQL is listening on $PGHOST:$PGPORT"

admin_psql() { PGPASSWORD="$ADMIN_PW" psql -X -q -v ON_ERROR_STOP=1 -h "$PGHOST" -p "$PGPORT" -U postgres "$@"; }

step "Creating database 'shop' with tables 'orders' (readable by the role) and 'payments' (not)"
admin_psql -d postgres -c "CREATE DATABASE shop"
admin_psql -d shop <<'SQL'
CREATE TABLE orders (id int PRIMARY KEY, item text);
INSERT INTO orders VALUES (1, 'coffee'), (2, 'tea'), (3, 'cake');
CREATE TABLE payments (id int PRIMARY KEY, card text);
INSERT INTO payments VALUES (1, '4111-xxxx');
CREATE ROLE orders_reader NOLOGIN;
GRANT SELECT ON orders TO orders_reader;
SQL
say "group role 'orders_reader' holds SELECT on orders; nobody is granted payments"

step "Minting a dev trust bundle and X.509-SVIDs (trust domain $TD)"
"$BIN" dev-certs --out "$DEMO/certs" --trust-domain "$TD" \
	--server "spiffe://$TD/credbroker" \
	--id "client=spiffe://$TD/orders/api" \
	--id "admin=spiffe://$TD/ops/admin"
say "bundle.pem, server.pem (SPIFFE ID + DNS localhost + IP 127.0.0.1), client.pem, admin.pem"

PORT=$(free_port)
cat >"$DEMO/credbroker.yaml" <<YAML
listen: 127.0.0.1:$PORT
trust_domain: $TD
svid:
  cert_file: $DEMO/certs/server.pem
  key_file: $DEMO/certs/server-key.pem
  bundle_file: $DEMO/certs/bundle.pem
admins: [spiffe://$TD/ops/admin]
lease_store:
  path: $DEMO/leases.db
log:
  format: text
databases:
  shop:
    plugin: postgres
    host: $PGHOST
    port: $PGPORT
    database: shop
    username: postgres
    password_file: $DEMO/pg-admin.password
    sslmode: disable
roles:
  orders-readonly:
    database: shop
    default_ttl: 5m
    max_ttl: 1h
    allowed_spiffe_ids: ["spiffe://$TD/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE orders_reader;
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

user_psql() { PGPASSWORD="$PASSWORD" psql -X -q -v ON_ERROR_STOP=1 -h "$PGHOST" -p "$PGPORT" -U "$USERNAME" -d shop "$@"; }

step "Logging in as $USERNAME and reading orders (allowed)"
user_psql -At -c "SELECT count(*) || ' orders: ' || string_agg(item, ', ' ORDER BY id) FROM orders" | sed 's/^/    /'

step "Reading payments as $USERNAME (not granted: must be refused)"
if out=$(user_psql -c "SELECT * FROM payments" 2>&1); then
	echo "    UNEXPECTED: the query succeeded"; exit 1
fi
say "refused: $(grep -o 'permission denied.*' <<<"$out")"

step "Revoking the lease (RevokeLease drops the user and ends its sessions)"
REV=$(as client -d "{\"lease_id\":\"$LEASE_ID\"}" "127.0.0.1:$PORT" credbroker.v1.CredentialService/RevokeLease)
say "lease state: $(grep -o '"state": *"[A-Z]*"' <<<"$REV" | sed 's/.*"\([A-Z]*\)"/\1/')"

step "Logging in again with the revoked credential (must fail)"
if out=$(user_psql -c "SELECT 1" 2>&1); then
	echo "    UNEXPECTED: login succeeded"; exit 1
fi
say "login refused: $(grep -o 'FATAL: *.*' <<<"$out" | head -1)"
left=$(admin_psql -d shop -At -c "SELECT count(*) FROM pg_roles WHERE rolname = '$USERNAME'")
say "roles named $USERNAME left in PostgreSQL: $left"
[[ "$left" == 0 ]] || { echo "    UNEXPECTED: the user still exists"; exit 1; }

step "Cleaning up (broker stopped, PostgreSQL stopped, .cache/demo removed)"
kill -TERM "$BROKER_PID"; wait "$BROKER_PID" || true; BROKER_PID=""
if grep -qF -- "$PASSWORD" "$DEMO/broker.log" "$CREDBROKER_TEST_PG_LOG" 2>/dev/null; then
	echo "    UNEXPECTED: the password appears in a log"; exit 1
fi
say "checked: the password appears in neither the broker's log nor PostgreSQL's (log_statement=all)"
echo
echo "Demo finished: issued, used, refused beyond its grants, revoked, and locked out."
