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

# shellcheck source=scripts/lib/fresh-service.sh
. "$ROOT/scripts/lib/fresh-service.sh"
venv_with openai "$VERSION"
start_fresh_service openai-sdk-check

CHAT_BASE="$BASE" CHAT_TOKEN="$("$BIN" token --sub sdk-check --roles user --ttl 1h)" \
    "$VENV/bin/python" "$ROOT/scripts/openai_sdk_check.py" || status=$?
status="${status:-0}"
if service_errors; then
    status=1
fi
exit "$status"
