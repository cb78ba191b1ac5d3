"""Consumers in the running server: freshness (an acknowledged event is processed within 1 s),
and the promise that aggregates are a pure function of the log: the digest of the incrementally
built store equals the digest after `tally --rebuild`, also after kill -9 of the server."""
import json
import re
import random
import time

from harness import Tally, check, digest_line, eq, run_all, test

UA = {"User-Agent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like "
                    "Gecko) Chrome/120.0.0.0 Safari/537.36"}


def digest(t, *extra):
    rc, out, err = t.tool("--digest", *extra)
    eq(rc, 0, err)
    return digest_line(out)


@test
def acknowledged_event_is_processed_within_one_second():
    t = Tally("[site example.com]\ntimezone = Europe/Berlin\n")
    t.start()
    try:
        for i in range(5):
            s, _, _ = t.post_json("/v1/events", {"site": "example.com", "id": "f%d" % i,
                                                 "url": "https://example.com/p%d" % i}, UA)
            eq(s, 202)
            t0 = time.time()
            while True:
                _, _, raw = t.request("GET", "/healthz")
                h = json.loads(raw)
                c = h["consumers"]
                if (c["rollup"]["cursor"] >= h["log_end_offset"] and
                        c["raw"]["cursor"] >= h["log_end_offset"] and h["log_end_offset"] > i):
                    break
                check(time.time() - t0 < 1.0, "event not processed within 1 s: %s" % h)
                time.sleep(0.02)
        # each consumer wrote its output (with its cursor) in at least one batch per event
        # here (the events were seconds apart), and says so in /metrics
        _, _, raw = t.request("GET", "/metrics")
        text = raw.decode()
        for c in ("raw", "rollup"):
            m = re.search(r'^tally_consumer_flushes_total\{consumer="%s"\} (\d+)$' % c, text, re.M)
            check(m is not None, "no tally_consumer_flushes_total for %s" % c)
            check(int(m.group(1)) >= 5, "%s consumer flushes: %s" % (c, m.group(1)))
    finally:
        t.cleanup()


@test
def incremental_digest_equals_rebuild_after_kills():
    rnd = random.Random(7)
    t = Tally("[site example.com]\ntimezone = Asia/Kathmandu\n[site shop.example]\n"
              "timezone = America/New_York\n")
    try:
        now = int(time.time() * 1000)
        sent = 0
        for cycle in range(4):
            t.start()
            for _ in range(30):
                batch = []
                for _ in range(rnd.randint(1, 20)):
                    site = rnd.choice(["example.com", "shop.example"])
                    batch.append({"site": site, "url": "https://%s/p%d" % (site, rnd.randint(0, 9)),
                                  "visitor_id": "v%d" % rnd.randint(0, 40),
                                  "ts": now - rnd.randint(0, 70 * 3600 * 1000),
                                  "name": rnd.choice(["pageview", "pageview", "Signup"]),
                                  "id": "e%d" % rnd.randint(0, 2000)})
                s, _, body = t.post_json("/v1/events", batch, UA)
                eq(s, 202, body)
                sent += len(batch)
            if cycle % 2 == 0:
                t.kill9()  # consumers die mid-flight; they resume from their saved cursors
            else:
                eq(t.stop(), 0)
        t.start()  # let the consumers catch up after the last kill
        t.wait_consumers(20)
        rc, _, err = t.tool("--rebuild")
        eq(rc, 1, "rebuild must refuse while the server holds the data directory")
        check("lock" in err.lower() or "server" in err.lower(), err)
        eq(t.stop(), 0)
        incremental = digest(t)
        rc, out, err = t.tool("--rebuild")
        eq(rc, 0, err)
        check("events read %d" % sent in out, out)
        rebuilt = digest_line(out)
        eq(rebuilt, incremental, "incremental store and rebuild disagree")
        eq(digest(t), rebuilt)
        # partial rebuilds (a site, a date range) leave the same result
        rc, out, err = t.tool("--rebuild", "--site", "shop.example")
        eq(rc, 0, err)
        day = time.strftime("%Y-%m-%d", time.gmtime(now / 1000 - 86400))
        rc, out, err = t.tool("--rebuild", "--from", day, "--to", day)
        eq(rc, 0, err)
        eq(digest(t), incremental, "partial rebuilds changed the result")
        rc, _, err = t.tool("--rebuild", "--from", "yesterday")
        eq(rc, 2, err)
        print("events %d digest %s" % (sent, incremental))
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
