#!/usr/bin/env bash
# What an idle downlink worker costs the database: transactions per minute of one idle
# `serve` with downlinks enabled, against the same service without KPN credentials (no
# worker) measured in the same run as the baseline.
#
#   bench/downlink-idle.sh [SECONDS]      (default 60; needs the PostgreSQL server binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_PER_RUN=${1:-60}
cargo build -q
BIN=target/debug/things-receiver
WORK=$(mktemp -d)
chmod o+x "$WORK" # the embedded cluster may run as user postgres
PID=
trap '[ -n "$PID" ] && kill $PID 2>/dev/null; rm -rf "$WORK"' EXIT

psql_things() {
    local pid_file="$WORK/data/pg/postmaster.pid"
    local port socket
    port=$(sed -n 4p "$pid_file")
    socket=$(sed -n 5p "$pid_file")
    psql -XqAt -h "$socket" -p "$port" -U postgres -d things -c "$1"
}

# Transactions committed in the things database during SECONDS_PER_RUN of an idle serve.
measure() {
    "$@" >"$WORK/serve.log" 2>&1 &
    PID=$!
    until grep -q "^Stop with" "$WORK/serve.log"; do
        kill -0 $PID 2>/dev/null || { cat "$WORK/serve.log" >&2; exit 1; }
        sleep 0.2
    done
    sleep 5 # past start-up
    local before after
    before=$(psql_things "SELECT xact_commit FROM pg_stat_database WHERE datname = 'things'")
    sleep "$SECONDS_PER_RUN"
    after=$(psql_things "SELECT xact_commit FROM pg_stat_database WHERE datname = 'things'")
    kill -TERM $PID
    wait $PID || true
    echo $((after - before))
}

serve=("$BIN" --data-dir "$WORK/data" serve --listen 127.0.0.1:0 --plain-http)
baseline=$(measure env -u KPN_CLIENT_ID -u KPN_CLIENT_SECRET "${serve[@]}")
with_worker=$(measure env KPN_CLIENT_ID=bench KPN_CLIENT_SECRET=bench KPN_TENANT_ID=bench \
    "${serve[@]}" --kpn-api-url http://127.0.0.1:9)
# Each psql probe is itself one transaction; both runs include the same two.
per_min() { echo "scale=1; $1 * 60 / $SECONDS_PER_RUN" | bc; }
echo "idle serve, ${SECONDS_PER_RUN}s each:"
echo "  without downlink worker: $baseline transactions ($(per_min "$baseline")/min)"
echo "  with downlink worker:    $with_worker transactions ($(per_min "$with_worker")/min)"
echo "  ratio: $(echo "scale=2; $with_worker / ($baseline + 0.0001)" | bc)"
