#!/usr/bin/env bash
# Fault drills for a deployment of two instances behind nginx on PostgreSQL and Redis: the
# faults an operator meets, each in the middle of a reply, and what a client sees.
#
#   kill     an instance killed (kill -9) mid-reply; its client reconnects through nginx (so to
#            the other instance) and resumes: does it get the reply's end, is the reply stored,
#            and how long until the conversation takes a message again?
#   sigterm  a rolling restart (SIGTERM to each instance in turn) during a reply longer than
#            SHUTDOWN_TIMEOUT_SECONDS: the end that a client resumed on the other instance
#            gets, the stored partial reply, the conversation free at once, the time to exit.
#   short    SIGTERM just before a short reply ends, DRILL_SHORT_TRIES times: does the client
#            resumed on the other instance get the answer every time?
#   redis    Redis restarted (empty) mid-reply: is a second reply on the same conversation
#            refused, does a stop still reach the reply, does its client get the end?
#
# Usage:
#   scripts/fault-drill.sh local [BINARY]
#       Two instances of the release binary (default ${CARGO_TARGET_DIR:-target}/release/
#       chat-service) on a fresh PostgreSQL database (127.0.0.1:5432, user postgres, dropped
#       at the end), a Redis of the drill's own (redis-server on a free port, so restarting it
#       disturbs nobody) and nginx with the project's nginx.conf, as scripts/deploy-check.sh
#       runs them; SHUTDOWN_TIMEOUT_SECONDS=4 and GENERATION_LEASE_SECONDS=10 keep it short.
#   scripts/fault-drill.sh compose
#       A throwaway deployment of the project's docker-compose.yml (profiles production and
#       scale: chat-service, chat-service-2, postgres, redis, nginx) under the project name
#       chat-fault-drill, replies from scripts/slow_llm.py as one more service, and the
#       service's own timeouts (GENERATION_LEASE_SECONDS and SHUTDOWN_TIMEOUT_SECONDS from the
#       environment, 30 and 10 by default); taken down with its volumes at the end
#       (DRILL_KEEP=1 leaves it up). Needs a Docker engine; DRILL_BUILD=1 builds the image.
#   scripts/fault-drill.sh compose-config
#       Writes the compose deployment's files and validates them (no engine needed).
#
# Environment: DRILL_SHORT_TRIES (10), DRILL_ONLY (space-separated drills to run; all by
#   default), KEEP_WORK=1 keeps the work directory (logs, frames). Tools: curl, python3,
#   websocat (scripts/install-deploy-tools.sh); local mode also psql, redis-server and nginx.
# Prints PASS/FAIL per observation and a closing "N passed, N failed" line; exits 1 on any
# failure.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

MODE="${1:-}"
case "$MODE" in
    local | compose | compose-config) ;;
    *)
        echo "usage: $0 local [BINARY] | compose | compose-config" >&2
        exit 2
        ;;
esac
BIN="${2:-${CARGO_TARGET_DIR:-target}/release/chat-service}"
TOOLS_BIN="${DEPLOY_TOOLS_DIR:-$HOME/.cache/chat-service/deploy-tools}/bin"
export PATH="$TOOLS_BIN:$PATH:/usr/sbin:/sbin"

CHECK_NAME=fault-drill
# shellcheck source=scripts/lib/local-deploy.sh
. "$ROOT/scripts/lib/local-deploy.sh"

SHORT_TRIES="${DRILL_SHORT_TRIES:-10}"
USER_NAME=fault-drill
SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
declare -A ADDR   # host:port of instance a and b
BASE=""           # host:port of nginx
TOKEN=""
LEASE=""          # GENERATION_LEASE_SECONDS of the deployment
TIMEOUT=""        # SHUTDOWN_TIMEOUT_SECONDS of the deployment

now_ms() { date +%s%3N; }
# seconds_since MS: the time since MS, in seconds with one decimal.
seconds_since() { awk -v a="$1" -v b="$(now_ms)" 'BEGIN { printf "%.1f", (b - a) / 1000 }'; }

# --- the local deployment -------------------------------------------------------------------
local_up() {
    local llm_port ng_port tool
    for tool in psql redis-server nginx websocat; do
        command -v "$tool" >/dev/null 2>&1 || { fail "local: $tool is installed"; return 1; }
    done
    if [ ! -x "$BIN" ]; then
        fail "local: binary $BIN exists" "build it with: cargo build --release"
        return 1
    fi
    BIN="$(cd "$(dirname "$BIN")" && pwd)/$(basename "$BIN")"
    port_open 5432 || { fail "local: PostgreSQL answers on 127.0.0.1:5432"; return 1; }
    create_database || { fail "local: create a database" "$CREATE_ERROR"; return 1; }
    { read -r llm_port; read -r ng_port; read -r REDIS_PORT; read -r "PORT_OF[a]"; read -r "PORT_OF[b]"; } < <(free_ports 5)
    slow_llm_start "$llm_port" || { fail "local: the slow LLM server starts"; return 1; }
    local_redis_start || { fail "local: redis-server starts on 127.0.0.1:$REDIS_PORT"; return 1; }
    LEASE=10
    TIMEOUT=4
    INSTANCE_ENV=(
        "DATABASE_URL=postgres://postgres@127.0.0.1:5432/$PG_DB"
        "REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0" REDIS_PREFIX=fault-drill
        "AUTH_SECRET_KEY=$SECRET" HASHID_SALT=fault-drill
        LLM_PROVIDER=openai "OPENAI_BASE_URL=http://127.0.0.1:$llm_port/v1"
        OPENAI_API_KEY=fault-drill OPENAI_MODEL=fault-drill OPENAI_MAX_RETRIES=0
        TRUSTED_PROXIES=127.0.0.1 LOG_FORMAT=json LOG_LEVEL=info
        "SHUTDOWN_TIMEOUT_SECONDS=$TIMEOUT" "GENERATION_LEASE_SECONDS=$LEASE"
    )
    instance_start a
    instance_start b
    if ! instance_health a || ! instance_health b; then
        fail "local: two instances start, /health says redis connected" \
            "a: ${HEALTH_OF[a]:-no answer}" "b: ${HEALTH_OF[b]:-no answer}"
        return 1
    fi
    if ! nginx_conf "$WORK/nginx" "$ng_port" "${PORT_OF[a]}" "${PORT_OF[b]}"; then
        fail "local: nginx -t with an upstream of both instances" "$NGINX_ERROR"
        return 1
    fi
    nginx_start "$WORK/nginx"
    wait_for "http://127.0.0.1:$ng_port/health" 15 "$NGINX_PID" || { fail "local: nginx serves"; return 1; }
    ADDR[a]="127.0.0.1:${PORT_OF[a]}"
    ADDR[b]="127.0.0.1:${PORT_OF[b]}"
    BASE="127.0.0.1:$ng_port"
    TOKEN="$(mint "$USER_NAME" user)"
    info "local: a on ${ADDR[a]}, b on ${ADDR[b]}, nginx on $BASE, PostgreSQL database $PG_DB," \
        "Redis on 127.0.0.1:$REDIS_PORT; SHUTDOWN_TIMEOUT_SECONDS=$TIMEOUT, GENERATION_LEASE_SECONDS=$LEASE"
}

local_redis_start() {
    redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        >> "$WORK/redis.log" 2>&1 &
    PIDS+=($!)
    REDIS_PID=$!
    local _
    for _ in $(seq 1 50); do redis_ping "$REDIS_PORT" && return 0; sleep 0.1; done
    return 1
}

local_kill() {
    kill -9 "${PID_OF[$1]}" 2>/dev/null
    wait "${PID_OF[$1]}" 2>/dev/null
}

# local_term NAME: SIGTERM, and waits until the process has exited.
local_term() {
    kill -TERM "${PID_OF[$1]}" 2>/dev/null
    wait "${PID_OF[$1]}" 2>/dev/null
}

local_start() {
    instance_start "$1"
    instance_health "$1"
}

local_restart_redis() {
    kill -9 "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null
    local_redis_start
}

# --- the compose deployment ------------------------------------------------------------------
PROJECT=chat-fault-drill
declare -A SERVICE_OF=([a]=chat-service [b]=chat-service-2)
compose() {
    local cmd=(docker compose)
    if ! docker compose version >/dev/null 2>&1 && command -v docker-compose >/dev/null 2>&1; then
        cmd=(docker-compose)
    fi
    "${cmd[@]}" -p "$PROJECT" -f "$ROOT/docker-compose.yml" -f "$WORK/fault-drill.compose.yml" \
        --env-file "$WORK/fault-drill.env" --profile production --profile scale "$@"
}

# compose_files: the drill's settings (as an env file for interpolation) and its additions to
# the project's compose file: the slow LLM as a service, which both instances ask.
compose_files() {
    local ng_port a_port b_port
    { read -r ng_port; read -r a_port; read -r b_port; } < <(free_ports 3)
    LEASE="${GENERATION_LEASE_SECONDS:-30}"
    TIMEOUT="${SHUTDOWN_TIMEOUT_SECONDS:-10}"
    cat > "$WORK/fault-drill.env" <<ENV
AUTH_SECRET_KEY=$SECRET
HASHID_SALT=fault-drill
DATABASE_URL=postgres://chat:chat@postgres:5432/chat
REDIS_URL=redis://redis:6379/0
LLM_PROVIDER=openai
OPENAI_BASE_URL=http://slow-llm:8080/v1
OPENAI_API_KEY=fault-drill
OPENAI_MODEL=fault-drill
NGINX_HTTP_PORT=127.0.0.1:$ng_port
CHAT_SERVICE_PORT=$a_port
CHAT_SERVICE_2_PORT=$b_port
CHAT_NETWORK_SUBNET=${DRILL_SUBNET:-172.29.0.0/24}
NGINX_IPV4=${DRILL_NGINX_IPV4:-172.29.0.10}
DRILL_LEASE=$LEASE
DRILL_TIMEOUT=$TIMEOUT
ENV
    cat > "$WORK/fault-drill.compose.yml" <<YAML
x-drill-instance: &drill-instance
  environment:
    GENERATION_LEASE_SECONDS: \${DRILL_LEASE}
    SHUTDOWN_TIMEOUT_SECONDS: \${DRILL_TIMEOUT}
  depends_on:
    slow-llm:
      condition: service_healthy

services:
  chat-service: *drill-instance
  chat-service-2: *drill-instance
  slow-llm:
    image: python:3-alpine
    command: ["python", "/slow_llm.py", "8080", "0.0.0.0"]
    volumes:
      - $ROOT/scripts/slow_llm.py:/slow_llm.py:ro
    healthcheck:
      test: ["CMD", "python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/')"]
      interval: 2s
      timeout: 2s
      retries: 10
    networks:
      - chat-net
YAML
    ADDR[a]="127.0.0.1:$a_port"
    ADDR[b]="127.0.0.1:$b_port"
    BASE="127.0.0.1:$ng_port"
}

compose_up() {
    local build=()
    command -v docker >/dev/null 2>&1 || { fail "compose: docker is installed (a Docker engine is needed)"; return 1; }
    compose_files
    [ "${DRILL_BUILD:-0}" = 1 ] && build=(--build)
    if ! compose up -d --wait "${build[@]}" > "$WORK/compose-up.log" 2>&1; then
        fail "compose: the deployment comes up healthy" "$(tail -n 20 "$WORK/compose-up.log")"
        return 1
    fi
    compose_health a && compose_health b || { fail "compose: both instances say redis connected"; return 1; }
    TOKEN="$(compose exec -T chat-service chat-service token --sub "$USER_NAME" --roles user --ttl 1h 2>/dev/null \
        | grep -oE '[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+' | tail -n 1)"
    info "compose: project $PROJECT, a (chat-service) on ${ADDR[a]}, b (chat-service-2) on ${ADDR[b]}," \
        "nginx on $BASE; SHUTDOWN_TIMEOUT_SECONDS=$TIMEOUT, GENERATION_LEASE_SECONDS=$LEASE"
}

compose_health() {
    local _
    for _ in $(seq 1 300); do
        redis_connected "$(curl -s --max-time 2 "http://${ADDR[$1]}/health")" && return 0
        sleep 0.2
    done
    return 1
}

compose_kill() { compose kill -s SIGKILL "${SERVICE_OF[$1]}" >/dev/null 2>&1; }
compose_term() { compose stop "${SERVICE_OF[$1]}" >/dev/null 2>&1; }
compose_start() { compose start "${SERVICE_OF[$1]}" >/dev/null 2>&1 && compose_health "$1"; }
compose_restart_redis() { compose restart redis >/dev/null 2>&1; }

cleanup_more() {
    if [ "$MODE" = compose ] && [ -f "$WORK/fault-drill.compose.yml" ] && [ "${DRILL_KEEP:-0}" != 1 ]; then
        compose logs --no-color > "$WORK/compose.log" 2>&1
        compose down -v --remove-orphans >/dev/null 2>&1
    fi
}

# The faults, by mode.
kill_instance() { "${MODE}_kill" "$1"; }
term_instance() { "${MODE}_term" "$1"; }
restart_redis() { "${MODE}_restart_redis"; }

# start_instance NAME: starts it again and waits until it answers, with Redis connected.
declare -A BACK_AT
start_instance() {
    "${MODE}_start" "$1" || return
    BACK_AT[$1]="$(now_ms)"
}

# nginx skips an instance that refused `max_fails` connections for `fail_timeout`, even once
# it is back: a rolling restart waits that long after one instance is back before it stops
# the next, or nginx has no instance left to send to (502).
FAIL_TIMEOUT="$(grep -oE 'fail_timeout=[0-9]+s' nginx.conf | head -n 1 | tr -dc 0-9)"

# nginx_takes NAME: waits until nginx sends requests to NAME again (fail_timeout after it came
# back).
nginx_takes() {
    local left
    [ -n "${BACK_AT[$1]:-}" ] || return 0
    left="$(awk -v back="${BACK_AT[$1]}" -v now="$(now_ms)" -v t="${FAIL_TIMEOUT:-10}" \
        'BEGIN { l = back + t * 1000 - now; printf "%.1f", (l > 0 ? l / 1000 : 0) }')"
    info "waiting ${left} s: nginx takes $1 again ${FAIL_TIMEOUT:-10} s (fail_timeout) after it is back"
    sleep "$left"
}

# --- what a client does and sees --------------------------------------------------------------
# new_conversation TITLE: a conversation of the drill's user, created through nginx; its id.
new_conversation() {
    curl -s --max-time 10 -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"title\":\"$1\"}" "http://$BASE/api/v1/users/me/conversations/" \
        | grep -oE '"id" *: *"[^"]+"' | head -n 1 | sed -E 's/.*"([^"]+)"$/\1/'
}

# client NAME WHERE: a WebSocket client of the drill's user on instance a or b, or through nginx.
client() {
    local address="$BASE"
    [ "$2" = nginx ] || address="${ADDR[$2]}"
    ws_open "$1" "ws://$address/ws/chat/$USER_NAME?token=$TOKEN"
    ws_send "$1" '{"type":"ping"}'
    ws_wait "$1" 10 "$(frame pong)"
}

# asked NAME WHERE CONVERSATION CONTENT DRILL: a client on WHERE that asked for a reply and has
# its first 3 chunks; otherwise the drill's step fails.
asked() {
    client "$1" "$2"
    say "$1" "$3" "$4"
    wait_chunks "$1" 3 20 && return
    fail "$5: a reply starts on $2" "$(ws_frames "$1")"
    return 1
}

say() { ws_send "$1" "{\"type\":\"send_message\",\"data\":{\"conversation_id\":\"$2\",\"content\":\"$3\"}}"; }
resume() { ws_send "$1" "{\"type\":\"resume\",\"data\":{\"conversation_id\":\"$2\",\"after_seq\":$3}}"; }

# chunks NAME: the chunks a client has received since its mark.
chunks() { tail -n +"$((WS_MARK[$1] + 1))" "$WORK/ws-$1.out" | grep -cE "$(frame ai_response_chunk)"; }

# wait_chunks NAME COUNT SECONDS: waits until the client has COUNT chunks since its mark.
wait_chunks() {
    local _
    for _ in $(seq 1 $(($3 * 20))); do
        [ "$(chunks "$1")" -ge "$2" ] && return 0
        sleep 0.05
    done
    return 1
}

# end_of NAME: the `send_message` frame a client got (since its mark), or nothing.
end_of() { tail -n +"$((WS_MARK[$1] + 1))" "$WORK/ws-$1.out" | grep -E "$(frame send_message)" | tail -n 1; }

# reply_to CONVERSATION CONTENT: what is stored after the user's message CONTENT, as
# "stored <chars> incomplete=<bool> stopped=<bool> <id> <error>", or "nothing stored".
reply_to() {
    local code
    code="$(curl -s -o "$WORK/messages.json" -w '%{http_code}' --max-time 10 -H "Authorization: Bearer $TOKEN" \
        "http://$BASE/api/v1/conversations/$1/messages?limit=1000")"
    if [ "$code" != 200 ]; then
        echo "messages not read: HTTP $code $(head -c 200 "$WORK/messages.json")"
        return
    fi
    python3 -c '
import json, sys
messages, content = json.load(sys.stdin), sys.argv[1]
for i, m in enumerate(messages):
    if m["role"] == "user" and m["content"] == content:
        after = messages[i + 1] if i + 1 < len(messages) else None
        if after is None or after["role"] != "assistant":
            break
        meta = after.get("message_metadata") or {}
        print("stored", len(after["content"]), "incomplete=%s" % bool(meta.get("incomplete")),
              "stopped=%s" % bool(meta.get("stopped")), after["id"], meta.get("error") or "")
        raise SystemExit
print("nothing stored")' "$2" < "$WORK/messages.json"
}

# chat_status WHERE CONVERSATION CONTENT: the status of a chat POST on instance WHERE.
chat_status() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 30 -X POST \
        -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
        -d "{\"content\":\"$3\"}" "http://${ADDR[$1]}/api/v1/conversations/$2/chat"
}

# free_after WHERE CONVERSATION SINCE_MS SECONDS: polls with chat POSTs on instance WHERE until
# one is answered 200 (409 while a reply holds the conversation); prints the seconds since
# SINCE_MS, or fails after SECONDS.
free_after() {
    local _
    for _ in $(seq 1 $(($4 * 4))); do
        if [ "$(chat_status "$1" "$2" "is it free now?")" = 200 ]; then
            seconds_since "$3"
            return 0
        fi
        sleep 0.25
    done
    return 1
}

# --- the drills -------------------------------------------------------------------------------
drill_kill() {
    echo "== kill: instance a killed (kill -9) mid-reply"
    KILLED=0
    kill_mid_reply
    [ "$KILLED" = 0 ] || start_instance a || fail "kill: a starts again"
}

kill_mid_reply() {
    local conv had t0 stored end free
    conv="$(new_conversation "drill: kill")"
    asked kill-sender a "$conv" "please reply slowly 1000" kill || return
    t0="$(now_ms)"
    kill_instance a
    KILLED=1
    had="$(chunks kill-sender)"
    if client kill-resumer nginx; then
        pass "kill: the client reconnects through nginx at once (the upgrade is not answered 502)"
    else
        fail "kill: the client reconnects through nginx at once" "$(ws_frames kill-resumer)"
        return
    fi
    resume kill-resumer "$conv" "$had"
    if free="$(free_after b "$conv" "$t0" $((LEASE + 15)))"; then
        pass "kill: the conversation takes a new message ${free} s after the kill (lease ${LEASE} s)"
    else
        fail "kill: the conversation takes a new message within the lease (${LEASE} s)" "still refused after $((LEASE + 15)) s"
    fi
    if ws_wait kill-resumer 5 "$(frame send_message)"; then
        end="$(end_of kill-resumer)"
        pass "kill: the client that resumed on b after $had chunks got the reply's end: $(head -c 200 <<< "$end")"
    else
        fail "kill: the client that resumed on b after $had chunks gets the reply's end" \
            "none $(seconds_since "$t0") s after the kill; $(chunks kill-resumer) chunks replayed"
    fi
    stored="$(reply_to "$conv" "please reply slowly 1000")"
    if [[ "$stored" == "stored "*"incomplete=True"* ]]; then
        pass "kill: the reply is stored partial: $stored"
    else
        fail "kill: the reply is stored partial, marked incomplete" "$stored"
    fi
    ws_close kill-sender
    ws_close kill-resumer
}

# drill_sigterm STOPPED OTHER: SIGTERM to STOPPED during a long reply, with a client resumed
# on OTHER.
drill_sigterm() {
    local stopped="$1" other="$2" conv t0 took stored end status
    echo "== sigterm: instance $stopped stopped (SIGTERM) during a reply longer than SHUTDOWN_TIMEOUT_SECONDS"
    nginx_takes "$other"
    conv="$(new_conversation "drill: sigterm $stopped")"
    asked "term-sender-$stopped" "$stopped" "$conv" "please reply slowly 1000" sigterm || return
    client "term-resumer-$stopped" "$other"
    resume "term-resumer-$stopped" "$conv" 3
    wait_chunks "term-resumer-$stopped" 1 10
    t0="$(now_ms)"
    term_instance "$stopped"
    took="$(seconds_since "$t0")"
    if awk -v t="$took" -v max="$((TIMEOUT + 1))" 'BEGIN { exit !(t <= max) }'; then
        pass "sigterm: $stopped exited ${took} s after SIGTERM (SHUTDOWN_TIMEOUT_SECONDS=$TIMEOUT)"
    else
        fail "sigterm: $stopped exits within SHUTDOWN_TIMEOUT_SECONDS=$TIMEOUT" "took ${took} s"
    fi
    status="$(chat_status "$other" "$conv" "and now?")"
    if [ "$status" = 200 ]; then
        pass "sigterm: the conversation takes a new message on $other at once"
    else
        fail "sigterm: the conversation takes a new message on $other at once" "chat POST answered $status"
    fi
    if ws_wait "term-resumer-$stopped" 5 "$(frame send_message)"; then
        end="$(end_of "term-resumer-$stopped")"
        if grep -qE '"success" *: *false' <<< "$end" && grep -q 'restarted' <<< "$end" \
            && grep -qE '"message_id" *: *"' <<< "$end"; then
            pass "sigterm: the client resumed on $other got the end, a failure naming the stored reply: $(head -c 220 <<< "$end")"
        else
            fail "sigterm: the client resumed on $other gets a failure naming the stored reply" "$end"
        fi
    else
        fail "sigterm: the client resumed on $other gets the reply's end" "none; $(chunks "term-resumer-$stopped") chunks"
    fi
    stored="$(reply_to "$conv" "please reply slowly 1000")"
    if [[ "$stored" == "stored "*"incomplete=True"*"restarted"* ]]; then
        pass "sigterm: the reply is stored partial: $stored"
    else
        fail "sigterm: the reply is stored partial, incomplete, 'the service restarted'" "$stored"
    fi
    ws_close "term-sender-$stopped"
    ws_close "term-resumer-$stopped"
    start_instance "$stopped" || fail "sigterm: $stopped starts again"
}

drill_short() {
    local i conv got=0 complete=0 missed="" whole
    whole="$(python3 -c 'print(len("".join(f"w{i} " for i in range(1, 21))))')"
    echo "== short: SIGTERM to a just before a short reply ends, $SHORT_TRIES times"
    for i in $(seq 1 "$SHORT_TRIES"); do
        conv="$(new_conversation "drill: short $i")"
        client "short-sender-$i" a
        client "short-resumer-$i" b
        say "short-sender-$i" "$conv" "please reply slowly 20"
        wait_chunks "short-sender-$i" 1 20
        resume "short-resumer-$i" "$conv" 1
        # Twenty chunks 50 ms apart: the signal comes about 100 ms before the end.
        wait_chunks "short-sender-$i" 18 10
        term_instance a
        if ws_wait "short-resumer-$i" 10 "$(frame send_message)" "$ok"; then
            got=$((got + 1))
        else
            missed="$missed $i"
        fi
        [[ "$(reply_to "$conv" "please reply slowly 20")" == "stored $whole incomplete=False stopped=False"* ]] \
            && complete=$((complete + 1))
        ws_close "short-sender-$i"
        ws_close "short-resumer-$i"
        start_instance a || { fail "short: a starts again"; return; }
    done
    if [ "$got" = "$SHORT_TRIES" ] && [ "$complete" = "$SHORT_TRIES" ]; then
        pass "short: $got of $SHORT_TRIES clients resumed on b got the answer; $complete of $SHORT_TRIES replies stored complete"
    else
        fail "short: every client resumed on b gets the answer, every reply is stored complete" \
            "answers: $got of $SHORT_TRIES (missed in tries:${missed:- none}), stored complete: $complete of $SHORT_TRIES"
    fi
}

drill_redis() {
    local conv second stop end
    echo "== redis: Redis restarted (empty) mid-reply"
    conv="$(new_conversation "drill: redis")"
    asked redis-sender a "$conv" "please reply slowly 400" redis || return
    restart_redis
    if ! "${MODE}_health_both"; then
        fail "redis: both instances reconnect to Redis"
        return
    fi
    pass "redis: Redis restarted empty; both instances say redis connected again"
    client redis-other b
    ws_mark redis-other
    say redis-other "$conv" "a second reply at once?"
    ws_wait redis-other 20 "$(frame send_message)"
    second="$(end_of redis-other)"
    if grep -q 'already being generated' <<< "$second"; then
        pass "redis: b refuses a second reply on the conversation while a's runs"
    else
        fail "redis: b refuses a second reply on the conversation while a's runs" "b answered: $(head -c 200 <<< "$second")"
    fi
    ws_mark redis-other
    ws_send redis-other "{\"type\":\"stop_generation\",\"data\":{\"conversation_id\":\"$conv\"}}"
    ws_wait redis-other 10 "$(frame stop_generation)"
    stop="$(tail -n +"$((WS_MARK[redis-other] + 1))" "$WORK/ws-redis-other.out" | grep -E "$(frame stop_generation)" | tail -n 1)"
    if grep -qE '"stopped" *: *true' <<< "$stop"; then
        pass "redis: a stop sent on b reaches the reply on a"
    else
        fail "redis: a stop sent on b reaches the reply on a" "b answered: ${stop:-nothing}"
    fi
    if ws_wait redis-sender 30 "$(frame send_message)"; then
        end="$(end_of redis-sender)"
        pass "redis: the client of the first reply got its end: $(head -c 160 <<< "$end")"
    else
        fail "redis: the client of the first reply gets its end" "$(ws_frames redis-sender)"
    fi
    ws_close redis-sender
    ws_close redis-other
}

local_health_both() { instance_health a && instance_health b; }
compose_health_both() { compose_health a && compose_health b; }

# runs DRILL: whether DRILL_ONLY leaves DRILL in.
runs() { [ -z "${DRILL_ONLY:-}" ] || [[ " $DRILL_ONLY " == *" $1 "* ]]; }

echo "== fault drill ($MODE)"
if [ "$MODE" = compose-config ]; then
    MODE=compose
    compose_files
    if out="$(compose config -q 2>&1)"; then
        pass "compose: the drill's deployment (docker-compose.yml with $WORK/fault-drill.compose.yml) is valid"
    else
        fail "compose: the drill's deployment is valid" "$out"
    fi
    MODE=compose-config
    summary
    exit
fi
if ! "${MODE}_up"; then
    show_logs
    summary
    exit
fi
runs kill && drill_kill
if runs sigterm; then
    drill_sigterm a b
    drill_sigterm b a
fi
runs short && drill_short
runs redis && drill_redis
if [ "$FAILED" -gt 0 ]; then show_logs; fi
summary
