#!/usr/bin/env bash
# Property-based check of the OpenAPI document against the running service: schemathesis
# generates requests from /openapi.json, sends them, and checks every answer against what the
# document declares (status codes, bodies, headers, content types, undeclared methods, ...).
#
# The binary runs on a free loopback port with a fresh SQLite file, the offline LLM provider
# and a fresh AUTH_SECRET_KEY; its own `token` subcommand mints an admin token and a user
# token, and schemathesis runs with `--checks all` once with each. `/v1/chat/completions` is
# left out: its body is OpenAI's, whose rules (a user message among the messages, a tool
# message answering a call, ...) the document gives in prose, not as a schema that generated
# requests could follow; scripts/openai-sdk-check.sh and the integration tests check it with
# real OpenAI clients.
#
# Usage: scripts/schemathesis.sh [PATH_TO_CHAT_SERVICE_BINARY]
#   default binary: ${CARGO_TARGET_DIR:-target}/release/chat-service
# Environment:
#   SCHEMATHESIS_DIR           virtualenv location (default: $HOME/.cache/chat-service/schemathesis)
#   SCHEMATHESIS_VERSION       version installed into it (default below)
#   SCHEMATHESIS_MAX_EXAMPLES  examples per operation and phase (default 30)
#   SCHEMATHESIS_SEED          seed of the generation (default 1)
#   PYTHON                     interpreter that creates the virtualenv (default python3)
#   KEEP_WORK=1                keeps the temporary directory (database, service log)
# Exits 1 when schemathesis reports any failure.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/chat-service}"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
VENV="${SCHEMATHESIS_DIR:-$HOME/.cache/chat-service/schemathesis}"
VERSION="${SCHEMATHESIS_VERSION:-4.32.5}"
MAX_EXAMPLES="${SCHEMATHESIS_MAX_EXAMPLES:-30}"
SEED="${SCHEMATHESIS_SEED:-1}"
PYTHON="${PYTHON:-python3}"

log() { printf '[schemathesis] %s\n' "$*" >&2; }

[ -x "$BIN" ] || { log "no executable at $BIN"; exit 1; }

# --- schemathesis in a private virtualenv (quick when already there) ------------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("schemathesis"))' 2>/dev/null || true)"
if [ "$installed" != "$VERSION" ]; then
    log "pip installing schemathesis==$VERSION"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "schemathesis==$VERSION"
fi

# --- the service, on a free port with a fresh database ---------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/schemathesis.XXXXXX")"
SVC_PID=""
# shellcheck disable=SC2317 # called by the trap
cleanup() {
    if [ -n "$SVC_PID" ]; then
        kill "$SVC_PID" 2>/dev/null || true
        wait "$SVC_PID" 2>/dev/null || true
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
# The service reads .env and ../.env: run it two levels down the temporary directory, so
# that no developer's or platform's .env plays a part.
mkdir "$WORK/run"
cd "$WORK/run"
export HOST=127.0.0.1 PORT
export DATABASE_URL="sqlite://$WORK/chat.db"
AUTH_SECRET_KEY="schemathesis-$(date +%s)-$$-$RANDOM"
export AUTH_SECRET_KEY
export LLM_PROVIDER=echo OPENAI_API_KEY='' ANALYTICS_SERVICE_URL='' REDIS_URL=''
export LOG_FORMAT=json RUST_LOG=warn
"$BIN" >"$WORK/service.log" 2>&1 &
SVC_PID=$!

BASE="http://127.0.0.1:$PORT"
up=0
for _ in $(seq 1 150); do
    if curl -sf -o /dev/null --max-time 2 "$BASE/health"; then up=1; break; fi
    kill -0 "$SVC_PID" 2>/dev/null || break
    sleep 0.2
done
if [ "$up" != 1 ]; then
    log "the service did not start; its log:"
    tail -n 30 "$WORK/service.log" >&2
    exit 1
fi

ADMIN_TOKEN="$("$BIN" token --sub admin --roles admin --ttl 1h)"
USER_TOKEN="$("$BIN" token --sub alice --roles user --ttl 1h)"

# --- one run per token -------------------------------------------------------------------
# The user first: the admin run may deactivate or delete any user, itself included, after
# which its token answers 403 (which the document declares) and tests less.
status=0
for who in user admin; do
    if [ "$who" = admin ]; then token="$ADMIN_TOKEN"; else token="$USER_TOKEN"; fi
    log "run with the $who token ($MAX_EXAMPLES examples, seed $SEED)"
    if ! "$VENV/bin/schemathesis" --config-file "$ROOT/scripts/schemathesis.toml" \
        run "$BASE/openapi.json" \
        --checks all \
        --max-examples "$MAX_EXAMPLES" \
        --generation-allow-x00 false \
        --seed "$SEED" \
        --no-color \
        --generation-database none \
        --request-timeout 30 \
        --exclude-path /v1/chat/completions \
        -H "Authorization: Bearer $token"; then
        status=1
    fi
done

if ! kill -0 "$SVC_PID" 2>/dev/null; then
    log "the service died during the run; its log:"
    tail -n 30 "$WORK/service.log" >&2
    status=1
fi
if grep -q '"level":"ERROR"' "$WORK/service.log"; then
    log "the service logged errors:"
    grep '"level":"ERROR"' "$WORK/service.log" | tail -n 10 >&2
    status=1
fi
if [ "$status" = 0 ]; then log "no failures"; else log "failures found"; fi
exit "$status"
