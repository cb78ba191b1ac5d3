#!/bin/sh
# bench/query.sh [EVENTS]: the Stats API query benchmark (issue 5) against ClickHouse.
#
#   1. builds build/rel/bench/rebuild and build/rel/bench/query (QUERY_BUILD=0 skips make);
#   2. makes the data set of bench/rebuild with EVENTS events (default 10,000,000; same
#      generator and parameters: 30 days, 1,000 pages, 200k visitors) and keeps its store, or
#      uses the store in $QUERY_STORE (a kept bench/rebuild db directory) instead;
#   3. installs Debian's clickhouse-server/clickhouse-client when missing (apt-get), starts a
#      private server as a child process (config from bench/clickhouse/ in the work directory,
#      127.0.0.1 only, free ports; the system service is never used);
#   4. loads the counted events and the visits from the Tally store (`query export-events`,
#      `query export-sessions`: TSV into bench/clickhouse/schema.sql's tables), merges parts;
#   5. runs `query run STORE PORT`: each query on Tally (in process) and on ClickHouse (HTTP),
#      and prints its bench= lines and query-check lines (see bench/query.c);
#   6. stops the server by its PID and removes the work directory ($QUERY_KEEP=1 keeps it).
#
# Environment: QUERY_DIR (/tmp) for the work directory; QUERY_STORE; QUERY_KEEP; QUERY_BUILD;
# QUERY_BIN (build/rel/bench/query: another build of bench/query.c);
# and what `query run` reads: QUERY_ROUNDS (1), QUERY_REPS_DASHBOARD (50), QUERY_REPS_ADHOC
# (20), QUERY_SECONDS_MAX (20), QUERY_PLAN (auto), QUERY_CACHE_MB (16, RocksDB's block cache),
# QUERY_RAW_CACHE_MB (256, the raw blocks' own cache: the server's raw_cache_bytes),
# QUERY_MEMO_MB (32, the query cache; 0 = off).
# Quick run: `sh bench/query.sh 1000000`. At 10M events: data set ~3 min, load ~1 min, queries
# ~4 min per round (15.5 min in all with QUERY_ROUNDS=3, the figures in bench/RESULTS.md), so
# bench/run.sh runs it only with BENCH_QUERY=1.

cd "$(dirname "$0")/.." || exit 1
EVENTS=${1:-10000000}
BIN=build/rel/bench
CH_PID=
WORK=

log() { echo "query.sh: $*" >&2; }

cleanup() {
    if [ -n "$CH_PID" ]; then
        kill "$CH_PID" 2>/dev/null
        i=0
        while kill -0 "$CH_PID" 2>/dev/null && [ $i -lt 100 ]; do
            sleep 0.2
            i=$((i + 1))
        done
        kill -9 "$CH_PID" 2>/dev/null
        CH_PID=
    fi
    if [ -n "$WORK" ] && [ -d "$WORK" ]; then
        if [ "${QUERY_KEEP:-0}" = 1 ]; then
            log "kept $WORK"
        else
            rm -rf "$WORK"
        fi
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

fail() {
    log "$*"
    exit 1
}

case $EVENTS in
'' | *[!0-9]*) fail "usage: bench/query.sh [EVENTS]" ;;
esac

if [ "${QUERY_BUILD:-1}" != 0 ]; then
    make --no-print-directory -s "$BIN/rebuild" "$BIN/query" >&2 || fail "build failed"
fi

if ! command -v clickhouse-server >/dev/null 2>&1 || ! command -v clickhouse-client >/dev/null 2>&1
then
    log "installing clickhouse-server (Debian)"
    apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clickhouse-server clickhouse-client \
        >&2 || fail "cannot install clickhouse-server"
fi
QBIN=${QUERY_BIN:-$BIN/query}

WORK=$(mktemp -d "${QUERY_DIR:-/tmp}/tally-bench-query.XXXXXX") || fail "mktemp"

# ---- the data set
if [ -n "${QUERY_STORE:-}" ]; then
    STORE=$QUERY_STORE
    log "using the store in $STORE"
else
    log "generating $EVENTS events (bench/rebuild)"
    BENCH_KEEP=1 BENCH_DIR=$WORK "$BIN/rebuild" "$EVENTS" >"$WORK/rebuild.out" \
        2>"$WORK/rebuild.err" || { cat "$WORK/rebuild.err" >&2; fail "rebuild failed"; }
    sed 's/^/query.sh: rebuild: /' "$WORK/rebuild.out" >&2
    STORE=$(sed -n 's/^kept //p' "$WORK/rebuild.err")/db
fi
[ -d "$STORE" ] || fail "no store in $STORE"

# ---- a private ClickHouse server
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); \
print(s.getsockname()[1]); s.close()'
}
HTTP_PORT=$(free_port) && TCP_PORT=$(free_port) || fail "no free port"
CH=$WORK/clickhouse
mkdir -p "$CH/log" "$CH/data" "$CH/tmp" "$CH/user_files" "$CH/format_schemas"
sed -e "s#@DIR@#$CH#g" -e "s#@HTTP_PORT@#$HTTP_PORT#" -e "s#@TCP_PORT@#$TCP_PORT#" \
    bench/clickhouse/config.xml >"$CH/config.xml"
cp bench/clickhouse/users.xml "$CH/users.xml"
clickhouse-server --config-file="$CH/config.xml" >"$CH/log/stdout" 2>&1 &
CH_PID=$!
i=0
until curl -sf "http://127.0.0.1:$HTTP_PORT/?query=SELECT%201" >/dev/null 2>&1; do
    kill -0 "$CH_PID" 2>/dev/null || { cat "$CH/log/"* >&2; CH_PID=; fail "clickhouse exited"; }
    i=$((i + 1))
    [ $i -gt 150 ] && fail "clickhouse did not answer within 30 s"
    sleep 0.2
done
log "clickhouse $(curl -s "http://127.0.0.1:$HTTP_PORT/?query=SELECT%20version()") on \
127.0.0.1:$HTTP_PORT (pid $CH_PID)"
chc() { clickhouse-client --host 127.0.0.1 --port "$TCP_PORT" "$@"; }

# ---- load
chc --multiquery <bench/clickhouse/schema.sql || fail "schema"
t0=$(date +%s)
for table in sessions events; do
    { "$QBIN" "export-$table" "$STORE"; echo $? >"$WORK/export.rc"; } |
        chc --query "INSERT INTO $table FORMAT TabSeparated" || fail "loading $table"
    [ "$(cat "$WORK/export.rc")" = 0 ] || fail "export of $table failed"
    chc --query "OPTIMIZE TABLE $table FINAL" || fail "optimize $table"
done
log "loaded in $(($(date +%s) - t0)) s: $(chc --query 'SELECT count() FROM events') events, \
$(chc --query 'SELECT count() FROM sessions') sessions"

# ---- the queries
QUERY_CH_PID=$CH_PID QUERY_EVENTS=$EVENTS "$QBIN" run "$STORE" "$HTTP_PORT" >"$WORK/run.out" ||
    { cat "$WORK/run.out"; fail "query run failed"; }
cat "$WORK/run.out"
