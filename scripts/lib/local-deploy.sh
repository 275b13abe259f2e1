# Functions shared by scripts/deploy-check.sh and scripts/fault-drill.sh: reporting, a work
# directory cleaned up at exit, free ports, the project's nginx.conf run locally, WebSocket
# clients (websocat), the slow OpenAI-compatible server (scripts/slow_llm.py), and service
# instances on PostgreSQL and Redis. Sourced, never run; the caller sets CHECK_NAME (the
# closing line's name) and BIN (the binary) before using them.

PASSED=0
FAILED=0
SKIPPED=0
pass() { PASSED=$((PASSED + 1)); printf 'PASS  %s\n' "$1"; }
fail() { FAILED=$((FAILED + 1)); printf 'FAIL  %s\n' "$1"; [ $# -lt 2 ] || printf '      %s\n' "${@:2}"; }
skip() { SKIPPED=$((SKIPPED + 1)); printf 'SKIP  %s\n' "$1"; [ $# -lt 2 ] || printf '      %s\n' "${@:2}"; }
info() { printf '      %s\n' "$*"; }

# summary: the closing line; fails when a step failed (the script's exit status).
summary() {
    local line="$CHECK_NAME: $PASSED passed, $FAILED failed"
    [ "$SKIPPED" = 0 ] || line="$line, $SKIPPED skipped"
    echo "$line"
    [ "$FAILED" = 0 ]
}

WORK="$(mktemp -d "${TMPDIR:-/tmp}/$CHECK_NAME.XXXXXX")"
# nginx workers run as an unprivileged user when nginx starts as root: let them in.
chmod 755 "$WORK"
PIDS=()          # every background process, stopped at exit (newest first)
PG_DB=""         # a PostgreSQL database of the run's own, dropped at exit
REDIS_PREFIX=""  # a Redis key prefix of the run's own on 127.0.0.1:6379, whose keys are deleted at exit

# cleanup: stops every background process (TERM, then KILL after 5 s), drops the database,
# deletes the Redis keys, removes the work directory (unless KEEP_WORK=1); runs the caller's
# cleanup_more first when it defines one.
cleanup() {
    local pid i
    if declare -F cleanup_more >/dev/null; then cleanup_more; fi
    for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ -n "$PG_DB" ]; then
        psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$PG_DB\" WITH (FORCE)" \
            >/dev/null 2>&1 || echo "could not drop database $PG_DB"
    fi
    if [ -n "$REDIS_PREFIX" ] && command -v redis-cli >/dev/null 2>&1; then
        redis-cli -h 127.0.0.1 -p 6379 --scan --pattern "$REDIS_PREFIX:*" 2>/dev/null \
            | xargs -r redis-cli -h 127.0.0.1 -p 6379 del >/dev/null 2>&1 || true
    fi
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# free_ports N: N distinct free loopback ports, one per line.
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
sockets = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print("\n".join(str(s.getsockname()[1]) for s in sockets))
PY
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

# show_logs: the last lines of every log of the services and nginx.
show_logs() {
    local f
    for f in "$WORK"/*.log "$WORK"/nginx*/error.log; do
        [ -s "$f" ] || continue
        echo "      --- last lines of ${f#"$WORK"/} ---"
        grep -v 'limiting requests' "$f" | tail -n 20 | sed 's/^/      /'
    done
}

# mint SUB ROLES: a token from `chat-service token`, signed with $SECRET.
mint() {
    (cd "$WORK" && timeout 10 env -i "PATH=$PATH" "HOME=$WORK" "AUTH_SECRET_KEY=$SECRET" \
        "$BIN" token --sub "$1" --roles "$2" --ttl 1h 2>/dev/null \
        | grep -oE '[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+' | tail -n 1)
}

# --- nginx with the project's nginx.conf ---------------------------------------------------
# subst FILE PATTERN REPLACEMENT: replaces the one line of FILE that matches PATTERN (sed ERE
# on whole lines, | as delimiter); fails when not exactly one line matches.
subst() {
    local n
    n="$(grep -cE "$2" "$1")"
    if [ "$n" != 1 ]; then
        info "nginx.conf: expected one line matching /$2/, found $n"
        return 1
    fi
    sed -i -E "s|$2|$3|" "$1"
}

# nginx_conf DIR PORT UPSTREAM_PORT...: writes DIR/nginx.conf, the project's file with only its
# host-specific lines replaced (each must match exactly once), listening on 127.0.0.1:PORT with
# one upstream server per loopback UPSTREAM_PORT (what Docker's DNS gives for the compose
# service's instances); then `nginx -t`. Returns non-zero on failure, with the reason in
# NGINX_ERROR.
nginx_conf() {
    local dir="$1" port="$2" conf="$1/nginx.conf" worker_user servers="" sep="" p ok=1
    shift 2
    for p in "$@"; do
        servers="$servers$sep\\1server 127.0.0.1:$p \\2"
        sep='\n'
    done
    mkdir -p "$dir/temp"
    if [ "$(id -u)" = 0 ]; then
        worker_user="user nobody $(id -gn nobody 2>/dev/null || echo nogroup);"
    else
        worker_user="# user: nginx runs unprivileged here"
    fi
    cp nginx.conf "$conf"
    subst "$conf" '^user [^;]+;$' "$worker_user" || ok=0
    subst "$conf" '^pid [^;]+;$' "pid $dir/nginx.pid;" || ok=0
    subst "$conf" '^error_log [^ ]+ ' "error_log $dir/error.log " || ok=0
    subst "$conf" '^( *)access_log [^ ]+ ' "\\1access_log $dir/access.log " || ok=0
    subst "$conf" '^( *)server chat-service:8000 (.*)$' "$servers" || ok=0
    subst "$conf" '^( *)listen 80;$' "\\1listen 127.0.0.1:$port;" || ok=0
    subst "$conf" '^http \{$' "http {\\
    client_body_temp_path $dir/temp/body;\\
    proxy_temp_path $dir/temp/proxy;\\
    fastcgi_temp_path $dir/temp/fastcgi;\\
    uwsgi_temp_path $dir/temp/uwsgi;\\
    scgi_temp_path $dir/temp/scgi;" || ok=0
    if [ "$ok" != 1 ]; then
        NGINX_ERROR="host-specific lines not found"
        return 1
    fi
    NGINX_ERROR="$(nginx -t -p "$dir" -c "$conf" -e "$dir/error.log" 2>&1)"
}

# nginx_start DIR: runs nginx with DIR/nginx.conf in the foreground of a background job.
nginx_start() {
    nginx -p "$1" -c "$1/nginx.conf" -e "$1/error.log" -g 'daemon off;' > "$1/stdout.log" 2>&1 &
    PIDS+=($!)
    NGINX_PID=$!
}

# --- WebSocket clients ---------------------------------------------------------------------
# ws_open NAME URL: a websocat client; frames to send go through ws_send, frames received land
# in $WORK/ws-NAME.out, one per line. ws_mark NAME: later ws_wait calls look only at frames
# received from now on.
declare -A WS_FD WS_PID WS_MARK
ws_open() {
    local fd
    mkfifo "$WORK/ws-$1.in"
    exec {fd}<>"$WORK/ws-$1.in"
    WS_FD[$1]=$fd
    WS_MARK[$1]=0
    timeout 120 websocat --text "$2" < "$WORK/ws-$1.in" > "$WORK/ws-$1.out" 2> "$WORK/ws-$1.err" &
    PIDS+=($!)
    WS_PID[$1]=$!
}
ws_send() { printf '%s\n' "$2" >&"${WS_FD[$1]}"; }
ws_mark() { WS_MARK[$1]="$(wc -l < "$WORK/ws-$1.out")"; }
# ws_match NAME PATTERN...: a frame since the mark that matches every PATTERN (extended regexes).
ws_match() {
    local frames p
    frames="$(tail -n +"$((WS_MARK[$1] + 1))" "$WORK/ws-$1.out")"
    shift
    for p in "$@"; do frames="$(grep -E -- "$p" <<< "$frames")" || return 1; done
}
# ws_wait NAME SECONDS PATTERN...: waits for such a frame.
ws_wait() {
    local name="$1" seconds="$2" _
    shift 2
    for _ in $(seq 1 $((seconds * 10))); do
        ws_match "$name" "$@" && return 0
        kill -0 "${WS_PID[$name]}" 2>/dev/null || { ws_match "$name" "$@"; return; }
        sleep 0.1
    done
    return 1
}
ws_close() {
    local fd="${WS_FD[$1]}"
    exec {fd}>&-
    kill "${WS_PID[$1]}" 2>/dev/null
    wait "${WS_PID[$1]}" 2>/dev/null
}
# ws_frames NAME: the last frames received, for a failure's detail.
ws_frames() { echo "frames on $1: $(tail -c 400 "$WORK/ws-$1.out" | tr '\n' ' ')"; }
# frame TYPE: a pattern for a frame's type; ok: one for a successful answer.
frame() { printf '"type" *: *"%s"' "$1"; }
ok='"success" *: *true'

# --- PostgreSQL, Redis, the slow LLM and the service's instances ---------------------------
# port_open PORT / redis_ping [PORT]: whether a server answers on 127.0.0.1.
port_open() {
    python3 -c 'import socket, sys; socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()' \
        "$1" 2>/dev/null
}
redis_ping() {
    python3 - "${1:-6379}" <<'PY' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1) as s:
    s.sendall(b"PING\r\n")
    raise SystemExit(0 if s.recv(16).startswith(b"+PONG") else 1)
PY
}

# redis_connected HEALTH: whether a /health answer says that Redis is connected.
redis_connected() { grep -qE '"redis" *: *"connected"' <<< "$1"; }

# create_database: a fresh database on 127.0.0.1:5432 (user postgres) in PG_DB, dropped at exit.
create_database() {
    local db out
    db="${CHECK_NAME//-/_}_$(date +%s)_$$"
    if ! out="$(psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -v ON_ERROR_STOP=1 -qc "CREATE DATABASE \"$db\"" 2>&1)"; then
        CREATE_ERROR="$out"
        return 1
    fi
    PG_DB="$db"
}

# slow_llm_start PORT: scripts/slow_llm.py on 127.0.0.1:PORT; fails when it does not answer.
slow_llm_start() {
    python3 "$ROOT/scripts/slow_llm.py" "$1" > "$WORK/slow-llm.log" 2>&1 &
    PIDS+=($!)
    wait_for "http://127.0.0.1:$1/" 10 "$!"
}

# instance_start NAME: an instance of one deployment on 127.0.0.1:${PORT_OF[NAME]}, with the
# settings in INSTANCE_ENV (database, Redis, key, LLM...); its log (appended to across
# restarts) is $WORK/instance-NAME.log and its process id PID_OF[NAME].
declare -A PORT_OF PID_OF
INSTANCE_ENV=()
instance_start() {
    mkdir -p "$WORK/$1"
    (cd "$WORK/$1" && exec env -i "PATH=$PATH" "HOME=$WORK/$1" "TMPDIR=$WORK" \
        HOST=127.0.0.1 "PORT=${PORT_OF[$1]}" "${INSTANCE_ENV[@]}" \
        "$BIN" serve) >> "$WORK/instance-$1.log" 2>&1 &
    PIDS+=($!)
    PID_OF[$1]=$!
}

# instance_health NAME [SECONDS]: waits (30 s by default) until the instance's /health says
# that Redis is connected; its last answer is in HEALTH_OF[NAME].
declare -A HEALTH_OF
instance_health() {
    local _
    for _ in $(seq 1 $((${2:-30} * 5))); do
        HEALTH_OF[$1]="$(curl -s --max-time 2 "http://127.0.0.1:${PORT_OF[$1]}/health")"
        redis_connected "${HEALTH_OF[$1]}" && return 0
        kill -0 "${PID_OF[$1]}" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}
