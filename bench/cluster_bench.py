"""Cluster benchmark driver (bench/cluster.sh runs it; issue 10, docs/cluster.md).

Two deployments on 127.0.0.1, one after the other, on the same machine in the same run:
  single   one Tally, role all, local log, fsync always;
  cluster  three nats-server processes (one JetStream cluster, streams R3), two ingest nodes
           and two processing nodes (partitions 0-3 and 4-7 of 8).
For each:
  1. latency (first, on the quiet deployment): http_load, open loop, single-event requests at
     BENCH_LATENCY_RPS over 32 connections for BENCH_SECONDS after a 2 s warm-up: p50/p99 of
     the acknowledgement (for the cluster, through one ingest node: the publish
     acknowledgement of the R3 stream); for the cluster also the ingest nodes' own
     publish-to-ack histogram over that phase (js_ack_*: bucket upper bounds, powers of 2);
  2. throughput: wrk (bench/wrk_post.lua) POSTs NDJSON batches of 100 events (spread over six
     sites, so both processing nodes work) for BENCH_SECONDS; ingest_eps = acknowledged
     events/s (for the cluster: two wrk processes, one per ingest node, summed);
     processed_eps = the acknowledged events / time from the start until the consumers have
     caught up (lag 0 at the whole acknowledged log end);
  3. CPU: user+system seconds of each kind of process over phase 2, per event (sizing).
Prints one line on stdout:
  bench=cluster single_ingest_eps=... cluster_ingest_eps=... ratio_ingest=... ...
  (every field key=value; "na" when it could not be measured); progress goes to stderr.
Only processes started here are stopped (by PID); temporary directories are removed.
"""
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
import harness  # noqa: E402
from harness import NatsCluster, Tally, partition_of  # noqa: E402

DUR_S = float(os.environ.get("BENCH_SECONDS", "10"))
LAT_RPS = int(os.environ.get("BENCH_LATENCY_RPS", "1000"))
WRK = os.environ.get("WRK", "wrk")
HTTP_LOAD = os.environ.get("HTTP_LOAD", "build/rel/bench/http_load")
LUA = os.path.join(HERE, "wrk_post.lua")
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/124.0.0.0 Safari/537.36")
PARTITIONS = 8
CATCHUP_TIMEOUT_S = 120


def say(msg):
    print("cluster_bench: " + msg, file=sys.stderr, flush=True)


def pick_sites(per_half=3):
    lo, hi = [], []
    for i in range(1000):
        name = "s%d.example" % i
        (lo if partition_of(name, PARTITIONS) < 4 else hi).append(name)
        if len(lo) >= per_half and len(hi) >= per_half:
            return lo[:per_half] + hi[:per_half]
    raise RuntimeError("no sites")


SITES = pick_sites()


def write_bodies(tmp):
    batch = os.path.join(tmp, "batch100.ndjson")
    with open(batch, "w") as f:
        for i in range(100):
            s = SITES[i % len(SITES)]
            f.write(json.dumps({"site": s, "url": "https://%s/page/%d" % (s, i % 17),
                                "visitor_id": "v%d" % i}) + "\n")
    one = os.path.join(tmp, "one.json")
    with open(one, "w") as f:
        f.write(json.dumps({"site": SITES[0], "url": "https://%s/page" % SITES[0]}))
    return batch, one


def sites_config():
    return "".join("[site %s]\ntimezone = UTC\n" % s for s in SITES)


def cpu_s(pid):
    """user + system CPU seconds of a process (0 when gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / float(os.sysconf("SC_CLK_TCK"))
    except (OSError, IndexError, ValueError):
        return 0.0


def kv(line):
    return dict(p.split("=", 1) for p in line.split() if "=" in p)


def run_wrk(port, body, threads, conns, tag, out):
    p = subprocess.run(
        [WRK, "-t%d" % threads, "-c%d" % conns, "-d%ds" % int(DUR_S), "-s", LUA,
         "http://127.0.0.1:%d/v1/events" % port],
        capture_output=True, text=True, timeout=DUR_S + 60,
        env=dict(os.environ, WRK_BODY_FILE=body, WRK_CONTENT_TYPE="application/x-ndjson",
                 WRK_USER_AGENT=UA))
    lines = [l for l in p.stdout.splitlines() if l.startswith("wrk_summary")]
    if not lines:
        say("wrk failed (%s): %s %s" % (tag, p.stdout[-500:], p.stderr[-500:]))
        return
    d = kv(lines[-1])
    say("%s: %s" % (tag, lines[-1]))
    bad = sum(int(d[k]) for k in ("non2xx", "errors_connect", "errors_read", "errors_write",
                                  "errors_timeout"))
    out.append({"requests": int(d["requests"]), "bad": bad, "seconds": float(d["duration_s"])})


def run_http_load(port, body, tag):
    if not os.access(HTTP_LOAD, os.X_OK):
        say("%s not built (make BUILD=rel build/rel/bench/http_load): latency skipped" %
            HTTP_LOAD)
        return {}
    p = subprocess.run(
        [HTTP_LOAD, "--host", "127.0.0.1", "--port", str(port), "--path", "/v1/events",
         "--body-file", body, "--content-type", "application/json", "--rate", str(LAT_RPS),
         "--connections", "32", "--duration-s", str(DUR_S), "--warmup-s", "2",
         "--header", "User-Agent: " + UA],
        capture_output=True, text=True, timeout=DUR_S + 60)
    lines = [l for l in p.stdout.splitlines() if l.startswith("bench=http_load")]
    if not lines:
        say("http_load failed (%s): %s" % (tag, p.stderr[-500:]))
        return {}
    say("%s: %s" % (tag, lines[-1]))
    return kv(lines[-1])


def healthz(t):
    try:
        s, _, raw = t.request("GET", "/healthz", timeout=2)
        return json.loads(raw) if s == 200 else None
    except (OSError, ValueError):
        return None


def metric_sum(t, name):
    s, _, raw = t.request("GET", "/metrics", timeout=5)
    total = 0.0
    for line in raw.decode().splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def ack_hist(ingest):
    """tally_jetstream_ack_seconds buckets (le -> cumulative count) summed over nodes."""
    buckets = {}
    for t in ingest:
        s, _, raw = t.request("GET", "/metrics", timeout=5)
        for line in raw.decode().splitlines():
            if line.startswith("tally_jetstream_ack_seconds_bucket{le=\""):
                le = line.split('"')[1]
                buckets[le] = buckets.get(le, 0) + float(line.rsplit(" ", 1)[1])
    return buckets


def ack_hist_quantiles(before, after):
    """p50/p99 (bucket upper bounds, ms) of the publish acknowledgements between two
    ack_hist snapshots."""
    buckets = {k: v - before.get(k, 0) for k, v in after.items()}
    if not buckets:
        return "na", "na"
    items = sorted(((float("inf") if k == "+Inf" else float(k)), v) for k, v in buckets.items())
    total = items[-1][1]
    if total <= 0:
        return "na", "na"
    out = []
    for q in (0.5, 0.99):
        v = next((le for le, c in items if c >= q * total), float("inf"))
        out.append("inf" if v == float("inf") else "%.2f" % (v * 1000))
    return out[0], out[1]


def wait_caught_up(consumers, acked_end, t_start):
    """Seconds from t_start until every consumer node has lag 0 and the sum of their log
    ends reaches acked_end ("na" on timeout)."""
    deadline = time.time() + CATCHUP_TIMEOUT_S
    while time.time() < deadline:
        hs = [healthz(t) for t in consumers]
        if all(hs):
            end = sum(h["log_end_offset"] for h in hs)
            lag = sum(h["consumers"]["raw"]["lag"] + h["consumers"]["rollup"]["lag"]
                      for h in hs)
            if lag == 0 and end >= acked_end:
                return time.time() - t_start
        time.sleep(0.1)
    say("consumers did not catch up within %ds" % CATCHUP_TIMEOUT_S)
    return None


def stream_bytes_per_event(nats):
    """Stored bytes per message over the TALLY_P* streams (one replica), from /jsz."""
    st, body = nats.monitor(nats.running()[0], "/jsz?accounts=true&streams=true")
    msgs = nbytes = 0
    for acc in json.loads(body).get("account_details") or []:
        for sd in acc.get("stream_detail") or []:
            if sd["name"].startswith("TALLY_P"):
                msgs += sd["state"]["messages"]
                nbytes += sd["state"]["bytes"]
    return nbytes / msgs if msgs else None


def rss_mib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def fmt(v, spec="%.0f"):
    return "na" if v is None else spec % v


def measure(name, ingest, consumers, all_pids, batch, one, acked_fn, js=False):
    """The phases on one deployment (latency first, on a quiet deployment; then throughput);
    returns a dict of figures."""
    out = {}
    h0 = ack_hist(ingest) if js else {}
    lat = run_http_load(ingest[0].port, one, name + "_latency")
    for k in ("p50_ms", "p99_ms", "achieved_rps", "errors", "non2xx"):
        out[k] = lat.get(k, "na")
    if js:
        out["js_ack_p50_ms"], out["js_ack_p99_ms"] = ack_hist_quantiles(h0, ack_hist(ingest))
    cpu0 = {k: sum(cpu_s(p) for p in pids) for k, pids in all_pids.items()}
    acked0 = acked_fn()
    results = []
    t_start = time.time()
    ths = []
    per = max(1, 2 // len(ingest))
    for k, t in enumerate(ingest):
        ths.append(threading.Thread(target=run_wrk, args=(t.port, batch, per, 64 // len(ingest),
                                                          "%s_wrk%d" % (name, k), results)))
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    ingest_s = max([r["seconds"] for r in results] or [DUR_S])
    events = sum(r["requests"] for r in results) * 100
    bad = sum(r["bad"] for r in results)
    acked_end = acked_fn()
    caught_s = wait_caught_up(consumers, acked_end, t_start)
    cpu1 = {k: sum(cpu_s(p) for p in pids) for k, pids in all_pids.items()}
    new_events = acked_end - acked0
    out.update({"ingest_eps": events / ingest_s if results else None,
                "processed_eps": new_events / caught_s if caught_s else None,
                "failed": bad, "events": new_events})
    for k in all_pids:
        out["cpu_us_per_event_" + k] = ((cpu1[k] - cpu0[k]) * 1e6 / new_events
                                        if new_events else None)
    return out


def main():
    import tempfile
    tmp = tempfile.mkdtemp(prefix="tally-cbench-")
    batch, one = write_bodies(tmp)
    load1_start = open("/proc/loadavg").read().split()[0]
    res = {}
    # --- single node -------------------------------------------------------------------------
    single = Tally("[server]\nthreads = 2\n[storage]\nfsync = always\n" + sites_config())
    try:
        single.start(timeout_s=30)
        say("single node on port %d" % single.port)

        def single_acked():
            h = healthz(single)
            return h["log_end_offset"] if h else 0
        res["single"] = measure("single", [single], [single], {"node": [single.proc.pid]},
                                batch, one, single_acked)
    finally:
        single.cleanup()
    # --- cluster -----------------------------------------------------------------------------
    nats = NatsCluster(3)
    proc = [Tally() for _ in range(2)]
    ingest = [Tally() for _ in range(2)]
    try:
        owners = ", ".join("%s=http://127.0.0.1:%d" % (r, t.port)
                           for r, t in zip(("0-3", "4-7"), proc))
        common = ("[server]\nthreads = 2\n[cluster]\nlog_backend = jetstream\nnats_urls = %s\n"
                  "partitions = %d\nreplicas = 3\npartition_owners = %s\n" %
                  (", ".join(nats.urls()), PARTITIONS, owners))
        for k, t in enumerate(proc):
            t.write_config(common + "role = process\nnode_name = p%d\nowned_partitions = %s\n"
                           % (k + 1, ("0-3", "4-7")[k]) + sites_config())
        for k, t in enumerate(ingest):
            t.write_config(common + "role = ingest\nnode_name = i%d\n" % (k + 1) +
                           sites_config())
        nats.start()
        nats.wait_ready(60)
        for t in proc + ingest:
            t.start(timeout_s=90)
        say("cluster: nats %s, processing %s, ingest %s" % (
            [s["port"] for s in nats.servers], [t.port for t in proc],
            [t.port for t in ingest]))

        def cluster_acked():
            return int(sum(metric_sum(t, "tally_jetstream_acked_total") for t in ingest))
        pids = {"ingest": [t.proc.pid for t in ingest], "process": [t.proc.pid for t in proc],
                "nats": [s["proc"].pid for s in nats.servers]}
        res["cluster"] = measure("cluster", ingest, proc, pids, batch, one, cluster_acked,
                                 js=True)
        res["cluster"]["stream_bytes_per_event"] = stream_bytes_per_event(nats)
        res["cluster"]["nats_peak_rss_mib"] = max(rss_mib(p) or 0 for p in pids["nats"])
        res["cluster"]["process_peak_rss_mib"] = max(rss_mib(p) or 0 for p in pids["process"])
        res["cluster"]["ingest_peak_rss_mib"] = max(rss_mib(p) or 0 for p in pids["ingest"])
    except Exception as e:  # noqa: BLE001 - the line still prints, with na
        say("cluster failed: %s" % e)
        for t in proc + ingest:
            say("node %d stderr: %s" % (t.port, t.stderr_text()[-1500:]))
        say(nats.log_tail(800))
    finally:
        for t in proc + ingest:
            t.cleanup()
        nats.cleanup()
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    s, c = res.get("single", {}), res.get("cluster", {})

    def ratio(a, b):
        try:
            return "%.3f" % (float(a) / float(b))
        except (TypeError, ValueError, ZeroDivisionError):
            return "na"

    def diff(a, b):
        try:
            return "%.2f" % (float(a) - float(b))
        except (TypeError, ValueError):
            return "na"
    print("bench=cluster single_ingest_eps=%s cluster_ingest_eps=%s ratio_ingest=%s "
          "single_processed_eps=%s cluster_processed_eps=%s ratio_processed=%s "
          "single_p50_ms=%s single_p99_ms=%s cluster_p50_ms=%s cluster_p99_ms=%s "
          "added_p50_ms=%s added_p99_ms=%s js_ack_p50_ms=%s js_ack_p99_ms=%s "
          "single_cpu_us_per_event=%s cluster_ingest_cpu_us_per_event=%s "
          "cluster_process_cpu_us_per_event=%s cluster_nats_cpu_us_per_event=%s "
          "stream_bytes_per_event=%s nats_peak_rss_mib=%s ingest_peak_rss_mib=%s "
          "process_peak_rss_mib=%s "
          "single_failed=%s cluster_failed=%s latency_rps=%d single_lat_errors=%s "
          "cluster_lat_errors=%s seconds=%g cores=%d load1_start=%s load1_end=%s" % (
              fmt(s.get("ingest_eps")), fmt(c.get("ingest_eps")),
              ratio(c.get("ingest_eps"), s.get("ingest_eps")),
              fmt(s.get("processed_eps")), fmt(c.get("processed_eps")),
              ratio(c.get("processed_eps"), s.get("processed_eps")),
              s.get("p50_ms", "na"), s.get("p99_ms", "na"), c.get("p50_ms", "na"),
              c.get("p99_ms", "na"), diff(c.get("p50_ms"), s.get("p50_ms")),
              diff(c.get("p99_ms"), s.get("p99_ms")), c.get("js_ack_p50_ms", "na"),
              c.get("js_ack_p99_ms", "na"),
              fmt(s.get("cpu_us_per_event_node"), "%.2f"),
              fmt(c.get("cpu_us_per_event_ingest"), "%.2f"),
              fmt(c.get("cpu_us_per_event_process"), "%.2f"),
              fmt(c.get("cpu_us_per_event_nats"), "%.2f"),
              fmt(c.get("stream_bytes_per_event")), fmt(c.get("nats_peak_rss_mib"), "%.1f"),
              fmt(c.get("ingest_peak_rss_mib"), "%.1f"),
              fmt(c.get("process_peak_rss_mib"), "%.1f"),
              s.get("failed", "na"), c.get("failed", "na"), LAT_RPS,
              "%s/%s" % (s.get("errors", "na"), s.get("non2xx", "na")),
              "%s/%s" % (c.get("errors", "na"), c.get("non2xx", "na")),
              DUR_S, os.cpu_count() or 0, load1_start,
              open("/proc/loadavg").read().split()[0]), flush=True)


if __name__ == "__main__":
    harness.BIN = os.path.abspath(os.environ.get("TALLY_BIN", harness.BIN))
    main()
