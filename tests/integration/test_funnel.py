"""Funnels (POST /api/v1/funnel, src/query/funnel.h): a seeded random event set is sent through
native ingest with a write key (original timestamps, stable visitor ids), the same events go into
SQLite, and random funnels (2-5 steps of page patterns and event names, loose or strict, within
one visit or a time window, with and without filters) are answered by the server and by an
independent reference: visits from SQLite window functions (LAG over each visitor's events, a new
visit after a 30-minute gap, SUM over the flags), step matching and depth in plain Python by
brute force over all step assignments. Then request errors."""
import itertools
import json
import random
import re
import sqlite3
import subprocess
import time

from harness import BIN, Tally, check, eq, run_all, test

SITE = "example.com"
GAP_MS = 30 * 60 * 1000
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0 Safari/537.36")
PATHS = ["/", "/pricing", "/blog", "/blog/a", "/blog/b/c", "/docs/api", "/signup"]
NAMES = ["Signup", "Download", "Purchase"]
SOURCES = ["", "https://google.com/", "https://news.ycombinator.com/"]


def new_key(scope, site=None):
    """(key, 'SCOPE:DIGEST') from `tally key new`."""
    args = [BIN, "key", "new", "--scope", scope] + (["--site", site] if site else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


def bearer(key):
    return {"Authorization": "Bearer " + key}


class Keys:
    """Global read and write keys, and a read key of example.com only."""

    def __init__(self):
        self.read, self.read_line = new_key("read")
        self.write, self.write_line = new_key("write")
        self.site_a, self.site_a_line = new_key("read", SITE)

    def config(self):
        return ("[auth]\nkey_digests = %s, %s\n[site example.com]\nkey_digests = %s\n"
                "[site other.org]\ntimezone = UTC\n" %
                (self.read_line, self.write_line, self.site_a_line))


def generate(rnd, now_ms):
    evs = []
    for v in range(60):
        t = now_ms - rnd.randrange(40 * 3600 * 1000) - 3600 * 1000
        ref = rnd.choice(SOURCES)
        for _ in range(rnd.randrange(1, 14)):
            t += rnd.choice([1000, 30000, 5 * 60000, 29 * 60000, 31 * 60000, 3 * 3600000])
            if t >= now_ms:
                break
            if rnd.random() < 0.7:
                e = {"name": "pageview", "url": "https://%s%s" % (SITE, rnd.choice(PATHS))}
            else:
                e = {"name": rnd.choice(NAMES), "url": "https://%s%s" % (SITE, rnd.choice(PATHS))}
            e.update({"site": SITE, "ts": t, "visitor_id": "u%d" % v})
            if ref:
                e["referrer"] = ref
            evs.append(e)
    return evs


class Reference:
    def __init__(self, evs):
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE TABLE e (seq INT, visitor TEXT, ts INT, name TEXT, path TEXT, "
                        "source TEXT)")
        for i, e in enumerate(evs):
            path = "/" + e["url"].split("/", 3)[3] if e.get("url") else ""
            src = {"": "Direct / None", "https://google.com/": "Google",
                   "https://news.ycombinator.com/": "Hacker News"}[e.get("referrer", "")]
            self.db.execute("INSERT INTO e VALUES (?,?,?,?,?,?)",
                            (i, e["visitor_id"], e["ts"], e["name"], path, src))
        # visits: a new one after a gap >= 30 min (window functions)
        self.rows = self.db.execute("""
            WITH o AS (SELECT *, ts - LAG(ts) OVER (PARTITION BY visitor ORDER BY ts, seq) AS gap
                       FROM e),
                 v AS (SELECT *, SUM(CASE WHEN gap IS NULL OR gap >= %d THEN 1 ELSE 0 END)
                                 OVER (PARTITION BY visitor ORDER BY ts, seq) AS visit FROM o)
            SELECT visitor, visit, ts, seq, name, path,
                   FIRST_VALUE(source) OVER (PARTITION BY visitor, visit ORDER BY ts, seq)
            FROM v ORDER BY visitor, ts, seq""" % GAP_MS).fetchall()

    @staticmethod
    def glob(pat, s):
        rx = "".join(".*" if tok == "**" else "[^/]*" if tok == "*" else re.escape(tok)
                     for tok in re.split(r"(\*\*|\*)", pat) if tok)
        return re.fullmatch(rx, s) is not None

    def mask(self, steps, name, path):
        m = 0
        for k, st in enumerate(steps):
            if "page" in st and name == "pageview" and self.glob(st["page"], path):
                m |= 1 << k
            if "event" in st and name == st["event"]:
                m |= 1 << k
        return m

    @staticmethod
    def depth(seq, nsteps, strict, window_ms):
        """Brute force: the longest k such that some increasing positions p1<..<pk match steps
        1..k (consecutive positions when strict) within the window."""
        best = 0
        n = len(seq)
        for k in range(1, nsteps + 1):
            found = False
            if strict:
                cands = ([list(range(i, i + k))] for i in range(n - k + 1))
                cands = itertools.chain.from_iterable(cands)
            else:
                cands = itertools.combinations(range(n), k)
            for pos in cands:
                if all(seq[p][1] >> s & 1 for s, p in enumerate(pos)) and (
                        not window_ms or seq[pos[-1]][0] - seq[pos[0]][0] <= window_ms):
                    found = True
                    break
            if not found:
                break
            best = k
        return best

    def funnel(self, steps, strict, window_ms, lo, hi, source=None):
        groups = {}
        for visitor, visit, ts, seq, name, path, vsrc in self.rows:
            if not (lo <= ts < hi) or (source and vsrc != source):
                continue
            m = self.mask(steps, name, path)
            if m:
                key = (visitor,) if window_ms else (visitor, visit)
                groups.setdefault(key, []).append((ts, m))
        best = {}
        for key, seq in groups.items():
            d = self.depth(seq, len(steps), strict, window_ms)
            best[key[0]] = max(best.get(key[0], 0), d)
        return [sum(1 for d in best.values() if d > k) for k in range(len(steps))]


def iso(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + "Z"


def ingest(t, keys, evs):
    for i in range(0, len(evs), 200):
        s, _, b = t.post_json("/v1/events", evs[i:i + 200],
                              dict(bearer(keys.write), **{"User-Agent": UA}))
        eq(s, 202, b)
    t.wait_consumers(30)


def random_steps(rnd):
    pool = ([{"page": p} for p in ["/", "/pricing", "/blog/*", "/blog/**", "/signup", "/**"]] +
            [{"event": n} for n in NAMES + ["Nothing"]])
    return [dict(rnd.choice(pool)) for _ in range(rnd.randrange(2, 6))]


@test
def funnels_match_sqlite_reference():
    keys = Keys()
    t = Tally(keys.config())
    t.start()
    try:
        rnd = random.Random(8)
        now = int(time.time() * 1000)
        evs = generate(rnd, now)
        ingest(t, keys, evs)
        ref = Reference(evs)
        checked = 0
        for i in range(120):
            steps = random_steps(rnd)
            strict = rnd.random() < 0.5
            window_s = rnd.choice([None, None, 60, 1800, 7200, 86400])
            lo = now - rnd.choice([48, 30, 12]) * 3600 * 1000
            hi = now - rnd.choice([0, 2, 6]) * 3600 * 1000
            source = rnd.choice([None, None, "Google"])
            body = {"site_id": SITE, "date_range": [iso(lo), iso(hi)], "steps": steps,
                    "order": "strict" if strict else "loose"}
            if window_s:
                body["window"] = window_s if rnd.random() < 0.5 else "%dm" % (window_s // 60)
            if source:
                body["filters"] = [["is", "visit:source", [source]]]
            s, _, b = t.post_json("/api/v1/funnel", body, bearer(keys.read))
            eq(s, 200, (body, b))
            # the server's range is whole seconds as sent
            lo_s, hi_s = lo // 1000 * 1000, hi // 1000 * 1000
            want = ref.funnel(steps, strict, (window_s or 0) * 1000, lo_s, hi_s, source)
            got = [st["visitors"] for st in b["steps"]]
            eq(got, want, json.dumps(body))
            for k, st in enumerate(b["steps"]):
                prev = want[k - 1] if k else want[0]
                eq(st["dropoff"], prev - want[k])
                conv = round(want[k] * 100 / want[0], 2) if want[0] else 0
                check(abs(st["conversion_rate"] - conv) < 0.011, (st, conv))
            checked += want[-1] > 0
        check(checked >= 5, "too few funnels with conversions: %d" % checked)
    finally:
        t.stop()


@test
def funnel_request_errors():
    keys = Keys()
    t = Tally(keys.config())
    t.start()
    try:
        ok = {"site_id": SITE, "date_range": "7d", "steps": [{"page": "/"}, {"event": "X"}]}
        cases = [
            (dict(ok, steps=[{"page": "/"}]), "steps"),
            (dict(ok, steps=[{"page": "/"}] * 9), "steps"),
            (dict(ok, steps=[{"page": "x"}, {"event": "X"}]), "page"),
            (dict(ok, steps=[{"page": "/", "event": "X"}, {"event": "X"}]), "steps/0"),
            (dict(ok, window="forever"), "window"),
            (dict(ok, window=0), "window"),
            (dict(ok, order="random"), "order"),
            (dict(ok, date_range="fortnight"), "date_range"),
            (dict(ok, bogus=1), "bogus"),
        ]
        for body, field in cases:
            s, _, b = t.post_json("/api/v1/funnel", body, bearer(keys.read))
            eq(s, 400, (body, b))
            check(field in b["error"], (field, b))
        s, _, b = t.post_json("/api/v1/funnel", ok, {})
        eq(s, 401, b)
        s, _, b = t.post_json("/api/v1/funnel", dict(ok, site_id="nope.org"), bearer(keys.read))
        eq(s, 404, b)
        s, _, b = t.post_json("/api/v1/funnel", dict(ok, site_id="other.org"),
                              bearer(keys.site_a))
        eq(s, 403, b)
        s, _, b = t.post_json("/api/v1/funnel", ok, bearer(keys.read))
        eq(s, 200, b)
        eq([st["visitors"] for st in b["steps"]], [0, 0])
        eq(b["meta"]["window"], "visit")
        eq(b["meta"]["order"], "loose")
    finally:
        t.stop()


if __name__ == "__main__":
    run_all()
