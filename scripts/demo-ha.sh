#!/usr/bin/env bash
# make demo-ha (or make demo HA=1): three broker replicas on one PostgreSQL
# lease store. A credential is issued through replica a, listed through b,
# renewed through c; then a is killed with SIGKILL and another replica
# revokes the lease when it expires, on time, with no leader.
# Starts everything it needs under .cache/demo-ha and removes it at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO="$ROOT/.cache/demo-ha"
PGDIR="$DEMO/pg"
BIN="$ROOT/bin/credbroker"
GRPCURL="$ROOT/.cache/tools/bin/grpcurl"
TD=demo.example
REPLICAS=(a b c)
declare -A PID PORT

. scripts/lib/demo.sh # step, say, fail, free_port, stop_pids, start_shop_pg, admin_psql, random_password

cleanup() {
	stop_pids "${PID[@]}"
	scripts/pg-throwaway.sh stop "$PGDIR" >/dev/null 2>&1 || true
	rm -rf "$DEMO"
}
trap cleanup EXIT
rm -rf "$DEMO"
mkdir -p "$DEMO"

step "Building credbroker"
go build -o "$BIN" ./cmd/credbroker
say "built $BIN"

step "Starting a throwaway PostgreSQL (scram-sha-256 password auth) under .cache/demo-ha"
start_shop_pg "$PGDIR"
STORE_PW=$(random_password)
(umask 077 && printf '%s\n' "$STORE_PW" >"$DEMO/store.password")
# The lease store: its own database and login. In production this is a
# PostgreSQL you run highly available (Patroni, a managed service), apart
# from the databases the broker issues users for; here one server holds both.
admin_psql -d postgres -v pw="$STORE_PW" <<'SQL'
CREATE ROLE credbroker LOGIN PASSWORD :'pw';
CREATE DATABASE credbroker OWNER credbroker;
SQL
say "PostgreSQL on $PGHOST:$PGPORT: database 'shop' (the users' database) and database 'credbroker' (the shared lease store, login 'credbroker')"

step "Minting a dev trust bundle and X.509-SVIDs (trust domain $TD)"
"$BIN" dev-certs --out "$DEMO/certs" --trust-domain "$TD" \
	--server "spiffe://$TD/credbroker" \
	--id "client=spiffe://$TD/orders/api" \
	--id "admin=spiffe://$TD/ops/admin" | sed 's/^/    /'

# One config per replica, the same but for listen and replica (on separate
# machines it would be one file, the replica named after the host).
for r in "${REPLICAS[@]}"; do
	PORT[$r]=$(free_port)
	cat >"$DEMO/replica-$r.yaml" <<YAML
listen: 127.0.0.1:${PORT[$r]}
instance_id: demo
trust_domain: $TD
svid:
  cert_file: $DEMO/certs/server.pem
  key_file: $DEMO/certs/server-key.pem
  bundle_file: $DEMO/certs/bundle.pem
admins: [spiffe://$TD/ops/admin]
lease_store:
  postgres:
    host: $PGHOST
    port: $PGPORT
    database: credbroker
    username: credbroker
    password_file: $DEMO/store.password
    sslmode: disable
    replica: $r
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
    default_ttl: 10s
    max_ttl: 1m
    allowed_spiffe_ids: ["spiffe://$TD/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE orders_reader;
YAML
done

step "Creating the shared store once (credbroker init-store), then starting replicas a, b and c"
"$BIN" check-config --config "$DEMO/replica-a.yaml" | sed 's/^/    /'
"$BIN" init-store --config "$DEMO/replica-a.yaml" | sed 's/^/    /'
as() { # as <identity> <grpcurl args...>
	local who=$1
	shift
	"$GRPCURL" -cacert "$DEMO/certs/bundle.pem" -cert "$DEMO/certs/$who.pem" -key "$DEMO/certs/$who-key.pem" "$@"
}
for r in "${REPLICAS[@]}"; do
	"$BIN" serve --config "$DEMO/replica-$r.yaml" 2>"$DEMO/replica-$r.log" &
	PID[$r]=$!
done
for r in "${REPLICAS[@]}"; do
	for _ in $(seq 1 100); do
		if as client "127.0.0.1:${PORT[$r]}" grpc.health.v1.Health/Check >/dev/null 2>&1; then break; fi
		kill -0 "${PID[$r]}" 2>/dev/null || { cat "$DEMO/replica-$r.log"; fail "replica $r exited"; }
		sleep 0.1
	done
	say "replica $r: pid ${PID[$r]}, 127.0.0.1:${PORT[$r]}, $(as client "127.0.0.1:${PORT[$r]}" grpc.health.v1.Health/Check | tr -d '\n ')"
done

field() { grep -o "\"$2\": *\"[^\"]*\"" <<<"$1" | head -1 | sed 's/.*: *"\(.*\)"/\1/'; }
valid_until() { admin_psql -d shop -At -c "SELECT coalesce(rolvaliduntil::text, 'none') FROM pg_roles WHERE rolname = '$1'"; }
user_count() { admin_psql -d shop -At -c "SELECT count(*) FROM pg_roles WHERE rolname = '$1'"; }

step "Issuing through replica a (ttl 10s)"
RESP=$(as client -d '{"role":"orders-readonly","ttl":"10s"}' "127.0.0.1:${PORT[a]}" credbroker.v1.CredentialService/IssueCredential)
LEASE_ID=$(field "$RESP" id)
USERNAME=$(field "$RESP" username)
PASSWORD=$(field "$RESP" password)
say "lease $LEASE_ID, user $USERNAME, expires $(field "$RESP" expireTime) (password not shown)"
say "as $USERNAME: $(PGPASSWORD="$PASSWORD" psql -X -q -h "$PGHOST" -p "$PGPORT" -U "$USERNAME" -d shop -At -c "SELECT count(*) || ' orders' FROM orders")"

step "Listing through replica b (credbroker leases list, admin SVID)"
"$BIN" leases list -addr "127.0.0.1:${PORT[b]}" -server-id "spiffe://$TD/credbroker" \
	-cert "$DEMO/certs/admin.pem" -key "$DEMO/certs/admin-key.pem" -bundle "$DEMO/certs/bundle.pem" | sed 's/^/    /'

step "Renewing through replica c (10s from now: the store's record and PostgreSQL's VALID UNTIL both move)"
say "VALID UNTIL before: $(valid_until "$USERNAME")"
REN=$(as client -d "{\"lease_id\":\"$LEASE_ID\",\"increment\":\"10s\"}" "127.0.0.1:${PORT[c]}" credbroker.v1.CredentialService/RenewLease)
EXPIRES=$(field "$REN" expireTime)
say "VALID UNTIL after:  $(valid_until "$USERNAME"); the lease now expires $EXPIRES"

step "Killing replica a (SIGKILL: no shutdown, nothing handed over)"
kill -KILL "${PID[a]}"
wait "${PID[a]}" 2>/dev/null || true
PID[a]=""
say "replica a is gone; b and c know nothing of it but the shared store"

step "Waiting for the expiry: b or c claims the due lease from the store and revokes it"
exp_s=$(date -d "$EXPIRES" +%s.%N)
while [[ $(user_count "$USERNAME") != 0 ]]; do
	if (($(date +%s) > ${exp_s%.*} + 30)); then fail "the user still exists 30s after its expiry"; fi
	sleep 0.1
done
gone_s=$(date +%s.%N)
say "user $USERNAME dropped $(awk -v a="$gone_s" -v b="$exp_s" 'BEGIN { printf "%.2f", a - b }') s after its expiry ($EXPIRES)"
by=""
for r in b c; do
	if grep -F -- "$LEASE_ID" "$DEMO/replica-$r.log" | grep -q 'lease: expired'; then by=$r; fi
done
[[ -n $by ]] || fail "neither replica b nor c logged the expiry"
say "revoked by replica $by: $(grep -F -- "$LEASE_ID" "$DEMO/replica-$by.log" | grep 'lease: expired' | head -1 | cut -c1-160)"
if out=$(PGPASSWORD="$PASSWORD" psql -X -q -h "$PGHOST" -p "$PGPORT" -U "$USERNAME" -d shop -At -c "SELECT 1" 2>&1); then
	fail "login succeeded after the expiry"
fi
say "login refused: $(grep -o 'FATAL: *.*' <<<"$out" | head -1)"

step "Cleaning up (replicas stopped, PostgreSQL stopped, .cache/demo-ha removed)"
for r in b c; do
	kill -TERM "${PID[$r]}"
	wait "${PID[$r]}" || true
	PID[$r]=""
done
if grep -qF -- "$PASSWORD" "$DEMO"/replica-*.log "$CREDBROKER_TEST_PG_LOG"; then
	fail "the password appears in a log"
fi
say "checked: the password appears in no replica's log and not in PostgreSQL's (log_statement=all)"
echo
echo "Demo finished: issued through a, listed through b, renewed through c, a killed, the lease revoked on time by $by."
