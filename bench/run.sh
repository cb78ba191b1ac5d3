#!/bin/sh
# Runs every benchmark and prints their `bench=` lines (one per benchmark) after a header line
# with the date, the git revision and the core count. `make bench` builds first and calls this.
#
#   every executable in build/rel/bench/ except http_load, http_echo, query and funnel (they need
#   arguments): run with no arguments, meaning "the default run" (log_append, native_decode,
#   ua_classify, rebuild, ...)
#   bench/http_ingest.sh: HTTP ingest against nginx (see that file)
#   bench/consumer_lag.sh: consumer lag while ingesting 50,000 events/s
#   bench/cluster.sh: a single node against a JetStream cluster on loopback (~1 minute)
#   bench/query.sh: Stats API queries against ClickHouse over the 10M-event data set, ONLY with
#   BENCH_QUERY=1: it makes its own data set (~3 min), installs and loads ClickHouse (~1.5 min)
#   and then times every query on both sides: 15.5 minutes in all on this machine with
#   QUERY_ROUNDS=3 (about 8 with one round), too long for every `make bench`.
#   BENCH_QUERY_EVENTS (10000000) sets its size, BENCH_QUERY_TIMEOUT_S (3600) its time limit;
#   it reads QUERY_* (see that file).
#
# Environment: BENCH_DIR (build/rel/bench), BENCH_TIMEOUT_S (900) per binary, BENCH_LOG (a file
# to append the output to as well; default none), BENCH_SKIP_HTTP=1 to skip http_ingest.sh,
# and everything http_ingest.sh reads (BENCH_SECONDS, ...).
# A benchmark that fails prints `bench=NAME status=failed rc=N` and the others still run; the
# exit status is then 1.

cd "$(dirname "$0")/.." || exit 1
BENCH_DIR=${BENCH_DIR:-build/rel/bench}
TIMEOUT_S=${BENCH_TIMEOUT_S:-900}
OUT=$(mktemp "${TMPDIR:-/tmp}/tally-bench-out.XXXXXX") || exit 1
trap 'rm -f "$OUT"' EXIT
trap 'exit 130' INT TERM HUP
status=0

# The revision without running git: follow .git/HEAD to a loose or packed ref.
revision() {
    head=$(cat .git/HEAD 2>/dev/null) || { echo unknown; return; }
    case $head in
    "ref: "*)
        ref=${head#ref: }
        if [ -f ".git/$ref" ]; then
            cut -c1-12 ".git/$ref"
        else
            awk -v r="$ref" '$2 == r { print substr($1, 1, 12); f = 1 }
                END { if (!f) print "unknown" }' .git/packed-refs 2>/dev/null || echo unknown
        fi
        ;;
    *) echo "$head" | cut -c1-12 ;;
    esac
}

emit() {
    echo "$1"
    [ -n "${BENCH_LOG:-}" ] && echo "$1" >>"$BENCH_LOG"
    return 0
}

# run NAME CMD...: runs one benchmark, passes its bench= lines on.
run() {
    name=$1
    shift
    echo "bench: running $name" >&2
    if command -v timeout >/dev/null 2>&1; then
        timeout "$TIMEOUT_S" "$@" >"$OUT"
    else
        "$@" >"$OUT"
    fi
    rc=$?
    grep '^bench=' "$OUT" | while IFS= read -r line; do emit "$line"; done
    if [ $rc -ne 0 ]; then
        emit "bench=$name status=failed rc=$rc"
        status=1
    elif ! grep -q '^bench=' "$OUT"; then
        emit "bench=$name status=no_output"
        status=1
    fi
}

emit "# tally bench date=$(date -u +%Y-%m-%dT%H:%M:%SZ) rev=$(revision) \
cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo na)"

if [ -d "$BENCH_DIR" ]; then
    for bin in "$BENCH_DIR"/*; do
        if [ ! -f "$bin" ] || [ ! -x "$bin" ]; then
            continue
        fi
        name=$(basename "$bin")
        case "$name" in http_load | http_echo | query | funnel) continue ;; esac
        run "$name" "$bin"
    done
else
    echo "bench: $BENCH_DIR does not exist (make unit builds it)" >&2
fi

if [ "${BENCH_SKIP_HTTP:-0}" != 1 ]; then
    run http_ingest sh bench/http_ingest.sh
    run consumer_lag sh bench/consumer_lag.sh
    run cluster sh bench/cluster.sh
fi
if [ "${BENCH_QUERY:-0}" = 1 ]; then
    TIMEOUT_S=${BENCH_QUERY_TIMEOUT_S:-3600}
    run query sh bench/query.sh "${BENCH_QUERY_EVENTS:-10000000}"
fi
exit $status
