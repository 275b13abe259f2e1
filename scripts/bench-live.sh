#!/usr/bin/env bash
# Live chat across instances, measured in one run: one instance with the in-process hub
# against two instances on one Redis, all on one PostgreSQL database, the echo LLM.
#   send_message round trips (200 connections), broadcast latency from one instance to the
#   other (or within the one), and resume latency.
# Usage: scripts/bench-live.sh   (after `cargo build --release --bins --examples`)
# Environment: CARGO_TARGET_DIR, POSTGRES (default postgres://postgres@127.0.0.1:5432),
#   REDIS_URL (default redis://127.0.0.1:6379/0), SECONDS_OF_LOAD (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET="${CARGO_TARGET_DIR:-target}"
BIN="$TARGET/release/chat-service"
TOOL="$TARGET/release/examples/live_bench"
POSTGRES="${POSTGRES:-postgres://postgres@127.0.0.1:5432}"
REDIS="${REDIS_URL:-redis://127.0.0.1:6379/0}"
LOAD="${SECONDS_OF_LOAD:-10}"
SECRET="bench-live-secret"
DATABASE="bench_live_$$"
PREFIX="bench-live-$$"
WORK="$(mktemp -d)"
PIDS=()

cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    psql -q "$POSTGRES/postgres" -c "DROP DATABASE IF EXISTS $DATABASE" >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start PORT [NAME=VALUE...]: a service instance on PORT, returned once it answers.
start() {
    local port="$1"
    shift
    env -i PATH="$PATH" HOST=127.0.0.1 PORT="$port" AUTH_SECRET_KEY="$SECRET" \
        DATABASE_URL="$POSTGRES/$DATABASE" LOG_LEVEL=warn WS_IDLE_TIMEOUT_SECONDS=600 \
        ANON_MAX_CONNECTIONS_PER_IP=100000 "$@" "$BIN" >"$WORK/$port.log" 2>&1 &
    PIDS+=("$!")
    for _ in $(seq 1 200); do
        curl -fs "http://127.0.0.1:$port/health" >/dev/null && return 0
        sleep 0.05
    done
    echo "instance on $port did not start:" >&2; cat "$WORK/$port.log" >&2
    exit 1
}

stop_all() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    PIDS=()
}

measure() {
    local addrs="$1"
    echo "\$ live_bench --addrs $addrs roundtrip --connections 200 --seconds $LOAD"
    "$TOOL" --addrs "$addrs" --secret "$SECRET" roundtrip --connections 200 --seconds "$LOAD"
    echo "\$ live_bench --addrs $addrs fanout --samples 500"
    "$TOOL" --addrs "$addrs" --secret "$SECRET" fanout --samples 500
    echo "\$ live_bench --addrs $addrs resume --samples 300"
    "$TOOL" --addrs "$addrs" --secret "$SECRET" resume --samples 300
}

ulimit -n "$(ulimit -Hn)"
psql -q "$POSTGRES/postgres" -c "CREATE DATABASE $DATABASE" >/dev/null

echo "== one instance, in-process hub"
A="$(free_port)"
start "$A"
measure "127.0.0.1:$A"
stop_all

echo "== two instances on one Redis"
A="$(free_port)"
B="$(free_port)"
start "$A" REDIS_URL="$REDIS" REDIS_PREFIX="$PREFIX"
start "$B" REDIS_URL="$REDIS" REDIS_PREFIX="$PREFIX"
measure "127.0.0.1:$A,127.0.0.1:$B"
stop_all
