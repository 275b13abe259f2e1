#!/usr/bin/env bash
# Benchmarks behind BENCHMARKS.md. Loopback only; every run is bounded in time.
#
#   scripts/bench.sh http       # /health and the authenticated conversation list, wrk, c=32
#   scripts/bench.sh analytics  # the list with analytics absent, healthy, never answering,
#                               # and healthy with Nagle on (ROUNDS=10 rounds of 2 s
#                               # samples, each between two samples of "absent"); with
#                               # SERVICE_CPUS=0 CLIENT_CPUS=1, the receivers and wrk
#                               # on a core of their own
#   scripts/bench.sh postgres   # the authenticated list on PostgreSQL (BENCH_POSTGRES_URL)
#   scripts/bench.sh fastapi    # the list with a FastAPI/uvicorn analytics receiver
#                               # (ROUNDS=2)
#   scripts/bench.sh ws         # WebSocket round trips (SQLite full, normal, PostgreSQL),
#                               # the time added to the first chunk, idle memory
#   scripts/bench.sh idle       # resident memory of 10,000 idle WebSocket connections on a
#                               # service restarted with their conversations, then round
#                               # trips (200 connections); with BEFORE_BIN=another build,
#                               # both builds in turn (ROUNDS=2)
#   scripts/bench.sh writes     # POST a message, each answered once durable: SQLite with
#                               # SQLITE_SYNCHRONOUS=full and normal, PostgreSQL
#                               # (BENCH_POSTGRES_URL)
#   scripts/bench.sh search     # full-text search: 1,000,000 generated messages over 1,000
#                               # users on SQLite and PostgreSQL, searched for one user
#                               # (search_bench), then the POST message rate with the search
#                               # index against without it (ROUNDS=2 rounds, alternating)
#                               # and, on SQLite, the queue of messages to index during the
#                               # run and how long it takes to empty after it;
#                               # SEARCH_PER_MESSAGE=1 adds SQLite with each message indexed
#                               # by its insert trigger, as before the queue;
#                               # SEARCH_MESSAGES=N for a smaller corpus, SEARCH_SKIP_FILL=1
#                               # for the write rates alone
#
# Needs wrk (apt-get install wrk) and a release build:
#   cargo build --release --bins --examples
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=${CARGO_TARGET_DIR:-target}
# SERVICE_BIN runs another build of the service (an older one, to compare in the same run).
BIN=${SERVICE_BIN:-$TARGET/release/chat-service}
TOOL=$TARGET/release/examples/bench
# SERVICE_CPUS / CLIENT_CPUS (taskset lists, e.g. 0 and 1) put the service on some cores and wrk
# and the helpers (analytics receivers, fake LLM) on the others.
ON_SERVICE_CPUS=(); [ -n "${SERVICE_CPUS:-}" ] && ON_SERVICE_CPUS=(taskset -c "$SERVICE_CPUS")
ON_CLIENT_CPUS=(); [ -n "${CLIENT_CPUS:-}" ] && ON_CLIENT_CPUS=(taskset -c "$CLIENT_CPUS")
SECRET=bench-secret-0123456789
DURATION=${DURATION:-10s}
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Starts a helper from the tool that prints its URL on its first line; sets URL.
start_tool() {
  local out=$WORK/$1.url; shift
  "${ON_CLIENT_CPUS[@]}" "$TOOL" "$@" > "$out" 2> /dev/null < /dev/null &
  PIDS+=($!)
  for _ in $(seq 100); do [ -s "$out" ] && break; sleep 0.05; done
  URL=$(head -1 "$out")
}

# Starts the service with extra environment; sets PORT and SERVICE_PID.
start_service() {
  PORT=$(free_port)
  env -i PATH="$PATH" HOME="$HOME" HOST=127.0.0.1 PORT="$PORT" LOG_LEVEL=warn \
    DATABASE_URL="sqlite://$WORK/chat-$PORT.db" AUTH_SECRET_KEY=$SECRET \
    LLM_PROVIDER=openai OPENAI_BASE_URL="$LLM_URL" OPENAI_API_KEY=bench OPENAI_MODEL=fake-model \
    MAX_GENERATIONS_PER_USER=3 "$@" "${ON_SERVICE_CPUS[@]}" "$BIN" serve > "$WORK/service-$PORT.log" 2>&1 < /dev/null &
  SERVICE_PID=$!
  PIDS+=("$SERVICE_PID")
  for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$PORT/health" > /dev/null 2>&1 && return 0
    sleep 0.05
  done
  echo "the service did not start" >&2; cat "$WORK/service-$PORT.log" >&2; exit 1
}

# A process's resident memory from /proc: in all, anonymous, file-backed.
resident() {
  awk '/^(VmRSS|RssAnon|RssFile):/ {v[$1] = $2 / 1024}
    END {printf "%.1f MiB (anonymous %.1f, file %.1f)", v["VmRSS:"], v["RssAnon:"], v["RssFile:"]}' \
    /proc/"$1"/status
}

token() { AUTH_SECRET_KEY=$SECRET "$BIN" token --sub "$1" --roles user --ttl 1h; }

seed_conversations() {
  local token=$1 i
  for i in $(seq 20); do
    curl -fs -o /dev/null -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
      -d "{\"title\": \"conversation $i\"}" "http://127.0.0.1:$PORT/api/v1/users/me/conversations"
  done
}

wrk_run() {
  local label=$1; shift
  echo "### $label"
  echo '$ wrk -t2 -c32 -d'"$DURATION"' --latency '"$*"
  wrk -t2 -c32 -d"$DURATION" --latency "$@" | grep -E 'Requests/sec|^ +50%|^ +99%|Non-2xx|Socket errors' 
}

# wrk POSTs messages into a new conversation of the running service; $1 names the setting.
post_messages() {
  local token conversation
  token=$(token bench)
  conversation=$(curl -fs -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -d '{"title": "writes"}' "http://127.0.0.1:$PORT/api/v1/users/me/conversations" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["id"])')
  wrk_run "$1: POST /api/v1/conversations/{id}/messages" -s "$WORK/post-message.lua" \
    -H "Authorization: Bearer $token" "http://127.0.0.1:$PORT/api/v1/conversations/$conversation/messages"
}

# A database of its own on the server at BENCH_POSTGRES_URL, dropped at exit; sets
# PG_DATABASE_URL.
postgres_database() {
  PG_SERVER=${BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}
  PG_DB=chat_bench_$$
  psql "$PG_SERVER/postgres" -qc "CREATE DATABASE $PG_DB" > /dev/null
  trap 'cleanup; psql "$PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" > /dev/null' EXIT
  PG_DATABASE_URL=$PG_SERVER/$PG_DB
}

# The wrk script that POSTs a message of an ordinary length.
post_message_script() {
  cat > "$WORK/post-message.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"role": "user", "content": "A message of an ordinary length, about one line of chat."}'
LUA
}

# Durable writes: every 201 is sent once the message's transaction is on disk (SQLite commits
# the writes that queue together as one transaction, with one flush).
bench_writes() {
  post_message_script
  local sync
  for sync in full normal; do
    start_service SQLITE_SYNCHRONOUS=$sync
    post_messages "SQLite, SQLITE_SYNCHRONOUS=$sync"
    kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
  done
  postgres_database
  start_service DATABASE_URL="$PG_DATABASE_URL"
  post_messages "PostgreSQL"
}

# Full-text search on a large corpus, one user's searches timed through the store.
bench_search_queries() {
  local messages=${SEARCH_MESSAGES:-1000000} url out words
  local search_tool=$TARGET/release/examples/search_bench
  for backend in sqlite postgres; do
    if [ $backend = sqlite ]; then
      url="sqlite://$WORK/search.db"
    else
      postgres_database
      url=$PG_DATABASE_URL
    fi
    echo "### $backend: search_bench fill --messages $messages (1,000 users, 10 conversations each)"
    out=$("$search_tool" fill --database "$url" --messages "$messages")
    echo "$out"
    words=$(sed -n 's/^words: //p' <<< "$out")
    echo "### $backend: search_bench query $words"
    eval "\"$search_tool\" query --database \"$url\" $words"
    if [ $backend = sqlite ]; then
      ls -l "$WORK/search.db" | awk '{printf "file    %.1f MiB\n", $5 / 1048576}'
    fi
  done
}

# While a run with the search index on SQLite goes on (until $WORK/stop exists): the largest
# queue of messages waiting to be indexed (sampled every 50 ms); then the queue when the run
# ended, how long the service took to index it, and whether every message is indexed (each
# holds the word `ordinary`).
watch_search_queue() {
  rm -f "$WORK/stop"
  python3 - "$WORK/chat-$PORT.db" "$WORK/stop" <<'PY' &
import os, sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], timeout=10)
count = lambda sql: db.execute(sql).fetchone()[0]
queue = lambda: count("SELECT COUNT(*) FROM messages_search_queue")
largest = 0
while not os.path.exists(sys.argv[2]):
    largest = max(largest, queue())
    time.sleep(0.05)
ended = time.monotonic()
left = queue()
while queue():
    time.sleep(0.005)
took = time.monotonic() - ended
messages = count("SELECT COUNT(*) FROM messages")
indexed = count("SELECT COUNT(*) FROM messages_search WHERE messages_search MATCH 'ordinary'")
print(f"search queue: at most {largest} messages during the run; {left} when it ended, "
      f"empty {took:.2f} s later; {indexed} of {messages} messages indexed")
PY
  WATCHER=$!
}

# The search index as before the queue, on the running service's SQLite database: each
# message indexed by its own insert trigger (migration 0007's).
index_per_message() {
  python3 - "$WORK/chat-$PORT.db" migrations/sqlite/0007_search.sql <<'PY'
import re, sqlite3, sys
db = sqlite3.connect(sys.argv[1])
trigger = re.search(r"CREATE TRIGGER messages_search_insert .*?END;", open(sys.argv[2]).read(), re.S)
db.execute("DROP TRIGGER messages_search_insert")
db.execute(trigger.group(0))
db.commit()
PY
}

# The POST message rate with the search index and without it: the same build, on a database
# whose search triggers (SQLite) or search column and indexes (PostgreSQL) were dropped after
# the migrations ran. Rounds alternate, so a drift of the machine hits both alike.
bench_search_writes() {
  post_message_script
  local round variant
  [ -n "${PG_DB:-}" ] || postgres_database
  local variants=(with without)
  [ -z "${SEARCH_PER_MESSAGE:-}" ] || variants+=(per-message)
  for round in $(seq "${ROUNDS:-2}"); do
    for variant in "${variants[@]}"; do
      start_service SQLITE_SYNCHRONOUS=full
      if [ $variant = without ]; then
        python3 - "$WORK/chat-$PORT.db" <<'PY'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND name LIKE '%search%'").fetchall():
    db.execute(f"DROP TRIGGER {name}")
db.commit()
PY
      fi
      [ $variant = per-message ] && index_per_message
      [ $variant = with ] && watch_search_queue
      post_messages "round $round, SQLite (SQLITE_SYNCHRONOUS=full), $variant the search index"
      if [ $variant = with ]; then touch "$WORK/stop"; wait "$WATCHER"; fi
      kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
    done
    for variant in with without; do
      psql "$PG_SERVER/postgres" -qc "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" > /dev/null
      psql "$PG_SERVER/postgres" -qc "CREATE DATABASE $PG_DB" > /dev/null
      start_service DATABASE_URL="$PG_DATABASE_URL"
      if [ $variant = without ]; then
        psql "$PG_DATABASE_URL" -qc "ALTER TABLE messages DROP COLUMN search; DROP INDEX conversations_search" > /dev/null
      fi
      post_messages "round $round, PostgreSQL, $variant the search index"
      kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
    done
  done
}

# Idle memory: CONNECTIONS (10,000) connections, each bound to a conversation of its own. The
# conversations are created through a first service process, which is then stopped: the
# measured one starts on the same database, as a service restarted under its users does.
# Then round trips with 200 connections (each sends back to back and they connect at once:
# the per-user message rate and the per-address cap on connections are off). With BEFORE_BIN, that build is measured in turn
# with this one (the database is this build's; both must share its migrations).
bench_idle() {
  ulimit -n "$(ulimit -Hn)"  # 10,000 connections need about that many descriptors on each side
  local n=${CONNECTIONS:-10000} db=sqlite://$WORK/idle.db list=$WORK/idle-conversations
  local builds=("$BIN") round build
  [ -n "${BEFORE_BIN:-}" ] && builds+=("$BEFORE_BIN")
  start_service DATABASE_URL="$db"
  echo "### $BIN, fresh: $(resident "$SERVICE_PID")"
  echo "### bench conversations --count $n"
  "$TOOL" conversations --addr "127.0.0.1:$PORT" --secret $SECRET --count "$n" --out "$list" \
    --pid "$SERVICE_PID"
  kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
  for round in $(seq "${ROUNDS:-2}"); do
    for build in "${builds[@]}"; do
      BIN=$build start_service DATABASE_URL="$db" WS_IDLE_TIMEOUT_SECONDS=600
      echo "### round $round, $build: restarted on the $n conversations, fresh: $(resident "$SERVICE_PID")"
      echo "### bench idle --connections $n --conversations (the list)"
      "$TOOL" idle --addr "127.0.0.1:$PORT" --secret $SECRET --connections "$n" \
        --conversations "$list" --pid "$SERVICE_PID"
      kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
    done
  done
  for round in $(seq "${ROUNDS:-2}"); do
    for build in "${builds[@]}"; do
      for sync in full normal; do
        BIN=$build start_service SQLITE_SYNCHRONOUS=$sync WS_IDLE_TIMEOUT_SECONDS=600 \
          RATE_LIMIT_MESSAGES_PER_MINUTE=0 MAX_CONNECTIONS_PER_IP=0
        echo "### round $round, $build, SQLite $sync: bench roundtrip --connections 200 --seconds 10"
        "$TOOL" roundtrip --addr "127.0.0.1:$PORT" --secret $SECRET --connections 200 --seconds 10
        kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
      done
    done
  done
}

start_tool llm llm-server; LLM_URL=$URL

case "${1:-http}" in
  http)
    start_service
    TOKEN=$(token bench)
    seed_conversations "$TOKEN"
    # The machine's ceiling in the same run: a bare axum handler returning a constant.
    start_tool bare bare-server; BARE_URL=$URL
    for run in 1 2; do
      wrk_run "run $run: bare axum handler (the ceiling)" "$BARE_URL/"
      wrk_run "run $run: GET /health" "http://127.0.0.1:$PORT/health"
      wrk_run "run $run: GET /api/v1/users/me/conversations (20 conversations)" \
        -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/v1/users/me/conversations"
    done
    ;;
  analytics)
    start_tool analytics-ok analytics-server --mode ok; OK_URL=$URL
    start_tool analytics-stall analytics-server --mode stall; STALL_URL=$URL
    start_tool analytics-nagle analytics-server --mode ok-nagle; NAGLE_URL=$URL
    LABELS=("(a) absent" "(b) healthy" "(c) never answering" "(b') healthy, Nagle on")
    SETTINGS=("" "ANALYTICS_SERVICE_URL=$OK_URL" "ANALYTICS_SERVICE_URL=$STALL_URL"
      "ANALYTICS_SERVICE_URL=$NAGLE_URL")
    # One service per setting, all started up front; idle ones cost nothing. This machine's
    # speed drifts by 20% in spells of 10-20 s, so each sample of (b), (c), ... is taken
    # between two samples of (a) and compared with their mean.
    URLS=(); TOKENS=(); SERVICE_PIDS=()
    for s in "${!SETTINGS[@]}"; do
      # shellcheck disable=SC2086
      start_service ${SETTINGS[$s]}
      TOKENS+=("$(token bench)")
      seed_conversations "${TOKENS[$s]}"
      URLS+=("http://127.0.0.1:$PORT")
      SERVICE_PIDS+=("$SERVICE_PID")
    done
    # CPU time of all of a process's threads, in ns. Less disturbed than requests/s by other
    # work on the machine, which takes the CPU from the service while it waits for I/O.
    cpu_ns() { awk '{ns += $1} END {printf "%d", ns}' /proc/"$1"/task/*/schedstat; }
    sample() {  # setting index -> "index requests/s CPU-ns-per-request" in $WORK/samples
      local before after out rps requests
      before=$(cpu_ns "${SERVICE_PIDS[$1]}")
      out=$("${ON_CLIENT_CPUS[@]}" wrk -t2 -c32 -d"$SAMPLE" -H "Authorization: Bearer ${TOKENS[$1]}" \
        "${URLS[$1]}/api/v1/users/me/conversations")
      after=$(cpu_ns "${SERVICE_PIDS[$1]}")
      rps=$(awk '/Requests\/sec/ {print $2}' <<< "$out")
      requests=$(awk '/requests in/ {print $1}' <<< "$out")
      echo "$1 $rps $(( (after - before) / requests ))" >> "$WORK/samples"
    }
    SAMPLE=${SAMPLE:-2s}; ROUNDS=${ROUNDS:-10}; n=${#SETTINGS[@]}
    for s in "${!SETTINGS[@]}"; do SAMPLE=1s sample "$s"; done  # warm-up
    : > "$WORK/samples"
    echo "\$ wrk -t2 -c32 -d$SAMPLE -H 'Authorization: Bearer ...' URL/api/v1/users/me/conversations"
    echo "  ($ROUNDS rounds: each other setting in turn, with (a) before and after each)"
    sample 0
    for round in $(seq 0 $((ROUNDS - 1))); do
      for k in $(seq 0 $((n - 2))); do
        sample $(( (round + k) % (n - 1) + 1 ))
        sample 0
      done
    done
    for s in "${!SETTINGS[@]}"; do
      echo "## ${LABELS[$s]}:" \
        "$(curl -fs "${URLS[$s]}/metrics" | grep -E '^analytics_events_(sent|dropped|failed)' | tr '\n' ' ')"
    done
    python3 - "$WORK/samples" "${LABELS[@]}" <<'PY'
import statistics, sys
samples = [(int(i), float(v), float(ns) / 1000) for i, v, ns in (line.split() for line in open(sys.argv[1]))]
labels = sys.argv[2:]
print("samples in order:", " ".join(f"{labels[i].split()[0]}={v:.0f}/{us:.1f}us" for i, v, us in samples))
# Each sample of a setting against the mean of the samples of (a) just before and after it.
ratios = {i: ([], []) for i in range(len(labels))}
for p in range(1, len(samples) - 1):
    i, v, us = samples[p]
    if i:
        before, after = samples[p - 1], samples[p + 1]
        ratios[i][0].append(v / ((before[1] + after[1]) / 2) - 1)
        ratios[i][1].append(us / ((before[2] + after[2]) / 2) - 1)
def spread(values):
    q = statistics.quantiles(values, n=4)
    return f" {statistics.median(values) * 100:+.1f}% | {q[0] * 100:+.1f}% to {q[2] * 100:+.1f}% |"
print("| setting | median requests/s | min | max | vs (a) before and after: median | middle half"
      " | CPU per request | vs (a): median | middle half |")
print("|---|---|---|---|---|---|---|---|---|")
for i, label in enumerate(labels):
    values = [v for j, v, _ in samples if j == i]
    cpu = statistics.median(us for j, _, us in samples if j == i)
    line = f"| {label} | {statistics.median(values):,.0f} | {min(values):,.0f} | {max(values):,.0f} |"
    line += spread(ratios[i][0]) if i else " | |"
    line += f" {cpu:.1f} µs |"
    line += spread(ratios[i][1]) if i else " | |"
    print(line)
PY
    ;;
  postgres)
    # The list on PostgreSQL: a database of its own on the server at BENCH_POSTGRES_URL.
    postgres_database
    start_service DATABASE_URL="$PG_DATABASE_URL"
    TOKEN=$(token bench)
    seed_conversations "$TOKEN"
    for run in 1 2; do
      wrk_run "run $run, PostgreSQL: GET /api/v1/users/me/conversations (20 conversations)" \
        -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/v1/users/me/conversations"
    done
    ;;
  fastapi)
    # The analytics service as the platform builds it: FastAPI on uvicorn (one process).
    VENV=${FASTAPI_VENV:-$HOME/.cache/chat-service/fastapi-venv}
    [ -x "$VENV/bin/uvicorn" ] || { python3 -m venv "$VENV" && "$VENV/bin/pip" install -q fastapi uvicorn httptools; }
    RECEIVER_PORT=$(free_port)
    "$VENV/bin/uvicorn" --app-dir scripts fastapi_receiver:app --host 127.0.0.1 \
      --port "$RECEIVER_PORT" --log-level warning > "$WORK/uvicorn.log" 2>&1 < /dev/null &
    PIDS+=($!)
    for _ in $(seq 100); do curl -fs "http://127.0.0.1:$RECEIVER_PORT/count" > /dev/null 2>&1 && break; sleep 0.1; done
    for round in $(seq "${ROUNDS:-2}"); do
      start_service ANALYTICS_SERVICE_URL="http://127.0.0.1:$RECEIVER_PORT"
      TOKEN=$(token bench)
      seed_conversations "$TOKEN"
      wrk_run "round $round, FastAPI receiver: GET /api/v1/users/me/conversations" \
        -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/api/v1/users/me/conversations"
      curl -fs "http://127.0.0.1:$PORT/metrics" | grep -E '^analytics_events_(sent|dropped|failed)' || true
      kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
    done
    ;;
  ws)
    ulimit -n "$(ulimit -Hn)"  # 10,000 connections need about that many descriptors on each side
    # Each exchange commits twice (the user's message, the reply); with SQLite's default
    # SQLITE_SYNCHRONOUS=full each commit waits for the disk. `normal` shows what the rest of
    # the path sustains; PostgreSQL (BENCH_POSTGRES_URL) commits with its own fsync.
    postgres_database
    SETTINGS=("SQLITE_SYNCHRONOUS=full" "SQLITE_SYNCHRONOUS=normal" "DATABASE_URL=$PG_DATABASE_URL")
    LABELS=("SQLite, full" "SQLite, normal" "PostgreSQL")
    for s in "${!SETTINGS[@]}"; do
      start_service WS_IDLE_TIMEOUT_SECONDS=600 "${SETTINGS[$s]}"
      echo "### ${LABELS[$s]}: bench roundtrip --connections 200 --seconds 10"
      "$TOOL" roundtrip --addr "127.0.0.1:$PORT" --secret $SECRET --connections 200 --seconds 10
      kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
    done
    # The time the service adds to the first chunk, one exchange at a time: with an instant
    # LLM (the user's message is stored before its first token arrives), and with one that
    # takes 50 ms to its first token, as real models take longer, so the store overlaps it.
    start_tool llm-slow llm-server --first-token-ms 50; SLOW_LLM_URL=$URL
    for llm in "$LLM_URL" "$SLOW_LLM_URL"; do
      for s in 0 2; do
        LLM_URL=$llm start_service WS_IDLE_TIMEOUT_SECONDS=600 "${SETTINGS[$s]}"
        echo "### ${LABELS[$s]}, LLM $([ "$llm" = "$LLM_URL" ] && echo instant || echo '50 ms to its first token'):" \
          "bench first-chunk --samples 300"
        "$TOOL" first-chunk --addr "127.0.0.1:$PORT" --secret $SECRET --llm "$llm" --samples 300
        kill "$SERVICE_PID"; wait "$SERVICE_PID" 2>/dev/null || true
      done
    done
    start_service WS_IDLE_TIMEOUT_SECONDS=600
    echo '### bench idle --connections 10000'
    "$TOOL" idle --addr "127.0.0.1:$PORT" --secret $SECRET --connections 10000 --pid "$SERVICE_PID"
    ;;
  idle) bench_idle ;;
  writes) bench_writes ;;
  search)
    [ -n "${SEARCH_SKIP_FILL:-}" ] || bench_search_queries
    bench_search_writes
    ;;
  *) echo "usage: $0 http|analytics|postgres|fastapi|ws|idle|writes|search" >&2; exit 2 ;;
esac
