#!/bin/sh
# Peer ingest benchmark (issue 6): events/s of every peer wire format relative to the native
# POST /v1/events, in the same run, against the same tally. One event per request, wrk -t2
# -c50, fsync = none and no rate limit on the server, so what is compared is each format's own
# cost (decode, map, answer) and not the disk; target ratio >= 0.80.
#
# The native endpoint is measured before, between and after the formats (3 runs) and the
# median is the reference: this machine is shared and noisy. ROUNDS=K repeats that whole
# sequence K times against the same tally; each figure printed is then the median over the
# rounds (a format's ratio is taken within its round, against that round's native runs, so a
# load change between rounds does not move it).
#
# Output, one line per format on stdout (progress on stderr):
#   bench=peer_ingest format=NAME req_s=R native_req_s=N ratio=R/N native_same_event_req_s=S
#               ratio_same_event=R/S non2xx=K target=0.80
# N: the minimal native event (site, url, name); S: a native event with the content the peers'
# bodies carry (UTM landing page, referrer, two props).
# Environment: BENCH_SECONDS (default 10) per run, ROUNDS (default 1), FORMATS (default all
# eight, in the order below), TALLY (./tally, else build/rel/tally), WRK (wrk), TMPDIR. Each
# native run's req/s is shown on stderr. Only 127.0.0.1; stops only the tally it started, by
# PID.

set -u
cd "$(dirname "$0")/.." || exit 1
DUR=${BENCH_SECONDS:-10}
ROUNDS=${ROUNDS:-1}
FORMATS=${FORMATS:-plausible pixel goatcounter segment posthog ga4 matomo umami}
TALLY=${TALLY:-./tally}
[ -x "$TALLY" ] || TALLY=build/rel/tally
WRK=${WRK:-wrk}
UA='Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) '
UA="${UA}Chrome/124.0.0.0 Safari/537.36"
T=$(mktemp -d "${TMPDIR:-/tmp}/tally-peer-bench.XXXXXX") || exit 1
PID=""

say() { echo "peer_ingest: $*" >&2; }
cleanup() {
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill -TERM "$PID" 2>/dev/null
        wait "$PID" 2>/dev/null
    fi
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cat >"$T/tally.ini" <<EOF
[server]
listen = 127.0.0.1:$PORT
rate_limit_per_ip = 0
[storage]
fsync = none
[site example.com]
ids = G-BENCH, 1, bench_segment_key, phc_bench_token, 4e4a8c0a-4b1e-4f6b-9a57-1d8a2c3b4d5e
ga4_api_secret = bench-secret
EOF
"$TALLY" --config "$T/tally.ini" --data-dir "$T/data" 2>"$T/stderr" &
PID=$!
i=0
until curl -s -o /dev/null "http://127.0.0.1:$PORT/healthz"; do
    i=$((i + 1))
    if [ $i -gt 100 ] || ! kill -0 "$PID" 2>/dev/null; then
        say "tally did not start"; tail -n 5 "$T/stderr" >&2; exit 1
    fi
    sleep 0.1
done
printf '{"site":"example.com","url":"https://example.com/page","name":"pageview"}' >"$T/one.json"
# The same event content as the peers' benchmark bodies carry (a landing page with UTM tags, a
# referrer, two props): the format's own cost, apart from what the consumers
# do with a richer event (they share the two cores with the load generator).
printf '{"site":"example.com","name":"pageview","url":"https://example.com/blog/hello?utm_source=hn&utm_medium=social","referrer":"https://news.ycombinator.com/","props":{"author":"ann","category":"engineering"}}' >"$T/rich.json"

# wrk_run SCRIPT PATH [BODY]: "RPS NON2XX" of one run ("na na" on failure).
wrk_run() {
    out="$T/wrk.out"
    WRK_BODY_FILE="${3:-$T/one.json}" WRK_CONTENT_TYPE=application/json WRK_USER_AGENT="$UA" \
        "$WRK" -t2 -c50 -d"${DUR}s" -s "$1" "http://127.0.0.1:$PORT$2" >"$out" 2>&1
    line=$(grep '^wrk_summary' "$out" | tail -n 1)
    if [ -z "$line" ]; then
        say "wrk failed ($1)"; tail -n 3 "$out" >&2; echo "na na"; return
    fi
    rps=$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^rps=//p')
    bad=$(printf '%s\n' "$line" | tr ' ' '\n' | sed -n 's/^non2xx=//p')
    echo "${rps:-na} ${bad:-na}"
}

native() {
    a=$(wrk_run bench/wrk_post.lua /v1/events | cut -d' ' -f1)
    b=$(wrk_run bench/wrk_post.lua /v1/events "$T/rich.json" | cut -d' ' -f1)
    say "native req_s=$a native_same_event req_s=$b"
    echo "$a" >>"$T/native.$round"
    echo "$b" >>"$T/rich.$round"
}
med() { grep -v '^na$' "$@" | sort -n | awk '{ a[NR] = $1 } END { if (NR) print a[int((NR + 1) / 2)]; else print "na" }'; }
div() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "na" || b == "na" || b == 0) print "na"; else printf "%.2f\n", a / b }'; }

nf=$(echo $FORMATS | wc -w)
round=1
while [ "$round" -le "$ROUNDS" ]; do
    say "round $round/$ROUNDS: native (1/3)"; native
    k=0
    for f in $FORMATS; do
        say "$f"
        path=/ # the scripts set their own paths, except GA4's (its query holds the credentials)
        [ "$f" = ga4 ] && path='/mp/collect?measurement_id=G-BENCH&api_secret=bench-secret'
        wrk_run "bench/wrk_$f.lua" "$path" >"$T/res.$f.$round"
        k=$((k + 1))
        [ "$k" -eq $(((nf + 1) / 2)) ] && { say "native (2/3)"; native; }
    done
    say "native (3/3)"; native
    N=$(med "$T/native.$round")
    R=$(med "$T/rich.$round")
    for f in $FORMATS; do
        read -r rps bad <"$T/res.$f.$round"
        echo "$rps" >>"$T/rps.$f"
        echo "$bad" >>"$T/bad.$f"
        div "$rps" "$N" >>"$T/ratio.$f"
        div "$rps" "$R" >>"$T/ratio_same.$f"
    done
    echo "$N" >>"$T/native.all"
    echo "$R" >>"$T/rich.all"
    round=$((round + 1))
done
N=$(med "$T/native.all")
R=$(med "$T/rich.all")
for f in $FORMATS; do
    bad=$(sort -n "$T/bad.$f" | tail -n 1)
    echo "bench=peer_ingest format=$f req_s=$(med "$T/rps.$f") native_req_s=$N" \
         "ratio=$(med "$T/ratio.$f") native_same_event_req_s=$R" \
         "ratio_same_event=$(med "$T/ratio_same.$f") non2xx=$bad target=0.80"
done
