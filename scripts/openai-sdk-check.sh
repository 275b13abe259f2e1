#!/usr/bin/env bash
# The official `openai` Python package against the built binary: one round trip of the
# OpenAI-compatible API (`/v1/models`, `/v1/chat/completions` whole and streamed with the usage
# chunk, a named conversation, OpenAI's errors, a revoked key) with a personal API key, as
# scripts/openai_sdk_check.py does it.
#
# The binary runs on a free loopback port with a fresh SQLite file, the offline `echo` LLM
# provider and a fresh AUTH_SECRET_KEY; its own `token` subcommand mints the user's JWT that
# makes the key.
#
# Usage: scripts/openai-sdk-check.sh [PATH_TO_CHAT_SERVICE_BINARY]
#   default binary: ${CARGO_TARGET_DIR:-target}/release/chat-service
# Environment:
#   OPENAI_SDK_DIR      virtualenv location (default: $HOME/.cache/chat-service/openai-sdk)
#   OPENAI_SDK_VERSION  version of `openai` installed into it (default below)
#   PYTHON              interpreter that creates the virtualenv (default python3)
#   KEEP_WORK=1         keeps the temporary directory (database, service log)
# Exits 1 when a check fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN="${1:-${CARGO_TARGET_DIR:-$ROOT/target}/release/chat-service}"
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
VENV="${OPENAI_SDK_DIR:-$HOME/.cache/chat-service/openai-sdk}"
VERSION="${OPENAI_SDK_VERSION:-3.63.0}"
PYTHON="${PYTHON:-python3}"

log() { printf '[openai-sdk-check] %s\n' "$*" >&2; }

[ -x "$BIN" ] || { log "no executable at $BIN"; exit 1; }

# --- the openai package in a private virtualenv (quick when already there) -------------------
if [ ! -x "$VENV/bin/python" ]; then
    log "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi
installed="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("openai"))' 2>/dev/null || true)"
if [ "$installed" != "$VERSION" ]; then
    log "pip installing openai==$VERSION"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openai==$VERSION"
fi

# --- the service, on a free port with a fresh database ---------------------------------------
WORK="$(mktemp -d "${TMPDIR:-/tmp}/openai-sdk-check.XXXXXX")"
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
AUTH_SECRET_KEY="openai-sdk-$(date +%s)-$$-$RANDOM"
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

CHAT_BASE="$BASE" CHAT_TOKEN="$("$BIN" token --sub sdk-check --roles user --ttl 1h)" \
    "$VENV/bin/python" "$ROOT/scripts/openai_sdk_check.py" || status=$?
status="${status:-0}"
if grep -q '"level":"ERROR"' "$WORK/service.log"; then
    log "the service logged errors:"
    grep '"level":"ERROR"' "$WORK/service.log" | tail -n 10 >&2
    status=1
fi
exit "$status"
