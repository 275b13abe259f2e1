# Shared by scripts/schemathesis.sh and scripts/openai-sdk-check.sh: a Python package in a
# private virtualenv, and the binary serving on a free loopback port with a fresh SQLite file,
# the offline `echo` LLM provider and a fresh AUTH_SECRET_KEY (exported, so that the binary's
# `token` subcommand mints tokens the service accepts). Sourced, never run; the caller sets
# BIN, VENV, PYTHON and a `log` function first.

# venv_with PACKAGE VERSION: installs PACKAGE==VERSION into $VENV unless it is there already.
venv_with() {
    if [ ! -x "$VENV/bin/python" ]; then
        log "creating virtualenv $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    local installed
    installed="$("$VENV/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true)"
    if [ "$installed" != "$2" ]; then
        log "pip installing $1==$2"
        "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$1==$2"
    fi
}

# start_fresh_service NAME: starts the service in a temporary directory named after NAME
# (removed at exit unless KEEP_WORK=1; the service is stopped at exit) and waits for its
# /health. Sets WORK, SVC_PID and BASE; exits 1 with the service's log when it does not start.
start_fresh_service() {
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
    SVC_PID=""
    trap cleanup_fresh_service EXIT
    trap 'exit 130' INT TERM
    PORT="$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')"
    # The service reads .env and ../.env: run it two levels down the temporary directory, so
    # that no developer's or platform's .env plays a part.
    mkdir "$WORK/run"
    cd "$WORK/run" || exit 1
    export HOST=127.0.0.1 PORT
    export DATABASE_URL="sqlite://$WORK/chat.db"
    AUTH_SECRET_KEY="$1-$(date +%s)-$$-$RANDOM"
    export AUTH_SECRET_KEY
    export LLM_PROVIDER=echo OPENAI_API_KEY='' ANALYTICS_SERVICE_URL='' REDIS_URL=''
    export LOG_FORMAT=json RUST_LOG=warn
    "$BIN" >"$WORK/service.log" 2>&1 &
    SVC_PID=$!
    BASE="http://127.0.0.1:$PORT"
    local up=0
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
}

# shellcheck disable=SC2317 # called by the trap
cleanup_fresh_service() {
    if [ -n "$SVC_PID" ]; then
        kill "$SVC_PID" 2>/dev/null || true
        wait "$SVC_PID" 2>/dev/null || true
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then log "kept $WORK"; else rm -rf "$WORK"; fi
}

# service_errors: whether the service logged errors (shown when it did).
service_errors() {
    if grep -q '"level":"ERROR"' "$WORK/service.log"; then
        log "the service logged errors:"
        grep '"level":"ERROR"' "$WORK/service.log" | tail -n 10 >&2
        return 0
    fi
    return 1
}
