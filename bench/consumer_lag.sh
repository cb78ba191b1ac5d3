#!/bin/sh
# Consumer lag under steady ingest: ./tally (fsync always) takes LAG_EVENTS_PER_S events/s
# (default 50,000, as batches of 10 from build/rel/bench/http_load, open loop) for
# BENCH_SECONDS (default 10) while /healthz is sampled every 100 ms. The lag of each consumer
# (records behind the committed log end) is converted to seconds at the offered rate.
# Prints one line:
#   bench=consumer_lag events_per_s=... achieved_rps=... raw_lag_p99_s=... rollup_lag_p99_s=...
#       rollup_lag_max_s=... ingest_p99_ms=...
# Target (issue 4): rollup and raw lag p99 <= 1 s. 127.0.0.1 only; stops only its own PIDs.
set -u
cd "$(dirname "$0")/.." || exit 1
DUR=${BENCH_SECONDS:-10}
RATE=${LAG_EVENTS_PER_S:-50000}
TALLY=${TALLY:-./tally}
HTTP_LOAD=${HTTP_LOAD:-build/rel/bench/http_load}
T=$(mktemp -d "${TMPDIR:-/tmp}/tally-lag.XXXXXX")
PID=""
trap '[ -n "$PID" ] && kill "$PID" 2>/dev/null; wait 2>/dev/null; rm -rf "$T"' EXIT
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf '[server]\nlisten = 127.0.0.1:%s\nthreads = 2\n[storage]\nfsync = always\n' "$PORT" > "$T/t.ini"
"$TALLY" --config "$T/t.ini" --data-dir "$T/data" 2>"$T/stderr" &
PID=$!
python3 - "$T/body" <<'PY'
import json, random, sys
r = random.Random(1)
lines = [json.dumps({"site": "example.com", "url": "https://example.com/p%d" % r.randint(0, 999),
                     "visitor_id": "v%d" % r.randint(0, 200000)}) for _ in range(10)]
open(sys.argv[1], "w").write("\n".join(lines) + "\n")
PY
i=0
until curl -sf "http://127.0.0.1:$PORT/healthz" >/dev/null 2>&1; do
    i=$((i + 1)); [ $i -gt 100 ] && { echo "bench=consumer_lag status=failed reason=no_server"; exit 1; }
    sleep 0.1
done
python3 - "$PORT" "$DUR" "$T/samples" <<'PY' &
import json, sys, time, urllib.request
port, dur, out = sys.argv[1], float(sys.argv[2]), sys.argv[3]
end = time.time() + dur + 2
with open(out, "w") as f:
    while time.time() < end:
        try:
            h = json.load(urllib.request.urlopen("http://127.0.0.1:%s/healthz" % port, timeout=1))
            c = h["consumers"]
            f.write("%d %d\n" % (c["raw"]["lag"], c["rollup"]["lag"]))
        except Exception:
            pass
        time.sleep(0.1)
PY
SAMPLER=$!
LOAD=$("$HTTP_LOAD" --port "$PORT" --path /v1/events --body-file "$T/body" \
    --content-type application/x-ndjson --header "User-Agent: Mozilla/5.0 (X11; Linux x86_64) Chrome/120.0" \
    --rate $((RATE / 10)) --connections 32 --duration-s "$DUR" --warmup-s 1 2>/dev/null)
wait $SAMPLER
python3 - "$T/samples" "$RATE" "$LOAD" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
rate = float(sys.argv[2])
kv = dict(p.split("=", 1) for p in sys.argv[3].split() if "=" in p)
def p99(xs):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * 0.99))] if xs else float("nan")
raw = [r[0] / rate for r in rows]
roll = [r[1] / rate for r in rows]
print("bench=consumer_lag events_per_s=%d achieved_rps=%s raw_lag_p99_s=%.3f rollup_lag_p99_s=%.3f "
      "rollup_lag_max_s=%.3f ingest_p99_ms=%s samples=%d" % (
          rate, kv.get("achieved_rps", "na"), p99(raw), p99(roll), max(roll or [0]),
          kv.get("p99_ms", "na"), len(rows)))
PY
