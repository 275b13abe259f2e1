#!/usr/bin/env bash
# Live check of the deployment files without a container engine:
#   - the built chat-service binary runs on a free loopback port with a temporary SQLite DB;
#   - the project's nginx.conf, with only its host-specific lines replaced (shown as a diff),
#     passes `nginx -t` and serves in front of it on another loopback port;
#   - through nginx: health, an authenticated REST call, a chat reply streamed as server-sent
#     events, a completion of the OpenAI-compatible API streamed with a personal API key, the
#     client address and request ID
#     that the service logs, security headers, the body size limit, a burst answered with 429,
#     WebSocket ping/pong and a chat turn over the upgrade;
#   - the binary's `healthcheck` subcommand (the image's HEALTHCHECK) tells up from down;
#   - docker-compose.yml is validated by the compose parser, both Dockerfiles are linted by
#     hadolint, and .env.example documents every variable the configuration reads (as the
#     binary's hidden `config-vars` subcommand lists them);
#   - several instances: two instances of the binary on a fresh PostgreSQL database
#     (127.0.0.1:5432, user postgres; dropped at the end) and Redis (127.0.0.1:6379, a key
#     prefix of their own), behind nginx with an upstream of both; through nginx, two
#     WebSockets that land on different instances, a broadcast and a stop that cross from one
#     instance to the other (the replies come from scripts/slow_llm.py, a small, slow
#     OpenAI-compatible server), then one instance killed (kill -9) and the next WebSocket
#     upgrades and chat POSTs through nginx answered by the other.
#
# Usage: scripts/deploy-check.sh [PATH_TO_CHAT_SERVICE_BINARY]
#   default binary: ${CARGO_TARGET_DIR:-target}/release/chat-service
# Tools: nginx, curl, python3, psql, and hadolint, websocat and docker-compose from
#   scripts/install-deploy-tools.sh (looked up in $DEPLOY_TOOLS_DIR/bin, then PATH).
# KEEP_WORK=1 keeps the temporary directory (configs and logs) for inspection.
# DEPLOY_CHECK_ALLOW_SKIP=1 skips the several-instances part when PostgreSQL or Redis does not
#   answer (otherwise that is a failure; scripts/ensure-postgres.sh and ensure-redis.sh start them).
# Prints PASS/FAIL (or SKIP) per step and a closing "N passed, N failed" line; exits 1 on any
# failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

target_dir="${CARGO_TARGET_DIR:-target}"
BIN="${1:-$target_dir/release/chat-service}"
TOOLS_BIN="${DEPLOY_TOOLS_DIR:-$HOME/.cache/chat-service/deploy-tools}/bin"
export PATH="$TOOLS_BIN:$PATH:/usr/sbin:/sbin"

CHECK_NAME=deploy-check
# shellcheck source=scripts/lib/local-deploy.sh
. "$ROOT/scripts/lib/local-deploy.sh"

echo "== deploy-check (binary: $BIN)"

# --- static checks: compose, Dockerfiles -------------------------------------------------
compose_cmd=()
if command -v docker-compose >/dev/null 2>&1 && docker-compose version >/dev/null 2>&1; then
    compose_cmd=(docker-compose)
elif command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
fi
if [ "${#compose_cmd[@]}" -gt 0 ]; then
    # An empty .env for interpolation, so that a developer's own .env plays no part.
    : > "$WORK/empty.env"
    # compose PROFILES ARGS...: docker compose on the project's file with the (space-separated)
    # profiles.
    compose() {
        local profile args=(-f docker-compose.yml --env-file "$WORK/empty.env")
        for profile in $1; do args+=(--profile "$profile"); done
        shift
        "${compose_cmd[@]}" "${args[@]}" "$@"
    }
    compose_ok=1
    for profiles in "" production "production scale"; do
        if ! out="$(compose "$profiles" config -q 2>&1)"; then
            compose_ok=0
            fail "compose: docker-compose.yml ${profiles:+(profiles $profiles) }is valid" "$out"
        fi
    done
    default_services="$(compose "" config --services 2>/dev/null | sort | tr '\n' ' ')"
    services="$(compose production config --services 2>/dev/null | sort | tr '\n' ' ')"
    scale_services="$(compose "production scale" config --services 2>/dev/null | sort | tr '\n' ' ')"
    # The second instance must answer to the name in nginx's upstream.
    aliases="$(compose "production scale" config --format json 2>/dev/null | python3 -c '
import json, sys
nets = json.load(sys.stdin)["services"]["chat-service-2"].get("networks") or {}
print(" ".join(a for net in nets.values() for a in (net or {}).get("aliases") or []))' 2>/dev/null)"
    if [ "$compose_ok" = 1 ]; then
        if [ "$default_services" = "chat-service " ] && [ "$services" = "chat-service nginx " ] \
            && [ "$scale_services" = "chat-service chat-service-2 nginx postgres redis " ] \
            && [[ " $aliases " == *" chat-service "* ]]; then
            pass "compose: docker-compose.yml valid; services: ${default_services}(default), ${services}(production), ${scale_services}(production scale); chat-service-2 answers as chat-service"
        else
            fail "compose: chat-service by default, nginx under production, chat-service-2, postgres and redis under scale" \
                "default: $default_services" "production: $services" "production scale: $scale_services" \
                "chat-service-2 network aliases: ${aliases:-none}"
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

# --- the service -------------------------------------------------------------------------
if [ ! -x "$BIN" ]; then
    fail "service: binary $BIN exists" "build it with: cargo build --release"
    summary; exit
fi
BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"

# Every variable the configuration reads (as the binary lists them) appears in .env.example,
# set or commented out. The unit test config::tests::every_variable_is_documented checks the
# same, and README's table too, from the source.
read_vars="$("$BIN" config-vars 2>/dev/null | sort -u)"
missing=""
for var in $read_vars; do
    grep -qE "^#? ?${var}=" .env.example || missing="$missing $var"
done
if [ -z "$read_vars" ]; then
    fail ".env.example: documents the configuration" "\`$BIN config-vars\` printed no variable names"
elif [ -z "$missing" ]; then
    pass ".env.example documents all $(echo "$read_vars" | wc -l) variables read by the configuration"
else
    fail ".env.example documents all variables read by the configuration" "missing:$missing"
fi

{ read -r SVC_PORT; read -r NG_PORT; read -r closed_port; } < <(free_ports 3)
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
PIDS+=($!)
if wait_for "http://127.0.0.1:$SVC_PORT/health" 30 "$!"; then
    pass "service: started on 127.0.0.1:$SVC_PORT, /health answers 200"
else
    fail "service: started and /health answers 200 within 30 s"
    show_logs
    summary; exit
fi

# The Docker HEALTHCHECK runs `chat-service healthcheck`: 0 while up, non-zero when down.
(cd "$WORK/run" && timeout 10 "${svc_env[@]}" "$BIN" healthcheck) >/dev/null 2>&1
up_rc=$?
(cd "$WORK/run" && timeout 10 "${svc_env[@]}" "PORT=$closed_port" "$BIN" healthcheck) >/dev/null 2>&1
down_rc=$?
if [ "$up_rc" = 0 ] && [ "$down_rc" != 0 ] && [ "$down_rc" != 124 ]; then
    pass "healthcheck subcommand: exit 0 while the service is up, $down_rc with nothing listening"
else
    fail "healthcheck subcommand: exit 0 when up, non-zero when down" \
        "up: exit $up_rc, down: exit $down_rc (124 = timed out)"
fi

# --- nginx in front of it -----------------------------------------------------------------
NG="$WORK/nginx"
nginx_conf "$NG" "$NG_PORT" "$SVC_PORT"
nginx_ok=$?
echo "      nginx.conf as tested (diff against the project's file):"
diff -u nginx.conf "$NG/nginx.conf" | sed -e '1,2d' -e 's/^/        /'
if [ "$nginx_ok" = 0 ]; then
    pass "nginx -t: the project's nginx.conf is valid (nginx $(nginx -v 2>&1 | sed 's|.*/||'))"
else
    fail "nginx -t: the project's nginx.conf is valid" "$NGINX_ERROR"
    summary; exit
fi

nginx_start "$NG"
BASE="http://127.0.0.1:$NG_PORT"
if wait_for "$BASE/health" 15 "$NGINX_PID"; then
    pass "nginx: serving on 127.0.0.1:$NG_PORT, /health through nginx answers 200"
else
    fail "nginx: /health through nginx answers 200 within 15 s"
    show_logs
    summary; exit
fi

# --- REST through nginx --------------------------------------------------------------------
TOKEN="$(mint deploy-check admin,user)"
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

# --- the OpenAI-compatible API with a personal API key, streamed through nginx's /v1/ -------
code_key="$(curl -s -o "$WORK/key.json" -w '%{http_code}' --max-time 5 -X POST \
    -H "Authorization: Bearer ${TOKEN:-none}" -H 'Content-Type: application/json' \
    -d '{"name":"deploy check"}' "$BASE/api/v1/users/me/api-keys")"
api_key="$(grep -oE '"key" *: *"cs-[^"]+"' "$WORK/key.json" | sed -E 's/.*"(cs-[^"]+)"$/\1/')"
code_models="$(curl -s -o "$WORK/models.json" -w '%{http_code}' --max-time 5 \
    -H "Authorization: Bearer ${api_key:-none}" "$BASE/v1/models")"
model="$(grep -oE '"id" *: *"[^"]+"' "$WORK/models.json" | head -n 1 | sed -E 's/.*"([^"]+)"$/\1/')"
code_v1="$(curl -s -N -o "$WORK/v1.txt" -D "$WORK/v1.headers" -w '%{http_code}' --max-time 20 -X POST \
    -H "Authorization: Bearer ${api_key:-none}" -H 'Content-Type: application/json' \
    -d "{\"model\":\"${model:-none}\",\"stream\":true,\"stream_options\":{\"include_usage\":true},\"messages\":[{\"role\":\"user\",\"content\":\"hello over /v1\"}]}" \
    "$BASE/v1/chat/completions")"
if [ "$code_key" = 201 ] && [ "$code_models" = 200 ] && [ "$code_v1" = 200 ] \
    && grep -qi '^content-type: text/event-stream' "$WORK/v1.headers" \
    && grep -qi '^x-conversation-id: ' "$WORK/v1.headers" \
    && grep -q '"object":"chat.completion.chunk"' "$WORK/v1.txt" \
    && [ "$(grep '^data:' "$WORK/v1.txt" | tail -n 1)" = "data: [DONE]" ]; then
    pass "v1: a completion streamed through nginx with an API key ($(grep -c '^data:' "$WORK/v1.txt") events, ending with [DONE])"
else
    fail "v1: a completion streamed through nginx with an API key" \
        "create key: $code_key" "models: $code_models $(head -c 200 "$WORK/models.json")" \
        "completion: $code_v1 $(head -c 300 "$WORK/v1.txt" | tr '\n' ' ')"
fi

# --- forwarded client address and request ID ----------------------------------------------
# A client on 127.0.0.2 makes the first request of a new user (which the service logs); nginx
# reaches the service from 127.0.0.1, a trusted proxy. The service must log the client as
# 127.0.0.2 (X-Real-IP) and nginx's request ID (X-Request-ID).
TOKEN2="$(mint deploy-check-proxy user)"
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
    ws_open anon "$WS_URL"
    ws_send anon '{"type":"ping"}'
    if ws_wait anon 10 "$(frame pong)"; then
        pass "websocket: ping -> pong through nginx ($WS_URL)"
        ws_send anon '{"type":"start_conversation","data":{"title":"deploy check"}}'
        if ws_wait anon 10 "$(frame start_conversation)" "$ok"; then
            conv="$(grep -E '"start_conversation"' "$WORK/ws-anon.out" | grep -oE '"conversation_id" *: *"[^"]+"' \
                | head -n 1 | sed -E 's/.*"([^"]+)"$/\1/')"
            ws_send anon "{\"type\":\"send_message\",\"data\":{\"conversation_id\":\"$conv\",\"content\":\"hello through nginx\"}}"
            if ws_wait anon 20 "$(frame send_message)" "$ok"; then
                pass "websocket: chat turn through nginx (start_conversation, send_message answered)"
            else
                fail "websocket: chat turn through nginx" "no successful send_message answer for conversation '$conv'" \
                    "$(ws_frames anon)"
            fi
        else
            fail "websocket: chat turn through nginx" "no successful start_conversation answer" "$(ws_frames anon)"
        fi
    else
        fail "websocket: ping -> pong through nginx ($WS_URL)" \
            "$(ws_frames anon)" "websocat: $(head -c 300 "$WORK/ws-anon.err" | tr "\n" " ")"
        fail "websocket: chat turn through nginx" "skipped after the failed ping"
    fi
    ws_close anon
    if grep -qE '"GET /ws/chat HTTP/1.1" 101 ' "$NG/access.log"; then
        info "nginx access log: GET /ws/chat -> 101 Switching Protocols"
    fi
fi

# --- several instances on PostgreSQL and Redis, behind nginx -------------------------------
# instance_of ROUTE: which instance (a or b) logged a request on ROUTE (the matched route).
instance_of() {
    local name _
    for _ in $(seq 1 50); do
        for name in a b; do
            if grep -F "\"route\":\"$1\"" "$WORK/instance-$name.log" | grep -q '101'; then
                echo "$name"
                return
            fi
        done
        sleep 0.1
    done
}

several_instances() {
    local unreachable="" llm_port ng_port name base token conv sender_on watcher_on

    port_open 5432 || unreachable="PostgreSQL on 127.0.0.1:5432"
    redis_ping || unreachable="${unreachable:+$unreachable and }Redis on 127.0.0.1:6379"
    if [ -n "$unreachable" ]; then
        if [ "${DEPLOY_CHECK_ALLOW_SKIP:-0}" = 1 ]; then
            skip "several instances: $unreachable does not answer (DEPLOY_CHECK_ALLOW_SKIP=1)"
        else
            fail "several instances: $unreachable does not answer" \
                "start them with scripts/ensure-postgres.sh and scripts/ensure-redis.sh, or skip this part with DEPLOY_CHECK_ALLOW_SKIP=1"
        fi
        return
    fi
    if ! command -v psql >/dev/null 2>&1 || ! command -v websocat >/dev/null 2>&1; then
        fail "several instances: psql and websocat are installed" \
            "psql: $(command -v psql || echo missing), websocat: $(command -v websocat || echo missing)"
        return
    fi

    # A fresh database and a Redis key prefix of this run's own.
    if ! create_database; then
        fail "several instances: create a database on 127.0.0.1:5432 as postgres" "$CREATE_ERROR"
        return
    fi
    REDIS_PREFIX="deploy-check-$(python3 -c 'import secrets; print(secrets.token_hex(6))')"

    { read -r llm_port; read -r ng_port; read -r "PORT_OF[a]"; read -r "PORT_OF[b]"; } < <(free_ports 4)
    if ! slow_llm_start "$llm_port"; then
        fail "several instances: the slow LLM server starts" "$(tail -n 5 "$WORK/slow-llm.log")"
        return
    fi

    # Two instances of one deployment: the same database, Redis, key, salt and LLM. Request
    # logs (tower_http at debug) name each request's matched route: they show which instance
    # a WebSocket landed on.
    INSTANCE_ENV=(
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/$PG_DB"
        REDIS_URL=redis://127.0.0.1:6379/0 "REDIS_PREFIX=$REDIS_PREFIX"
        "AUTH_SECRET_KEY=$SECRET" HASHID_SALT=deploy-check
        LLM_PROVIDER=openai "OPENAI_BASE_URL=http://127.0.0.1:$llm_port/v1"
        OPENAI_API_KEY=deploy-check OPENAI_MODEL=deploy-check OPENAI_MAX_RETRIES=0
        TRUSTED_PROXIES=127.0.0.1 LOG_FORMAT=json LOG_LEVEL=info,tower_http=debug
        SHUTDOWN_TIMEOUT_SECONDS=2
    )
    instance_start a
    instance_start b
    if instance_health a && instance_health b; then
        pass "several instances: a on 127.0.0.1:${PORT_OF[a]}, b on 127.0.0.1:${PORT_OF[b]}, one PostgreSQL database ($PG_DB) and Redis (prefix $REDIS_PREFIX); /health of each: redis connected"
    else
        fail "several instances: two instances start on PostgreSQL and Redis, /health says redis connected" \
            "a: ${HEALTH_OF[a]:-no answer}" "b: ${HEALTH_OF[b]:-no answer}"
        return
    fi

    # nginx with an upstream of both: the compose service's name resolves to both instances.
    if ! nginx_conf "$WORK/nginx-scale" "$ng_port" "${PORT_OF[a]}" "${PORT_OF[b]}"; then
        fail "several instances: nginx -t with an upstream of both instances" "$NGINX_ERROR"
        return
    fi
    nginx_start "$WORK/nginx-scale"
    base="127.0.0.1:$ng_port"
    if wait_for "http://$base/health" 15 "$NGINX_PID"; then
        pass "several instances: nginx (-t passes) serves on 127.0.0.1:$ng_port with an upstream of both instances: $(grep -oE '^ *server 127\.0\.0\.1:[0-9]+' "$WORK/nginx-scale/nginx.conf" | sed -E 's/^ +server //' | paste -sd ' ')"
    else
        fail "several instances: /health through nginx answers 200 within 15 s"
        return
    fi

    token="$(mint deploy-check-scale user)"
    curl -s -o "$WORK/scale-conv.json" --max-time 5 -X POST \
        -H "Authorization: Bearer ${token:-none}" -H 'Content-Type: application/json' \
        -d '{"title":"deploy check across instances"}' "http://$base/api/v1/users/me/conversations/"
    conv="$(grep -oE '"id" *: *"[^"]+"' "$WORK/scale-conv.json" | head -n 1 | sed -E 's/.*"([^"]+)"$/\1/')"
    if [ -z "$conv" ]; then
        fail "several instances: create a conversation through nginx" "$(head -c 300 "$WORK/scale-conv.json")"
        return
    fi

    # Two WebSockets through nginx: `least_conn` sends the second to the instance with fewer
    # open connections, the one the first did not land on; each instance's log says which.
    ws_open sender "ws://$base/ws/chat/deploy-check-scale?token=$token"
    ws_send sender '{"type":"ping"}'
    ws_wait sender 10 "$(frame pong)"
    sender_on="$(instance_of '/ws/chat/{user_id}')"
    ws_open watcher "ws://$base/ws/$conv?token=$token"
    # An answer proves that the watcher's instance follows the conversation.
    ws_send watcher '{"type":"ping"}'
    ws_wait watcher 10 "$(frame pong)"
    watcher_on="$(instance_of '/ws/{conversation_id}')"
    if [ -n "$sender_on" ] && [ -n "$watcher_on" ] && [ "$sender_on" != "$watcher_on" ]; then
        pass "websocket: two WebSockets through nginx on different instances: /ws/chat/{user_id} on $sender_on, /ws/{conversation_id} on $watcher_on (each instance's request log)"
    else
        fail "websocket: two WebSockets through nginx on different instances" \
            "/ws/chat/{user_id} on: '${sender_on:-none}', /ws/{conversation_id} on: '${watcher_on:-none}'" \
            "$(ws_frames sender)" "$(ws_frames watcher)"
        return
    fi

    # A message sent on one instance reaches the other's connection, streamed and whole.
    ws_mark sender
    ws_mark watcher
    ws_send sender "{\"type\":\"send_message\",\"data\":{\"conversation_id\":\"$conv\",\"content\":\"hello across instances\"}}"
    if ws_wait sender 20 "$(frame send_message)" "$ok" \
        && ws_wait watcher 20 "$(frame message_broadcast)" 'Echo: hello across instances' \
        && ws_match watcher "$(frame ai_response_chunk)"; then
        pass "broadcast: a reply to a message sent on $sender_on reaches the connection on $watcher_on (chunks, then message_broadcast)"
    else
        fail "broadcast: a reply to a message sent on $sender_on reaches the connection on $watcher_on" \
            "$(ws_frames sender)" "$(ws_frames watcher)"
    fi

    # A stop sent on one instance stops the reply that the other generates.
    ws_mark sender
    ws_mark watcher
    ws_send sender "{\"type\":\"send_message\",\"data\":{\"conversation_id\":\"$conv\",\"content\":\"please reply slowly\"}}"
    if ! ws_wait sender 20 "$(frame ai_response_chunk)"; then
        fail "stop: a slow reply starts on $sender_on" "$(ws_frames sender)"
        return
    fi
    ws_send watcher "{\"type\":\"stop_generation\",\"data\":{\"conversation_id\":\"$conv\"}}"
    local stored=""
    if ws_wait watcher 10 "$(frame stop_generation)" "$ok" '"stopped" *: *true' \
        && ws_wait sender 20 "$(frame send_message)" "$ok" '"stopped" *: *true'; then
        stored="$(curl -s --max-time 5 -H "Authorization: Bearer $token" \
            "http://$base/api/v1/conversations/$conv/messages?role=assistant")"
    fi
    if grep -qE '"stopped" *: *true' <<< "$stored"; then
        local chunks
        chunks="$(tail -n +"$((WS_MARK[sender] + 1))" "$WORK/ws-sender.out" | grep -cE "$(frame ai_response_chunk)")"
        pass "stop: stop_generation on $watcher_on stopped the reply generated on $sender_on after $chunks of 300 chunks; stored marked stopped"
    else
        fail "stop: stop_generation on $watcher_on stops the reply generated on $sender_on" \
            "$(ws_frames sender)" "$(ws_frames watcher)" "stored replies: $(head -c 300 <<< "$stored")"
    fi

    failover "$base" "$token" "$conv"
}

# failover BASE TOKEN CONVERSATION: instance b dies (kill -9); nginx passes what it cannot
# connect to b on to a, so the next WebSocket upgrades and chat POSTs through nginx succeed
# (nginx's access log lists both addresses for a request it retried).
failover() {
    local base="$1" token="$2" conv="$3" i code codes="" upgraded=0 posted=0 ws_retried post_retried
    kill -9 "${PID_OF[b]}" 2>/dev/null
    wait "${PID_OF[b]}" 2>/dev/null
    # Upgrades and POSTs in turn: nginx tries b (no open connection, so first for
    # `least_conn`) until it has failed `max_fails` times, so both kinds meet it.
    for i in 1 2 3; do
        ws_open "failover-$i" "ws://$base/ws/chat/deploy-check-scale?token=$token"
        ws_send "failover-$i" '{"type":"ping"}'
        ws_wait "failover-$i" 10 "$(frame pong)" && upgraded=$((upgraded + 1))
        ws_close "failover-$i"
        code="$(curl -s -o "$WORK/failover-$i.json" -w '%{http_code}' --max-time 20 -X POST \
            -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
            -d "{\"content\":\"after the failover $i\"}" "http://$base/api/v1/conversations/$conv/chat")"
        codes="$codes $code"
        [ "$code" = 200 ] && posted=$((posted + 1))
    done
    ws_retried="$(grep -cE "\"GET /ws/chat/[^ ]* HTTP/1.1\" 101 .*upstream=127\.0\.0\.1:${PORT_OF[b]}, " "$WORK/nginx-scale/access.log")"
    post_retried="$(grep -cE "\"POST /api/v1/conversations/[^ ]*/chat HTTP/1.1\" 200 .*upstream=127\.0\.0\.1:${PORT_OF[b]}, " "$WORK/nginx-scale/access.log")"
    if [ "$upgraded" = 3 ] && [ "$posted" = 3 ] && [ "$ws_retried" -ge 1 ] && [ "$post_retried" -ge 1 ]; then
        pass "failover: after kill -9 of b, 3 WebSocket upgrades and 3 chat POSTs through nginx succeed ($ws_retried upgrades and $post_retried POSTs refused by b and passed on to a)"
    else
        fail "failover: after kill -9 of b, the next WebSocket upgrades and chat POSTs through nginx succeed" \
            "upgrades answered: $upgraded of 3, chat POSTs:$codes" \
            "passed on from b to a: $ws_retried upgrades, $post_retried POSTs" \
            "$(grep -E '/ws/chat/|/chat HTTP' "$WORK/nginx-scale/access.log" | tail -n 6)"
    fi
}

several_instances

if [ "$FAILED" -gt 0 ]; then show_logs; fi
summary
