#!/usr/bin/env bash
# make demo-agent: an app that cannot link Go gets its PostgreSQL
# credentials from `credbroker agent` (exec mode, plus a file), through one
# rotation and a revoke. Starts everything it needs under
# .cache/demo-agent and removes it at the end. About a minute.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
DEMO="$ROOT/.cache/demo-agent"
BIN="$ROOT/bin/credbroker"
TD=demo.example
BROKER_PID="" AGENT_PID=""

. scripts/lib/demo.sh # step, say, fail, free_port, stop_pids, wait_for, start_shop_pg, admin_psql

cleanup() {
	stop_pids "$AGENT_PID" "$BROKER_PID"
	scripts/pg-throwaway.sh stop "$DEMO/pg" >/dev/null 2>&1 || true
	rm -rf "$DEMO"
}
trap cleanup EXIT
rm -rf "$DEMO"
mkdir -p "$DEMO/creds"
chmod 700 "$DEMO/creds"


step "Building credbroker"
go build -o "$BIN" ./cmd/credbroker
say "built $BIN"

step "Starting a throwaway PostgreSQL under .cache/demo-agent"
start_shop_pg "$DEMO/pg"
say "database shop, table orders (3 rows), group role orders_reader may read it"
# The broker's users are named demo_orders_readonly_<random>.
users() { admin_psql -d shop -At -c "SELECT coalesce(string_agg(rolname, ' ' ORDER BY rolname), '(none)') FROM pg_roles WHERE rolname LIKE 'demo\_%'"; }

step "Minting dev certs and starting the broker (leases of 20s at most, rotated with a 5s overlap)"
"$BIN" dev-certs --out "$DEMO/certs" --trust-domain "$TD" \
	--server "spiffe://$TD/credbroker" --id "client=spiffe://$TD/orders/api" | sed 's/^/    /'
PORT=$(free_port)
cat >"$DEMO/credbroker.yaml" <<YAML
listen: 127.0.0.1:$PORT
trust_domain: $TD
svid:
  cert_file: $DEMO/certs/server.pem
  key_file: $DEMO/certs/server-key.pem
  bundle_file: $DEMO/certs/bundle.pem
lease_store:
  path: $DEMO/leases.db
log:
  format: text
watch:
  overlap: 5s
databases:
  shop:
    plugin: postgres
    host: $PGHOST
    port: $PGPORT
    database: shop
    username: postgres
    password_file: $DEMO/pg-admin.password
    sslmode: disable
    username_prefix: demo
roles:
  orders-readonly:
    database: shop
    default_ttl: 10s
    max_ttl: 20s
    allowed_spiffe_ids: ["spiffe://$TD/orders/*"]
    creation_statements:
      - CREATE ROLE {{name}} WITH LOGIN PASSWORD {{password}} VALID UNTIL {{expiration}} IN ROLE orders_reader;
YAML
"$BIN" init-store --config "$DEMO/credbroker.yaml" >/dev/null
"$BIN" serve --config "$DEMO/credbroker.yaml" 2>"$DEMO/broker.log" &
BROKER_PID=$!
wait_for 10 "broker listening" bash -c "exec 3<>/dev/tcp/127.0.0.1/$PORT"
say "broker on 127.0.0.1:$PORT"

step "The app: a shell loop that queries with psql every 2s, run by 'credbroker agent' in exec mode"
HPORT=$(free_port)
cat >"$DEMO/app.sh" <<'SH'
#!/bin/sh
# psql reads PGHOST, PGPORT, PGDATABASE, PGUSER and PGPASSWORD, which the agent sets.
trap 'echo "app: got SIGTERM, exiting"; exit 0' TERM
echo "app: started as $PGUSER"
while :; do
	echo "app: $(psql -X -At -c "SELECT current_user || ' read ' || count(*) || ' orders' FROM orders" 2>&1)"
	sleep 2 & wait $!
done
SH
chmod +x "$DEMO/app.sh"
cat >"$DEMO/agent.yaml" <<YAML
broker:
  addr: 127.0.0.1:$PORT
  server_id: spiffe://$TD/credbroker
svid:
  cert_file: $DEMO/certs/client.pem
  key_file: $DEMO/certs/client-key.pem
  bundle_file: $DEMO/certs/bundle.pem
credentials:
  - role: orders-readonly
    ttl: 10s
    env:
      PGHOST: "{{ .Host }}"
      PGPORT: "{{ .Port }}"
      PGDATABASE: "{{ .DBName }}"
      PGUSER: "{{ .Username }}"
      PGPASSWORD: "{{ .Password }}"
    file:
      path: $DEMO/creds/db.env
      template: "{{ dotenv . }}"
exec:
  command: [$DEMO/app.sh]
  on_rotate: restart
health:
  listen: 127.0.0.1:$HPORT
YAML
sed 's/^/    /' "$DEMO/agent.yaml"
"$BIN" agent -config "$DEMO/agent.yaml" > >(tee "$DEMO/agent.out" | sed -u 's/^/    | /') 2>&1 &
AGENT_PID=$!
wait_for 15 "healthy agent" curl -fsS "http://127.0.0.1:$HPORT/healthz"
say "GET /healthz: $(curl -sS "http://127.0.0.1:$HPORT/healthz")"
PASSWORDS=()
remember() { PASSWORDS+=("$(sed -n "s/^DB_PASSWORD=//p" "$DEMO/creds/db.env")"); }
remember
FIRST=$(sed -n 's/^DB_USER=//p' "$DEMO/creds/db.env")
say "first user: $FIRST; the credential file $(stat -c '%A' "$DEMO/creds/db.env") (password not shown)"

step "Waiting for the rotation (about 12s after issue): a new user, the app restarted with it"
wait_for 30 "rotation" grep -q "credential rotated" "$DEMO/agent.out"
sleep 0.5
remember
SECOND=$(sed -n 's/^DB_USER=//p' "$DEMO/creds/db.env")
[[ "$SECOND" != "$FIRST" ]] || fail "the file still holds the first user"
say "now: $SECOND; users in PostgreSQL during the overlap: $(users)"
sleep 6
say "5s later the broker has dropped the old one: $(users)"
[[ "$(users)" == "$SECOND" ]] || fail "the old user is still there"
wait_for 10 "query by the new user" grep -q "app: $SECOND read 3 orders" "$DEMO/agent.out"

step "SIGTERM to the agent: it stops the app first, then revokes its leases and removes the file"
kill -TERM "$AGENT_PID"
status=0; wait "$AGENT_PID" || status=$?
AGENT_PID=""
sleep 0.2 # the output pipe drains
say "agent exit status: $status (the app's)"
[[ $status == 0 ]] || fail "exit status $status"
say "users in PostgreSQL: $(users)"
[[ "$(users)" == "(none)" ]] || fail "a user is left"
[[ ! -e "$DEMO/creds/db.env" ]] || fail "the credential file is still there"
say "the credential file is gone"

step "Checking that no password appears in the agent's output (its logs and the app's)"
for p in "${PASSWORDS[@]}"; do
	[[ -n "$p" ]] || fail "no password read"
	if grep -qF -- "$p" "$DEMO/agent.out"; then fail "a password appears in the agent's output"; fi
done
say "checked ${#PASSWORDS[@]} passwords: none in the output"
echo
echo "Demo finished: the app got a credential from the agent, kept working across a rotation, and the agent revoked everything on SIGTERM."
