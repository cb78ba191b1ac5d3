#!/bin/sh
# HTTP ingest benchmark: ./tally against nginx (`return 204`) as the ceiling of this machine.
#
# Everything runs on 127.0.0.1 with free ports and a temp dir that this script creates and
# removes; it stops only the processes it started, by PID. The load generators (wrk, http_load)
# share the machine's cores with the server, which is why nginx is measured in the same run.
#
# Output, one line each on stdout (progress goes to stderr):
#   bench=http_ingest_single         wrk, 1 event per request: median req/s over BENCH_RUNS
#                                    runs, alternating nginx/tally; target ratio >= 0.70
#   bench=http_ingest_batch100       wrk, NDJSON batches of 100; target >= 500000 events/s
#   bench=http_ingest_latency        http_load, open loop, 20000 events/s as 2000 req/s of
#                                    10 events; target p99 <= 5 ms (nginx at the same rate)
#   bench=http_ingest_latency_single http_load, 20000 req/s of 1 event over
#                                    BENCH_SINGLE_CONNECTIONS (256) connections
#   bench=http_ingest_cpu            http_load, 11000 and 35000 single events/s: tally's CPU
#                                    microseconds per event (all threads, consumers included)
#                                    and nginx's per request
#   bench=http_ingest_rss            tally's peak RSS over all of it; target <= 128 MiB
#   bench=http_ingest_env            cores and load average (other work on the machine)
# A value is "na" when its target could not be measured (e.g. tally did not start).
#
# Environment: BENCH_SECONDS (default 10) per run, BENCH_WARMUP_SECONDS (2) for http_load,
# BENCH_RUNS (3) wrk runs per target, BENCH_SINGLE_CONNECTIONS (256), TALLY (./tally, else
# build/rel/tally), NGINX (/usr/sbin/nginx), WRK (wrk), HTTP_LOAD (build/rel/bench/http_load),
# TMPDIR, BENCH_TALLY_STORAGE (extra lines for tally's [storage] section, for A/B runs, e.g.
# "direct_write_min_bytes = 0").

set -u

cd "$(dirname "$0")/.." || exit 1
DUR=${BENCH_SECONDS:-10}
WARM=${BENCH_WARMUP_SECONDS:-2}
RUNS=${BENCH_RUNS:-3}
TALLY=${TALLY:-./tally}
[ -x "$TALLY" ] || [ ! -x build/rel/tally ] || TALLY=build/rel/tally
NGINX=${NGINX:-/usr/sbin/nginx}
WRK=${WRK:-wrk}
HTTP_LOAD=${HTTP_LOAD:-build/rel/bench/http_load}
SINGLE_CONNS=${BENCH_SINGLE_CONNECTIONS:-256}
LUA=bench/wrk_post.lua
UA='Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) '
UA="${UA}Chrome/124.0.0.0 Safari/537.36"

T=""
NGINX_PID=""
TALLY_PID=""
SAMPLER_PID=""

say() { echo "http_ingest: $*" >&2; }

# stop PID: TERM, up to 15 s for a clean exit, then KILL. Only PIDs this script started.
stop() {
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2>/dev/null || return 0
    i=0
    while kill -0 "$1" 2>/dev/null && [ $i -lt 150 ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$1" 2>/dev/null; then
        say "PID $1 ignored SIGTERM; killing it"
        kill -KILL "$1" 2>/dev/null
    fi
    wait "$1" 2>/dev/null
    return 0
}

cleanup() {
    stop "$SAMPLER_PID"
    stop "$TALLY_PID"
    stop "$NGINX_PID"
    [ -n "$T" ] && rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

free_port() {
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); \
print(s.getsockname()[1])' 2>/dev/null && return 0
    fi
    # Fallback: a random high port nobody listens on.
    while :; do
        p=$(( ( $(od -An -N2 -tu2 /dev/urandom) % 30000 ) + 20000 ))
        ss -ltnH "sport = :$p" 2>/dev/null | grep -q . || { echo "$p"; return 0; }
    done
}

# kv KEY "LINE": the value of KEY=VALUE in LINE, or "na".
kv() {
    v=$(printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p" | head -n 1)
    echo "${v:-na}"
}

# median of numbers on stdin ("na" entries ignored; "na" if none).
median() {
    grep -v '^na$' | sort -n | awk '{ a[NR] = $1 } END {
        if (NR == 0) print "na"; else if (NR % 2) print a[(NR + 1) / 2];
        else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

# http_code METHOD URL [BODYFILE CONTENT_TYPE]: the status code, or 000.
http_code() {
    if [ $# -ge 4 ]; then
        curl -s -o "$T/curl.out" -w '%{http_code}' -m 5 -X "$1" -H "Content-Type: $4" \
            -H "User-Agent: $UA" --data-binary "@$3" "$2" 2>/dev/null
    else
        curl -s -o "$T/curl.out" -w '%{http_code}' -m 5 -X "$1" "$2" 2>/dev/null
    fi
}

# run_wrk PORT BODYFILE CONTENT_TYPE TAG: requests/s of one wrk run ("na" on failure).
run_wrk() {
    out="$T/wrk.$4.out"
    WRK_BODY_FILE="$2" WRK_CONTENT_TYPE="$3" WRK_USER_AGENT="$UA" \
        "$WRK" -t2 -c64 -d"${DUR}s" -s "$LUA" "http://127.0.0.1:$1/v1/events" >"$out" 2>&1
    line=$(grep '^wrk_summary' "$out" | tail -n 1)
    if [ -z "$line" ]; then
        say "wrk failed ($4):"
        tail -n 5 "$out" >&2
        echo na
        return
    fi
    bad=$(( $(kv non2xx "$line") + $(kv errors_connect "$line") + $(kv errors_read "$line") \
        + $(kv errors_write "$line") + $(kv errors_timeout "$line") ))
    if [ "$bad" -gt 0 ]; then
        say "$4: $bad failed requests (non-2xx or socket errors): $line"
        echo "$bad" >>"$T/failures.$4"
    fi
    say "$4: $line"
    kv rps "$line"
}

# failures TAG: failed requests summed over the wrk runs of TAG.
failures() {
    if [ -f "$T/failures.$1" ]; then
        awk '{ s += $1 } END { print s }' "$T/failures.$1"
    else
        echo 0
    fi
}

# run_load PORT BODYFILE CONTENT_TYPE RATE CONNECTIONS TAG: the http_load line (empty on failure).
run_load() {
    "$HTTP_LOAD" --host 127.0.0.1 --port "$1" --path /v1/events --body-file "$2" \
        --content-type "$3" --rate "$4" --connections "$5" --duration-s "$DUR" \
        --warmup-s "$WARM" --header "User-Agent: $UA" >"$T/load.$6.out" 2>"$T/load.$6.err"
    line=$(grep '^bench=http_load' "$T/load.$6.out" | tail -n 1)
    if [ -n "$line" ]; then
        say "$6: $line"
    else
        say "http_load failed ($6):"
        tail -n 5 "$T/load.$6.err" >&2
    fi
    echo "$line"
}

# ---------------------------------------------------------------------------------------------
for tool in "$WRK" curl; do
    command -v "$tool" >/dev/null 2>&1 || { say "$tool not found"; exit 1; }
done
[ -x "$NGINX" ] || { say "$NGINX not found"; exit 1; }
[ -f "$LUA" ] || { say "$LUA not found"; exit 1; }

LOAD_START=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo na)
T=$(mktemp -d "${TMPDIR:-/tmp}/tally-bench.XXXXXX") || exit 1
mkdir -p "$T/nginx" "$T/data"

# Request bodies: one event; NDJSON batches of 100 and of 10 (distinct pages per line).
printf '{"site":"example.com","url":"https://example.com/page","name":"pageview"}' >"$T/one.json"
i=1
: >"$T/batch100.ndjson"
while [ $i -le 100 ]; do
    printf '{"site":"example.com","url":"https://example.com/page/%d","name":"pageview"}\n' $i \
        >>"$T/batch100.ndjson"
    i=$((i + 1))
done
head -n 10 "$T/batch100.ndjson" >"$T/batch10.ndjson"
JSON=application/json
NDJSON=application/x-ndjson

# --- nginx: the reference ceiling --------------------------------------------------------------
NGINX_PORT=$(free_port)
cat >"$T/nginx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
master_process on;
user root;
pid $T/nginx/nginx.pid;
error_log $T/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $T/nginx/body;
    proxy_temp_path $T/nginx/proxy;
    fastcgi_temp_path $T/nginx/fastcgi;
    uwsgi_temp_path $T/nginx/uwsgi;
    scgi_temp_path $T/nginx/scgi;
    # Keep-alive as long as the benchmark runs (the default closes after 1000 requests).
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    # Bodies are read and discarded by 'return'; allow the batch bodies.
    client_body_buffer_size 1m;
    client_max_body_size 8m;
    server {
        listen 127.0.0.1:$NGINX_PORT reuseport;
        location / { return 204; }
    }
}
EOF
"$NGINX" -p "$T/nginx" -e "$T/nginx/error.log" -c "$T/nginx/nginx.conf" >"$T/nginx/out" 2>&1 &
NGINX_PID=$!
i=0
until [ "$(http_code POST "http://127.0.0.1:$NGINX_PORT/v1/events" "$T/one.json" $JSON)" = 204 ]; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$NGINX_PID" 2>/dev/null; then
        say "nginx did not start:"
        cat "$T/nginx/out" "$T/nginx/error.log" >&2 2>/dev/null
        exit 1
    fi
    sleep 0.1
done
say "nginx (pid $NGINX_PID) on port $NGINX_PORT"

# --- tally ------------------------------------------------------------------------------------
TALLY_PORT=$(free_port)
while [ "$TALLY_PORT" = "$NGINX_PORT" ]; do TALLY_PORT=$(free_port); done
TALLY_OK=0
printf '[server]\nlisten = 127.0.0.1:%s\nthreads = 2\n[storage]\nfsync = always\n%s\n' \
    "$TALLY_PORT" "${BENCH_TALLY_STORAGE:-}" >"$T/tally.ini"
if [ -x "$TALLY" ]; then
    "$TALLY" --config "$T/tally.ini" --data-dir "$T/data" >"$T/tally.log" 2>&1 &
    TALLY_PID=$!
    i=0
    while [ $i -lt 300 ] && kill -0 "$TALLY_PID" 2>/dev/null; do
        [ "$(http_code GET "http://127.0.0.1:$TALLY_PORT/healthz")" = 200 ] && break
        sleep 0.1
        i=$((i + 1))
    done
    c1=$(http_code POST "http://127.0.0.1:$TALLY_PORT/v1/events" "$T/one.json" $JSON)
    c100=$(http_code POST "http://127.0.0.1:$TALLY_PORT/v1/events" "$T/batch100.ndjson" $NDJSON)
    a100=$(cat "$T/curl.out" 2>/dev/null)
    if [ "$c1" = 202 ] && [ "$c100" = 202 ]; then
        TALLY_OK=1
        say "tally (pid $TALLY_PID) on port $TALLY_PORT; batch of 100 answered $a100"
    else
        say "tally is not usable (single POST: $c1, batch POST: $c100 $a100); log:"
        tail -n 20 "$T/tally.log" >&2
        stop "$TALLY_PID"
        TALLY_PID=""
    fi
else
    say "$TALLY not found (run make); measuring nginx only"
fi

if [ $TALLY_OK = 1 ]; then
    # Sample VmRSS every 0.5 s; the maximum goes to rss_max (kB).
    (
        max=0
        while kill -0 "$TALLY_PID" 2>/dev/null; do
            v=$(sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$TALLY_PID/status" \
                2>/dev/null)
            if [ -n "$v" ] && [ "$v" -gt "$max" ]; then
                max=$v
                echo "$max" >"$T/rss_max"
            fi
            sleep 0.5
        done
    ) &
    SAMPLER_PID=$!
fi

# --- single events, wrk -------------------------------------------------------------------------
: >"$T/single.nginx"
: >"$T/single.tally"
r=1
while [ $r -le "$RUNS" ]; do
    run_wrk "$NGINX_PORT" "$T/one.json" $JSON nginx_single >>"$T/single.nginx"
    [ $TALLY_OK = 1 ] && run_wrk "$TALLY_PORT" "$T/one.json" $JSON tally_single >>"$T/single.tally"
    r=$((r + 1))
done
n_rps=$(median <"$T/single.nginx")
t_rps=$(median <"$T/single.tally")
ratio=$(awk -v a="$t_rps" -v b="$n_rps" 'BEGIN {
    if (a == "na" || b == "na" || b == 0) print "na"; else printf "%.3f\n", a / b }')
echo "bench=http_ingest_single nginx_rps=$n_rps tally_rps=$t_rps ratio=$ratio" \
    "runs=$RUNS seconds=$DUR nginx_failed=$(failures nginx_single)" \
    "tally_failed=$(failures tally_single)"

# --- NDJSON batches of 100, wrk -----------------------------------------------------------------
: >"$T/batch.nginx"
: >"$T/batch.tally"
r=1
while [ $r -le "$RUNS" ]; do
    run_wrk "$NGINX_PORT" "$T/batch100.ndjson" $NDJSON nginx_batch >>"$T/batch.nginx"
    [ $TALLY_OK = 1 ] && run_wrk "$TALLY_PORT" "$T/batch100.ndjson" $NDJSON tally_batch \
        >>"$T/batch.tally"
    r=$((r + 1))
done
n_rps=$(median <"$T/batch.nginx")
t_rps=$(median <"$T/batch.tally")
t_eps=$(awk -v a="$t_rps" 'BEGIN { if (a == "na") print "na"; else printf "%.0f\n", a * 100 }')
echo "bench=http_ingest_batch100 tally_events_per_s=$t_eps nginx_rps=$n_rps tally_rps=$t_rps" \
    "runs=$RUNS seconds=$DUR nginx_failed=$(failures nginx_batch)" \
    "tally_failed=$(failures tally_batch)"

# --- latency at a fixed rate, http_load ---------------------------------------------------------
# latency_line NAME BODY CONTENT_TYPE REQ_PER_S BATCH CONNECTIONS
# svc_p99_ms (from the actual send), lag_p99_ms (client-side wait) and hiccup_max_ms (longest
# stall of the load generator itself) tell server slowness apart from a noisy machine.
latency_line() {
    nl=$(run_load "$NGINX_PORT" "$2" "$3" "$4" "$6" "nginx_$1")
    tl=""
    [ $TALLY_OK = 1 ] && tl=$(run_load "$TALLY_PORT" "$2" "$3" "$4" "$6" "tally_$1")
    echo "bench=$1 events_per_s=$(($4 * $5)) batch=$5 req_per_s=$4 connections=$6" \
        "achieved_rps=$(kv achieved_rps "$tl") p50_ms=$(kv p50_ms "$tl")" \
        "p90_ms=$(kv p90_ms "$tl") p99_ms=$(kv p99_ms "$tl") p999_ms=$(kv p999_ms "$tl")" \
        "max_ms=$(kv max_ms "$tl") errors=$(kv errors "$tl") non2xx=$(kv non2xx "$tl")" \
        "svc_p99_ms=$(kv svc_p99_ms "$tl") lag_p99_ms=$(kv lag_p99_ms "$tl")" \
        "hiccup_max_ms=$(kv hiccup_max_ms "$tl")" \
        "nginx_achieved_rps=$(kv achieved_rps "$nl") nginx_p50_ms=$(kv p50_ms "$nl")" \
        "nginx_p99_ms=$(kv p99_ms "$nl") nginx_max_ms=$(kv max_ms "$nl")" \
        "nginx_errors=$(kv errors "$nl") nginx_hiccup_max_ms=$(kv hiccup_max_ms "$nl")"
}
if [ -x "$HTTP_LOAD" ]; then
    latency_line http_ingest_latency "$T/batch10.ndjson" $NDJSON 2000 10 32
    # One event per request needs rate x latency requests in flight (Little's law); with fsync
    # always that is more than 32, and browsers would bring a connection each anyway.
    latency_line http_ingest_latency_single "$T/one.json" $JSON 20000 1 "$SINGLE_CONNS"
else
    say "$HTTP_LOAD not built (make unit); latency skipped"
fi

# --- CPU per event at the product's rates, http_load -------------------------------------------
# cpu_ticks PID...: utime + stime of the processes (all threads), in clock ticks.
cpu_ticks() {
    t=0
    for p in "$@"; do
        v=$(awk '{ print $14 + $15 }' "/proc/$p/stat" 2>/dev/null || echo 0)
        t=$((t + ${v:-0}))
    done
    echo "$t"
}
# cpu_line RATE: CPU microseconds per event of tally and of nginx (its workers) while
# http_load sends RATE single-event requests a second over 64 connections. CPU time, not
# throughput: it hardly depends on what else the machine runs. Tally's includes the log
# writer and the consumers (counted 1 s after the load, when they have caught up).
cpu_line() {
    hz=$(getconf CLK_TCK 2>/dev/null || echo 100)
    nw=$(pgrep -P "$NGINX_PID" 2>/dev/null | tr '\n' ' ')
    # shellcheck disable=SC2086
    n0=$(cpu_ticks $nw)
    run_load "$NGINX_PORT" "$T/one.json" $JSON "$1" 64 "nginx_cpu_$1" >/dev/null
    # shellcheck disable=SC2086
    n1=$(cpu_ticks $nw)
    ncpu=$(awk -v t=$((n1 - n0)) -v hz="$hz" -v r="$1" -v d=$((DUR + WARM)) \
        'BEGIN { printf "%.1f\n", t / hz * 1e6 / (r * d) }')
    tcpu=na
    if [ $TALLY_OK = 1 ]; then
        e0=$(curl -s -m 5 "http://127.0.0.1:$TALLY_PORT/metrics" |
            awk '/^tally_log_records_written_total/ { print $2 }')
        t0=$(cpu_ticks "$TALLY_PID")
        run_load "$TALLY_PORT" "$T/one.json" $JSON "$1" 64 "tally_cpu_$1" >/dev/null
        sleep 1
        t1=$(cpu_ticks "$TALLY_PID")
        e1=$(curl -s -m 5 "http://127.0.0.1:$TALLY_PORT/metrics" |
            awk '/^tally_log_records_written_total/ { print $2 }')
        tcpu=$(awk -v t=$((t1 - t0)) -v hz="$hz" -v e0="${e0:-0}" -v e1="${e1:-0}" 'BEGIN {
            if (e1 - e0 <= 0) print "na"; else printf "%.1f\n", t / hz * 1e6 / (e1 - e0) }')
    fi
    echo "bench=http_ingest_cpu events_per_s=$1 tally_cpu_us_per_event=$tcpu" \
        "nginx_cpu_us_per_request=$ncpu connections=64 seconds=$DUR"
}
if [ -x "$HTTP_LOAD" ]; then
    cpu_line 11000 # the product's average: 1 billion events a day
    cpu_line 35000 # its peaks
fi

# --- peak RSS -----------------------------------------------------------------------------------
if [ $TALLY_OK = 1 ] && kill -0 "$TALLY_PID" 2>/dev/null; then
    hwm=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\).*/\1/p' "/proc/$TALLY_PID/status")
    sampled=$(cat "$T/rss_max" 2>/dev/null || echo 0)
    echo "bench=http_ingest_rss max_rss_mib=$(awk -v a="${hwm:-0}" -v b="$sampled" \
        'BEGIN { m = a > b ? a : b; printf "%.1f\n", m / 1024 }')" \
        "vmhwm_mib=$(awk -v a="${hwm:-0}" 'BEGIN { printf "%.1f\n", a / 1024 }')" \
        "sampled_max_mib=$(awk -v b="$sampled" 'BEGIN { printf "%.1f\n", b / 1024 }')"
else
    if [ $TALLY_OK = 1 ]; then
        say "tally died during the benchmark; log:"
        tail -n 20 "$T/tally.log" >&2
    fi
    echo "bench=http_ingest_rss max_rss_mib=na"
fi
# The machine's load: results taken while other work ran (load1 above 1) are noisy.
echo "bench=http_ingest_env cores=$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo na)" \
    "load1_start=$LOAD_START load1_end=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo na)" \
    "seconds=$DUR runs=$RUNS"
exit 0
