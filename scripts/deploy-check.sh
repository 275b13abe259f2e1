#!/usr/bin/env bash
# Live check of the deployment files without a container engine:
#   - the built chat-service binary runs on a free loopback port with a temporary SQLite DB;
#   - the project's nginx.conf, with only its host-specific lines replaced (shown as a diff),
#     passes `nginx -t` and serves in front of it on another loopback port;
#   - through nginx: health, an authenticated REST call, a chat reply streamed as server-sent
#     events, the client address and request ID
#     that the service logs, security headers, the body size limit, a burst answered with 429,
#     WebSocket ping/pong and a chat turn over the upgrade;
#   - the binary's `healthcheck` subcommand (the image's HEALTHCHECK) tells up from down;
#   - docker-compose.yml is validated by the compose parser, both Dockerfiles are linted by
#     hadolint, and .env.example documents every variable the configuration reads.
#
# Usage: scripts/deploy-check.sh [PATH_TO_CHAT_SERVICE_BINARY]
#   default binary: ${CARGO_TARGET_DIR:-target}/release/chat-service
# Tools: nginx, curl, python3, and hadolint, websocat and docker-compose from
#   scripts/install-deploy-tools.sh (looked up in $DEPLOY_TOOLS_DIR/bin, then PATH).
# KEEP_WORK=1 keeps the temporary directory (configs and logs) for inspection.
# Prints PASS/FAIL per step and a closing "N passed, N failed" line; exits 1 on any failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

target_dir="${CARGO_TARGET_DIR:-target}"
BIN="${1:-$target_dir/release/chat-service}"
TOOLS_BIN="${DEPLOY_TOOLS_DIR:-$HOME/.cache/chat-service/deploy-tools}/bin"
export PATH="$TOOLS_BIN:$PATH:/usr/sbin:/sbin"

PASSED=0
FAILED=0
SKIPPED=0
pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$1"; [ $# -lt 2 ] || printf '      %s\n' "${@:2}"; }
skip() { SKIPPED=$((SKIPPED + 1)); printf 'SKIP  %s\n' "$1"; [ $# -lt 2 ] || printf '      %s\n' "${@:2}"; }
info() { printf '      %s\n' "$*"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/deploy-check.XXXXXX")"
# nginx workers run as an unprivileged user when nginx starts as root: let them in.
chmod 755 "$WORK"
SVC_PID=""
NGINX_PID=""
WS_PID=""

cleanup() {
    local pid
    exec 7>&- 2>/dev/null || true
    for pid in "$WS_PID" "$NGINX_PID" "$SVC_PID"; do
        [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
    done
    for pid in "$WS_PID" "$NGINX_PID" "$SVC_PID"; do
        [ -n "$pid" ] || continue
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# wait_for URL SECONDS PID: polls until URL answers 200, the process dies, or time runs out.
wait_for() {
    local url="$1" seconds="$2" pid="$3" _
    for _ in $(seq 1 $((seconds * 5))); do
        if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url")" = 200 ]; then
            return 0
        fi
        kill -0 "$pid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

show_logs() {
    local f
    for f in "$WORK/service.log" "$WORK/nginx/error.log"; do
        [ -s "$f" ] || continue
        echo "      --- last lines of $(basename "$f") ---"
        grep -v 'limiting requests' "$f" | tail -n 20 | sed 's/^/      /'
    done
}

echo "== deploy-check (binary: $BIN)"

# --- static checks: compose, Dockerfiles, .env.example ---------------------------------
compose_cmd=()
if command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
fi
if [ "${#compose_cmd[@]}" -gt 0 ]; then
    # An empty .env for interpolation, so that a developer's own .env plays no part.
    : > "$WORK/empty.env"
    compose_ok=1
    for profile in "" production; do
        args=(-f docker-compose.yml --env-file "$WORK/empty.env")
        [ -z "$profile" ] || args+=(--profile "$profile")
        if ! out="$("${compose_cmd[@]}" "${args[@]}" config -q 2>&1)"; then
            compose_ok=0
            fail "compose: docker-compose.yml ${profile:+(profile $profile) }is valid" "$out"
        fi
    done
    services="$("${compose_cmd[@]}" -f docker-compose.yml --env-file "$WORK/empty.env" \
        --profile production config --services 2>/dev/null | sort | tr '\n' ' ')"
    default_services="$("${compose_cmd[@]}" -f docker-compose.yml --env-file "$WORK/empty.env" \
        config --services 2>/dev/null | sort | tr '\n' ' ')"
    if [ "$compose_ok" = 1 ]; then
        if [[ " $services " == *" chat-service "* && " $services " == *" nginx "* \
            && " $default_services " != *" nginx "* ]]; then
            pass "compose: docker-compose.yml valid; services: ${services}(nginx only under profile production)"
        else
            fail "compose: expected chat-service, and nginx only under profile production" \
                "default: $default_services" "production: $services"
        fi
    fi
else
    fail "compose: docker-compose.yml is valid" "no docker compose found: run scripts/install-deploy-tools.sh"
fi

if command -v hadolint >/dev/null 2>&1; then
    if out="$(hadolint Dockerfile Dockerfile.production 2>&1)"; then
        pass "hadolint: Dockerfile and Dockerfile.production have no findings"
    else
        fail "hadolint: Dockerfile and Dockerfile.production have no findings" "$out"
    fi
else
    fail "hadolint: Dockerfile lint" "hadolint not found: run scripts/install-deploy-tools.sh"
fi

# Every variable read in src/config.rs appears in .env.example (set or commented out).
read_vars="$(grep -ohE '(string|parse|parse_bool|list)\("[A-Z][A-Z0-9_]+"' src/config.rs \
    | sed -E 's/.*\("//; s/"$//' | sort -u)"
missing=""
for var in $read_vars; do
    grep -qE "^#? ?${var}=" .env.example || missing="$missing $var"
done
if [ -z "$read_vars" ]; then
    fail ".env.example: documents the configuration" "no variable names found in src/config.rs"
elif [ -z "$missing" ]; then
    pass ".env.example documents all $(echo "$read_vars" | wc -l) variables read by the configuration"
else
    fail ".env.example documents all variables read by the configuration" "missing:$missing"
fi

# --- the service -------------------------------------------------------------------------
if [ ! -x "$BIN" ]; then
    fail "service: binary $BIN exists" "build it with: cargo build --release"
    echo "deploy-check: $PASSED passed, $FAILED failed"
    exit 1
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

SVC_PORT="$(free_port)"
NG_PORT="$(free_port)"
while [ "$NG_PORT" = "$SVC_PORT" ]; do NG_PORT="$(free_port)"; done
SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
mkdir -p "$WORK/run/data"

# Only the variables below reach the service; its working directory has no .env file.
svc_env=(
    env -i "PATH=$PATH" "HOME=$WORK/run" "TMPDIR=$WORK"
    HOST=127.0.0.1 "PORT=$SVC_PORT"
    "DATABASE_URL=sqlite://$WORK/run/data/chat.db"
    "AUTH_SECRET_KEY=$SECRET"
    LLM_PROVIDER=echo
    TRUSTED_PROXIES=127.0.0.1
    LOG_FORMAT=json LOG_LEVEL=info
    SHUTDOWN_TIMEOUT_SECONDS=2
)
(cd "$WORK/run" && exec "${svc_env[@]}" "$BIN" serve) > "$WORK/service.log" 2>&1 &
SVC_PID=$!
if wait_for "http://127.0.0.1:$SVC_PORT/health" 30 "$SVC_PID"; then
    pass "service: started on 127.0.0.1:$SVC_PORT, /health answers 200"
else
    fail "service: started and /health answers 200 within 30 s"
    show_logs
    echo "deploy-check: $PASSED passed, $FAILED failed"
    exit 1
fi

# The Docker HEALTHCHECK runs `chat-service healthcheck`: 0 while up, non-zero when down.
(cd "$WORK/run" && timeout 10 "${svc_env[@]}" "$BIN" healthcheck) >/dev/null 2>&1
up_rc=$?
closed_port="$(free_port)"
(cd "$WORK/run" && timeout 10 "${svc_env[@]}" "PORT=$closed_port" "$BIN" healthcheck) >/dev/null 2>&1
down_rc=$?
if [ "$up_rc" = 0 ] && [ "$down_rc" != 0 ] && [ "$down_rc" != 124 ]; then
    pass "healthcheck subcommand: exit 0 while the service is up, $down_rc with nothing listening"
else
    fail "healthcheck subcommand: exit 0 when up, non-zero when down" \
        "up: exit $up_rc, down: exit $down_rc (124 = timed out)"
fi

# --- nginx with the project's nginx.conf --------------------------------------------------
NG="$WORK/nginx"
mkdir -p "$NG/temp"
if [ "$(id -u)" = 0 ]; then
    worker_user="user nobody $(id -gn nobody 2>/dev/null || echo nogroup);"
else
    worker_user="# user: nginx runs unprivileged here"
fi
# Each host-specific line of nginx.conf is replaced; each must match exactly once.
subst_ok=1
subst() { # subst PATTERN REPLACEMENT (sed ERE on whole lines, | as delimiter)
    local n
    n="$(grep -cE "$1" "$NG/nginx.conf")"
    if [ "$n" != 1 ]; then
        subst_ok=0
        info "nginx.conf: expected one line matching /$1/, found $n"
        return
    fi
    sed -i -E "s|$1|$2|" "$NG/nginx.conf"
}
cp nginx.conf "$NG/nginx.conf"
subst '^user [^;]+;$' "$worker_user"
subst '^pid [^;]+;$' "pid $NG/nginx.pid;"
subst '^error_log [^ ]+ ' "error_log $NG/error.log "
subst '^( *)access_log [^ ]+ ' "\\1access_log $NG/access.log "
subst '^( *)server chat-service:8000 ' "\\1server 127.0.0.1:$SVC_PORT "
subst '^( *)listen 80;$' "\\1listen 127.0.0.1:$NG_PORT;"
subst '^http \{$' "http {\\
    client_body_temp_path $NG/temp/body;\\
    proxy_temp_path $NG/temp/proxy;\\
    fastcgi_temp_path $NG/temp/fastcgi;\\
    uwsgi_temp_path $NG/temp/uwsgi;\\
    scgi_temp_path $NG/temp/scgi;"
echo "      nginx.conf as tested (diff against the project's file):"
diff -u nginx.conf "$NG/nginx.conf" | sed -e '1,2d' -e 's/^/        /'

if [ "$subst_ok" = 1 ] && out="$(nginx -t -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" 2>&1)"; then
    pass "nginx -t: the project's nginx.conf is valid (nginx $(nginx -v 2>&1 | sed 's|.*/||'))"
else
    fail "nginx -t: the project's nginx.conf is valid" "${out:-host-specific lines not found}"
    echo "deploy-check: $PASSED passed, $FAILED failed"
    exit 1
fi

nginx -p "$NG" -c "$NG/nginx.conf" -e "$NG/error.log" -g 'daemon off;' > "$NG/stdout.log" 2>&1 &
NGINX_PID=$!
BASE="http://127.0.0.1:$NG_PORT"
if wait_for "$BASE/health" 15 "$NGINX_PID"; then
    pass "nginx: serving on 127.0.0.1:$NG_PORT, /health through nginx answers 200"
else
    fail "nginx: /health through nginx answers 200 within 15 s"
    show_logs
    echo "deploy-check: $PASSED passed, $FAILED failed"
    exit 1
fi

# --- REST through nginx --------------------------------------------------------------------
TOKEN="$(cd "$WORK/run" && timeout 10 "${svc_env[@]}" "$BIN" token --sub deploy-check --roles admin,user --ttl 1h 2>/dev/null \
    | grep -oE '[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+' | tail -n 1)"
if [ -z "$TOKEN" ]; then
    fail "rest: mint a token with \`chat-service token\`" "no JWT printed"
else
    code_auth="$(curl -s -o "$WORK/me.json" -w '%{http_code}' --max-time 5 \
        -H "Authorization: Bearer $TOKEN" "$BASE/api/v1/users/me")"
    code_anon="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$BASE/api/v1/users/me")"
    if [ "$code_auth" = 200 ] && grep -q '"deploy-check"' "$WORK/me.json" && [ "$code_anon" = 401 ]; then
        pass "rest: GET /api/v1/users/me through nginx: 200 with a minted token, 401 without"
    else
        fail "rest: GET /api/v1/users/me through nginx: 200 with a token, 401 without" \
            "with token: $code_auth $(head -c 200 "$WORK/me.json")" "without: $code_anon"
    fi
fi

# --- chat over REST, streamed as server-sent events through nginx's unbuffered location ------
code_conv="$(curl -s -o "$WORK/conv.json" -w '%{http_code}' --max-time 5 -X POST \
    -H "Authorization: Bearer ${TOKEN:-none}" -H 'Content-Type: application/json' \
    -d '{"title":"deploy check over REST"}' "$BASE/api/v1/users/me/conversations/")"
conv_id="$(grep -oE '"id" *: *"[^"]+"' "$WORK/conv.json" | head -n 1 | sed -E 's/.*"([^"]+)"$/\1/')"
code_sse="$(curl -s -N -o "$WORK/sse.txt" -D "$WORK/sse.headers" -w '%{http_code}' --max-time 20 -X POST \
    -H "Authorization: Bearer ${TOKEN:-none}" -H 'Content-Type: application/json' \
    -H 'Accept: text/event-stream' -d '{"content":"hello over SSE"}' \
    "$BASE/api/v1/conversations/${conv_id:-none}/chat")"
if [ "$code_conv" = 201 ] && [ "$code_sse" = 200 ] \
    && grep -qi '^content-type: text/event-stream' "$WORK/sse.headers" && grep -q '^data:' "$WORK/sse.txt"; then
    pass "rest: chat reply streamed as server-sent events through nginx ($(grep -c '^data:' "$WORK/sse.txt") events)"
else
    fail "rest: chat reply streamed as server-sent events through nginx" \
        "create conversation: $code_conv $(head -c 200 "$WORK/conv.json")" \
        "chat: $code_sse $(head -c 200 "$WORK/sse.txt" | tr '\n' ' ')"
fi

# --- forwarded client address and request ID ----------------------------------------------
# A client on 127.0.0.2 makes the first request of a new user (which the service logs); nginx
# reaches the service from 127.0.0.1, a trusted proxy. The service must log the client as
# 127.0.0.2 (X-Real-IP) and nginx's request ID (X-Request-ID).
TOKEN2="$(cd "$WORK/run" && timeout 10 "${svc_env[@]}" "$BIN" token --sub deploy-check-proxy --roles user --ttl 1h 2>/dev/null \
    | grep -oE '[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+' | tail -n 1)"
code_fwd="$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --interface 127.0.0.2 \
    -H "Authorization: Bearer ${TOKEN2:-none}" "$BASE/api/v1/users/me")"
rid="$(grep -E '^127\.0\.0\.2 .*"GET /api/v1/users/me HTTP/1.1" 200 ' "$NG/access.log" | tail -n 1 | sed -E 's/.* rid=([0-9a-f]+).*/\1/')"
fwd_ok=0
for _ in $(seq 1 25); do
    if [ -n "$rid" ] && grep -F "$rid" "$WORK/service.log" | grep -qF '127.0.0.2'; then fwd_ok=1; break; fi
    sleep 0.2
done
if [ "$code_fwd" = 200 ] && [ "$fwd_ok" = 1 ]; then
    pass "forwarding: the service logs the client 127.0.0.2 and nginx's request ID $rid"
else
    fail "forwarding: the service logs the client address and request ID that nginx forwards" \
        "status $code_fwd, nginx request ID '${rid}', no service log line with both"
fi

# --- security headers ----------------------------------------------------------------------
headers_ok=1
missing=""
for url in "$BASE/health" "$BASE/no-such-page"; do
    curl -s -o /dev/null -D "$WORK/headers" --max-time 5 "$url"
    for h in "X-Content-Type-Options: nosniff" "X-Frame-Options: DENY" \
        "Referrer-Policy: strict-origin-when-cross-origin" "Content-Security-Policy: frame-ancestors 'none'" \
        "Permissions-Policy:"; do
        n="$(grep -ciF "$h" "$WORK/headers")"
        if [ "$n" != 1 ]; then headers_ok=0; missing="$missing [$url: '$h' x$n]"; fi
    done
    if grep -qiE '^Server: nginx/' "$WORK/headers"; then headers_ok=0; missing="$missing [$url: nginx version shown]"; fi
done
if [ "$headers_ok" = 1 ]; then
    pass "headers: security headers exactly once on 200 and 404 answers, no nginx version"
else
    fail "headers: security headers on every answer" "$missing"
fi

# --- request size limit --------------------------------------------------------------------
head -c $((2 * 1024 * 1024)) /dev/zero | tr '\0' 'a' > "$WORK/big.json"
code_big="$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -X POST \
    -H "Authorization: Bearer ${TOKEN:-none}" -H 'Content-Type: application/json' \
    --data-binary "@$WORK/big.json" "$BASE/api/v1/users/")"
if [ "$code_big" = 413 ]; then
    pass "limits: a 2 MiB body is refused by nginx with 413"
else
    fail "limits: a 2 MiB body is refused with 413" "got $code_big"
fi

# --- rate limit ----------------------------------------------------------------------------
# One curl, one keepalive connection, 60 requests as fast as they go.
urls=()
for _ in $(seq 1 60); do urls+=(-o /dev/null "$BASE/api/v1/users/me"); done
curl -s --max-time 30 -H "Authorization: Bearer ${TOKEN:-none}" \
    -w '%{http_code}\n' "${urls[@]}" > "$WORK/burst.txt"
n200="$(grep -c '^200$' "$WORK/burst.txt")"
n429="$(grep -c '^429$' "$WORK/burst.txt")"
nother=$(( $(wc -l < "$WORK/burst.txt") - n200 - n429 ))
curl -s -o /dev/null -D "$WORK/headers429" --max-time 5 -H "Authorization: Bearer ${TOKEN:-none}" "$BASE/api/v1/users/me"
if [ "$n429" -ge 1 ] && [ "$n200" -ge 1 ] && [ "$nother" = 0 ] \
    && grep -qiF 'X-Content-Type-Options: nosniff' "$WORK/headers429"; then
    pass "rate limit: burst of 60 on /api/: $n200 x 200, $n429 x 429 (with security headers)"
else
    fail "rate limit: a burst on /api/ gets 429" "200: $n200, 429: $n429, other: $nother"
fi

# --- WebSocket through the upgrade ----------------------------------------------------------
WS_URL="ws://127.0.0.1:$NG_PORT/ws/chat"
if ! command -v websocat >/dev/null 2>&1; then
    fail "websocket: ping/pong through nginx" "websocat not found: run scripts/install-deploy-tools.sh"
    fail "websocket: chat turn through nginx" "websocat not found"
else
    mkfifo "$WORK/ws.in"
    exec 7<>"$WORK/ws.in"
    timeout 30 websocat --text "$WS_URL" < "$WORK/ws.in" > "$WORK/ws.out" 2> "$WORK/ws.err" &
    WS_PID=$!
    # ws_wait PATTERN SECONDS: waits for a frame matching PATTERN (extended regex).
    ws_wait() {
        local _
        for _ in $(seq 1 $(($2 * 10))); do
            grep -qE "$1" "$WORK/ws.out" && return 0
            kill -0 "$WS_PID" 2>/dev/null || { grep -qE "$1" "$WORK/ws.out"; return; }
            sleep 0.1
        done
        return 1
    }
    printf '%s\n' '{"type":"ping"}' >&7
    if ws_wait '"type" *: *"pong"' 10; then
        pass "websocket: ping -> pong through nginx ($WS_URL)"
        printf '%s\n' '{"type":"start_conversation","data":{"title":"deploy check"}}' >&7
        if ws_wait '"type" *: *"start_conversation".*"success" *: *true|"success" *: *true.*"type" *: *"start_conversation"' 10; then
            conv="$(grep -E '"start_conversation"' "$WORK/ws.out" | grep -oE '"conversation_id" *: *"[^"]+"' \
                | head -n 1 | sed -E 's/.*"([^"]+)"$/\1/')"
            printf '{"type":"send_message","data":{"conversation_id":"%s","content":"hello through nginx"}}\n' "$conv" >&7
            if ws_wait '"type" *: *"send_message".*"success" *: *true|"success" *: *true.*"type" *: *"send_message"' 20; then
                pass "websocket: chat turn through nginx (start_conversation, send_message answered)"
            else
                fail "websocket: chat turn through nginx" "no successful send_message answer for conversation '$conv'" \
                    "frames: $(tail -c 400 "$WORK/ws.out" | tr "\n" " ")"
            fi
        else
            fail "websocket: chat turn through nginx" "no successful start_conversation answer" \
                "frames: $(tail -c 400 "$WORK/ws.out" | tr "\n" " ")"
        fi
    else
        fail "websocket: ping -> pong through nginx ($WS_URL)" \
            "frames: $(head -c 300 "$WORK/ws.out" | tr "\n" " ")" "websocat: $(head -c 300 "$WORK/ws.err" | tr "\n" " ")"
        fail "websocket: chat turn through nginx" "skipped after the failed ping"
    fi
    exec 7>&-
    kill "$WS_PID" 2>/dev/null
    wait "$WS_PID" 2>/dev/null
    WS_PID=""
    if grep -qE '"GET /ws/chat HTTP/1.1" 101 ' "$NG/access.log"; then
        info "nginx access log: GET /ws/chat -> 101 Switching Protocols"
    fi
fi

if [ "$FAILED" -gt 0 ]; then show_logs; fi
echo "deploy-check: $PASSED passed, $FAILED failed"
[ "$FAILED" = 0 ]
