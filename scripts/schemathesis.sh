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

# shellcheck source=scripts/lib/fresh-service.sh
. "$ROOT/scripts/lib/fresh-service.sh"
venv_with schemathesis "$VERSION"
start_fresh_service schemathesis

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
if service_errors; then
    status=1
fi
if [ "$status" = 0 ]; then log "no failures"; else log "failures found"; fi
exit "$status"
