"""Stats API (POST /api/v2/query) differential test: a seeded random event set is sent through
native ingest, the same events are loaded into SQLite, and several hundred seeded random queries
are answered up to four ways: the raw-store scan holding the range's events (X-Tally-Plan:
scan), the same scan in its stream form (X-Tally-Plan: stream, when qplan_stream_can), the
rollup cells (X-Tally-Plan: rollup, when the planner says they can) and a reference computed
here in SQL + Python from query.h's SEMANTICS paragraph. All must agree exactly. Then hand-checked cases
for each metric's definition on tiny event sets.

REFERENCE MODEL (query.h SEMANTICS, engine.h, dedup.h, visitor.h):
 - counted events: not a bot User-Agent, not a host outside the site, not "engagement", not a
   duplicate. Duplicates: walking the log in order, an event (not excluded, not engagement)
   whose client id an earlier such event had is a duplicate (everything arrives within seconds,
   well inside the 24 h window).
 - visitor identity. Events with a `visitor_id` are one visitor on every day. Anonymous events
   are a keyed hash of (salt, site, ip, User-Agent) where the salt is the one of the event's
   UTC day when the server holds it, else the one of the server's current UTC day U
   (visitor.h). A fresh data directory holds only U's and U+1's salts (yesterday's salt is
   never created afresh, only kept), so with all events at or before now the identity is
   (ip, UA, salt day) with salt day = utc_day(ts) if it is in {U, U+1} else U, i.e. (ip, UA):
   the same ip+UA on different days is ONE visitor here (their events are still split into
   visits by the 30-minute gap). This is exact as long as U does not change while the events
   are ingested: the test waits out the last two minutes before UTC midnight before starting
   (ingest takes a second). A check of the generator against `--dump-log` (visitor hashes
   grouped exactly as these identities) confirmed the rule.
 - visits: maximal runs of one visitor's counted events ordered by (ts, log order) with gaps
   < 30 min; attributes from the first event, exit page from the last; bounce = exactly one
   pageview and no other interactive event.
 - scope, metrics and buckets: query.h SEMANTICS, implemented in Reference.answer below.
Rounding follows query.c's header (C round(): half away from zero).
"""
import datetime
import json
import math
import random
import re
import sqlite3
import subprocess
import time
from zoneinfo import ZoneInfo

from harness import BIN, Tally, check, eq, run_all, test

SITE = "example.com"
ZONE_NAME = "Europe/Berlin"
TZ = ZoneInfo(ZONE_NAME)
GOALS = "event:Signup, page:/pricing"
GAP_MS = 30 * 60 * 1000
QUERIES = 1000

BROWSER_UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.%d.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.%d Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.%d",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.%d",
]
BOT_UA = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
PATHS = ["/", "/pricing", "/about", "/blog", "/blog/post-1", "/blog/post-2", "/docs",
         "/docs/api", "/signup", "/contact", "/features", "/careers"]
HOSTS = ["example.com"] * 7 + ["www.example.com"] * 2 + ["blog.example.com"]
REFERRERS = ["", "", "", "https://www.google.com/", "https://news.ycombinator.com/item?id=1",
             "https://twitter.com/someone/status/1"]
UTM = {"utm_source": ["google", "newsletter", "twitter"],
       "utm_medium": ["cpc", "email", "social"],
       "utm_campaign": ["spring", "launch"]}
PROPS = {"plan": ["free", "pro", "team"], "variant": ["A", "B"]}

# API dimension -> (table alias, column) in the reference's SQLite tables.
EVENT_DIMS = {"event:page": "page", "event:hostname": "hostname", "event:name": "name",
              "event:props:plan": "p_plan", "event:props:variant": "p_variant",
              "event:goal": "goal"}
VISIT_DIMS = {"visit:entry_page": "entry_page", "visit:exit_page": "exit_page",
              "visit:utm_source": "utm_source", "visit:utm_medium": "utm_medium",
              "visit:utm_campaign": "utm_campaign"}
FIELD_DIMS = list(EVENT_DIMS) + list(VISIT_DIMS)
ROLLUP_DIMS = {"event:page", "event:hostname", "event:name"} | set(VISIT_DIMS)
REGEXES = {"event:page": ["^/blog", "post-[0-9]$", "^/(docs|about)", "s$"],
           "event:hostname": ["^www\\.", "example\\.com$", "^blog"],
           "event:name": ["^Sign", "load$", "^page"],
           "event:props:plan": ["^(pro|team)$", "e"],
           "event:props:variant": ["^A$"],
           "visit:entry_page": ["^/blog", "^/$", "^/(pricing|features)"],
           "visit:exit_page": ["^/docs", "t$"],
           "visit:utm_source": ["^g", "e"],
           "visit:utm_medium": ["^e", "c"],
           "visit:utm_campaign": ["^s", "n"]}
SESSION_METRICS = {"bounce_rate", "visit_duration", "views_per_visit"}
BASE_METRICS = ["visitors", "visits", "pageviews", "events", "bounce_rate", "visit_duration",
                "views_per_visit", "total_revenue"]


# ------------------------------------------------------------------ small helpers

def c_round(x):
    """C round(): half away from zero."""
    if x < 0:
        return -c_round(-x)
    r = math.floor(x)
    return r + 1 if x - r >= 0.5 else r


def round_to(v, decimals):
    p = 100.0 if decimals == 2 else 10.0 if decimals == 1 else 1.0
    return c_round(v * p) / p


def local_midnight_ms(d):
    return int(datetime.datetime(d.year, d.month, d.day, tzinfo=TZ).timestamp() * 1000)


def local_dt(ms):
    return datetime.datetime.fromtimestamp(ms // 1000, TZ)


def day_label(ms):
    return local_dt(ms).strftime("%Y-%m-%d")


def hour_label(ms):
    return local_dt(ms).strftime("%Y-%m-%d %H:00:00")


def utc_day(ms):
    return ms // 86400000


def iso_local(ms):
    return local_dt(ms).isoformat()


def admin_key():
    out = subprocess.run([BIN, "key", "new", "--scope", "admin"], capture_output=True,
                         text=True, timeout=10)
    eq(out.returncode, 0, out.stderr)
    key, digests = [l.split(" = ", 1)[1] for l in out.stdout.splitlines()]
    return key, digests


def site_config(digests, site=SITE, extra=""):
    return ("[server]\nauto_sites = false\n[site %s]\ntimezone = %s\ncurrency = EUR\n"
            "goals = %s\n%s[auth]\nkey_digests = %s\n" % (site, ZONE_NAME, GOALS, extra, digests))


def send(t, key, events, batch=250):
    auth = {"Authorization": "Bearer " + key}
    for i in range(0, len(events), batch):
        s, _, body = t.post_json("/v1/events", events[i:i + batch], auth)
        eq(s, 202, body)


def query(t, key, q, plan=None):
    h = {"Authorization": "Bearer " + key}
    if plan:
        h["X-Tally-Plan"] = plan
    s, hdrs, body = t.post_json("/api/v2/query", q, h)
    return s, body


def norm(x):
    """JSON values with integral floats as ints (2.0 and 2 are the same JSON number)."""
    if isinstance(x, float) and x.is_integer():
        return int(x)
    if isinstance(x, list):
        return [norm(v) for v in x]
    if isinstance(x, dict):
        return {k: norm(v) for k, v in x.items()}
    return x


def rows_of(body):
    """Results as a sorted list of [dimensions, metrics] JSON strings (order-free)."""
    return sorted(json.dumps(norm([r["dimensions"], r["metrics"]]), sort_keys=True)
                  for r in body["results"])


# ------------------------------------------------------------------ the event generator

def wait_out_utc_midnight():
    """The reference's visitor identities depend on the server's current UTC day (visitor.h):
    don't start within two minutes of a UTC day change."""
    left = 86400 - time.time() % 86400
    if left < 120:
        time.sleep(left + 3)


def generate(rnd, now_ms):
    """Events in log order (a list of dicts, the native format) plus, per event, the test's own
    knowledge of it (visitor identity input, exclusion reason)."""
    today = local_dt(now_ms).date()
    span_from = local_midnight_ms(today - datetime.timedelta(days=4))
    span_to = now_ms - 10 * 60 * 1000
    visitors = []
    for i in range(150):
        ua = rnd.choice(BROWSER_UAS) % rnd.randint(0, 9)
        ip = "203.0.113.%d" % rnd.randint(1, 60) if rnd.random() < 0.5 else \
            "198.51.100.%d" % rnd.randint(1, 60)
        vid = "client-%d" % i if rnd.random() < 0.15 else None
        visitors.append({"ip": ip, "ua": ua, "vid": vid})
    # distinct (ip, ua) pairs for the anonymous ones (shared ips or shared UAs are fine)
    seen = set()
    for v in visitors:
        while v["vid"] is None and (v["ip"], v["ua"]) in seen:
            v["ua"] = rnd.choice(BROWSER_UAS) % rnd.randint(10, 99)
        seen.add((v["ip"], v["ua"]))

    # interesting instants: local midnights, UTC midnights, hour boundaries
    def session_start():
        r = rnd.random()
        if r < 0.12:  # around a local midnight
            d = today - datetime.timedelta(days=rnd.randint(0, 4))
            return local_midnight_ms(d) + rnd.randint(-40, 10) * 60000 + rnd.randint(0, 59999)
        if r < 0.2:  # around a UTC midnight (the salt day changes)
            return (utc_day(now_ms) - rnd.randint(0, 4)) * 86400000 + \
                rnd.randint(-40, 10) * 60000 + rnd.randint(0, 59999)
        if r < 0.3:  # just before an hour boundary
            h = rnd.randint(span_from // 3600000, span_to // 3600000)
            return h * 3600000 - rnd.randint(1, 20) * 60000
        return rnd.randint(span_from, span_to - 3 * 3600 * 1000)

    def gap():
        r = rnd.random()
        if r < 0.04:
            return 0
        if r < 0.08:
            return GAP_MS - 1           # just under 30 min: same visit
        if r < 0.11:
            return GAP_MS               # exactly 30 min: a new visit
        if r < 0.13:
            return GAP_MS + 1
        if r < 0.16:
            return rnd.randint(25, 35) * 60000
        if r < 0.2:
            return rnd.randint(1, 5) * 3600000
        return rnd.randint(1000, 8 * 60000)

    events = []
    n = 0
    for vi, v in enumerate(visitors):
        for _ in range(rnd.choice([1, 2, 2, 3, 3, 4, 5, 6])):
            ts = session_start()
            for k in range(min(int(rnd.expovariate(1 / 7.0)) + 1, 30)):
                if k:
                    ts += gap()
                if ts >= span_to:
                    break
                if ts < span_from - 3600000:
                    continue
                n += 1
                events.append(make_event(rnd, v, ts, n))
    # bots and foreign hosts: acknowledged, never counted
    for i in range(40):
        v = {"ip": "192.0.2.%d" % (i % 5 + 1), "ua": BOT_UA, "vid": None}
        n += 1
        events.append(make_event(rnd, v, rnd.randint(span_from, span_to), n))
    for i in range(30):
        v = rnd.choice(visitors)
        n += 1
        e = make_event(rnd, v, rnd.randint(span_from, span_to), n)
        e["url"] = "https://evil.example.net/p%d" % (i % 3)
        events.append(e)
    rnd.shuffle(events)  # out of time order: late events extend and merge visits
    # client retries (same id, same content) and conflicting repeats (same id, other page)
    with_id = [e for e in events if "id" in e]
    for e in rnd.sample(with_id, len(with_id) // 20):
        c = json.loads(json.dumps(e))
        if rnd.random() < 0.3:
            c["url"] = "https://example.com/retried"
            c["ts"] = c["ts"] + rnd.randint(-600000, 600000)
        pos = events.index(e)
        events.insert(rnd.randint(pos + 1, len(events)), c)
    return events


def make_event(rnd, v, ts, n):
    r = rnd.random()
    name = ("pageview" if r < 0.68 else "Signup" if r < 0.75 else "Download" if r < 0.81 else
            "Scroll" if r < 0.86 else "engagement" if r < 0.92 else "Outbound Link: Click")
    e = {"site": SITE, "name": name, "ts": ts, "ip": v["ip"], "user_agent": v["ua"]}
    if v["vid"]:
        e["visitor_id"] = v["vid"]
    if name == "pageview" or rnd.random() < 0.93:
        qs = ["%s=%s" % (k, rnd.choice(vals)) for k, vals in UTM.items() if rnd.random() < 0.15]
        e["url"] = "https://%s%s%s" % (rnd.choice(HOSTS), rnd.choice(PATHS),
                                       "?" + "&".join(qs) if qs else "")
    ref = rnd.choice(REFERRERS)
    if ref:
        e["referrer"] = ref
    props = {k: rnd.choice(vals) for k, vals in PROPS.items() if rnd.random() < 0.25}
    if rnd.random() < 0.05:
        props["plan"] = 3  # a number: stored as its text "3"
    if props:
        e["props"] = props
    if name == "Scroll" or (name == "Download" and rnd.random() < 0.3):
        e["interactive"] = False
    if name == "Signup" and rnd.random() < 0.5:
        cur = "EUR" if rnd.random() < 0.8 else "USD"
        amount = rnd.choice(["19.99", "5", "0.5", 12.25, "1234.567891"])
        e["revenue"] = {"amount": amount, "currency": cur}
    if rnd.random() < 0.85:
        e["id"] = "ev-%d" % n
    return e


def revenue_micros(amount):
    if isinstance(amount, str):
        units, _, frac = amount.partition(".")
        f = (frac + "000000")[:6]
        up = 1 if len(frac) > 6 and frac[6] >= "5" else 0
        return int(units) * 1000000 + int(f) + up
    return int(math.floor(amount * 1e6 + 0.5))


# ------------------------------------------------------------------ the reference

def parse_url(url):
    m = re.match(r"^https?://([^/?#]+)([^?#]*)(?:\?([^#]*))?", url)
    host, path, qs = m.group(1).lower(), m.group(2) or "/", m.group(3) or ""
    params = {}
    for part in qs.split("&") if qs else []:
        k, _, val = part.partition("=")
        params.setdefault(k, val)
    return host, path, params


def host_allowed(host):
    return host == SITE or host.endswith("." + SITE)


def goal_of(name, path, goals):
    for g in goals:
        kind, _, val = g.partition(":")
        if kind == "event" and name == val and name != "pageview":
            return val
        if kind == "page" and name == "pageview" and path == val:
            return "Visit " + val
    return None


class Reference:
    """The events of one site in SQLite: table ev (counted events), table vi (visits)."""

    def __init__(self, events, now_ms, goals=("event:Signup", "page:/pricing"),
                 currency="EUR"):
        self.currency = currency
        U = utc_day(now_ms)
        rows = []
        seen_ids = set()
        self.excluded = {"bot": 0, "host": 0, "engagement": 0, "duplicate": 0}
        for off, e in enumerate(events):
            name = e.get("name", "pageview")
            host, path, params = parse_url(e["url"]) if "url" in e else ("", "", {})
            ua = e.get("user_agent", "")
            if ua == BOT_UA:
                self.excluded["bot"] += 1
                continue
            if "url" in e and not host_allowed(host):
                self.excluded["host"] += 1
                continue
            if name == "engagement":
                self.excluded["engagement"] += 1
                continue
            if e.get("id"):
                if e["id"] in seen_ids:
                    self.excluded["duplicate"] += 1
                    continue
                seen_ids.add(e["id"])
            ts = e["ts"]
            if e.get("visitor_id"):
                who = "C|" + e["visitor_id"]
            else:
                d = utc_day(ts)
                salt_day = d if U <= d <= U + 1 else U  # salts held: U, U + 1
                who = "A|%s|%s|%d" % (e.get("ip", ""), ua, salt_day)
            props = e.get("props", {})
            rev = e.get("revenue")
            rows.append({
                "off": off, "ts": ts, "visitor": who, "page": path, "hostname": host,
                "name": name, "pv": int(name == "pageview"),
                "inter": int(e.get("interactive", True)),
                "p_plan": str(props.get("plan", "")), "p_variant": str(props.get("variant", "")),
                "goal": goal_of(name, path, goals),
                "rev": revenue_micros(rev["amount"]) if rev else 0,
                "rev_cur": rev["currency"] if rev else "",
                "utm_source": params.get("utm_source", ""),
                "utm_medium": params.get("utm_medium", ""),
                "utm_campaign": params.get("utm_campaign", ""),
                "day": day_label(ts), "hour": hour_label(ts)})
        # visits
        by_visitor = {}
        for r in rows:
            by_visitor.setdefault(r["visitor"], []).append(r)
        visits = []
        for who, evs in by_visitor.items():
            evs.sort(key=lambda r: (r["ts"], r["off"]))
            cur = []
            for r in evs:
                if cur and r["ts"] - cur[-1]["ts"] >= GAP_MS:
                    visits.append(cur)
                    cur = []
                cur.append(r)
            visits.append(cur)
        self.db = db = sqlite3.connect(":memory:")
        db.create_function("regexp", 2, lambda p, v: re.search(p, v or "") is not None,
                           deterministic=True)
        db.execute("CREATE TABLE ev (off INTEGER PRIMARY KEY, ts INTEGER, visitor TEXT, "
                   "visit INTEGER, page TEXT, hostname TEXT, name TEXT, pv INTEGER, "
                   "inter INTEGER, p_plan TEXT, p_variant TEXT, goal TEXT, rev INTEGER, "
                   "rev_cur TEXT, day TEXT, hour TEXT)")
        db.execute("CREATE TABLE vi (id INTEGER PRIMARY KEY, visitor TEXT, first_ts INTEGER, "
                   "last_ts INTEGER, entry_page TEXT, exit_page TEXT, utm_source TEXT, "
                   "utm_medium TEXT, utm_campaign TEXT, pageviews INTEGER, bounce INTEGER, "
                   "duration INTEGER, day TEXT, hour TEXT)")
        for vid, v in enumerate(visits):
            first, last = v[0], v[-1]
            pvs = sum(r["pv"] for r in v)
            other = sum(1 for r in v if not r["pv"] and r["inter"])
            db.execute("INSERT INTO vi VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                       (vid, first["visitor"], first["ts"], last["ts"], first["page"],
                        last["page"], first["utm_source"], first["utm_medium"],
                        first["utm_campaign"], pvs, int(pvs == 1 and other == 0),
                        last["ts"] - first["ts"], first["day"], first["hour"]))
            for r in v:
                db.execute("INSERT INTO ev VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                           (r["off"], r["ts"], r["visitor"], vid, r["page"], r["hostname"],
                            r["name"], r["pv"], r["inter"], r["p_plan"], r["p_variant"],
                            r["goal"], r["rev"], r["rev_cur"], r["day"], r["hour"]))
        db.execute("CREATE INDEX ev_visit ON ev(visit)")
        self.nevents, self.nvisits = len(rows), len(visits)

    def values(self, dim):
        """The values of a field dimension in the data ("" = absent)."""
        if dim in EVENT_DIMS:
            sql = "SELECT DISTINCT %s FROM ev" % EVENT_DIMS[dim]
        else:
            sql = "SELECT DISTINCT %s FROM vi" % VISIT_DIMS[dim]
        return sorted(v for (v,) in self.db.execute(sql) if v is not None)

    # -- filters

    @staticmethod
    def leaf_sql(leaf, args):
        op, dim, vals = leaf[0], leaf[1], leaf[2]
        col = ("e." + EVENT_DIMS[dim]) if dim in EVENT_DIMS else ("v." + VISIT_DIMS[dim])
        vals = ["" if x == "(none)" else x for x in vals]
        if op in ("is", "is_not"):
            args.extend(vals)
            s = "%s IN (%s)" % (col, ",".join("?" * len(vals)))
            if dim == "event:goal":
                s = "(%s IS NOT NULL AND %s)" % (col, s)
        elif op in ("contains", "contains_not"):
            args.extend(vals)
            s = "(%s)" % " OR ".join("instr(%s, ?) > 0" % col for _ in vals)
        else:
            args.extend(vals)
            s = "(%s)" % " OR ".join("%s REGEXP ?" % col for _ in vals)
        return "NOT " + s if op.endswith("_not") else s

    def split_filters(self, filters):
        ev_leaves = [f for f in filters if f[1] in EVENT_DIMS]
        vi_leaves = [f for f in filters if f[1] in VISIT_DIMS]
        return ev_leaves, vi_leaves

    def where(self, leaves, args):
        return " AND ".join(["1"] + [self.leaf_sql(f, args) for f in leaves])

    # -- aggregation

    def aggregate(self, filters, dim, rng):
        """{group key: agg dict} for the in-scope events/visits of range rng = (from, to);
        dim: None, "time:day", "time:hour" or a field dimension. The key is the shown value."""
        ev_l, vi_l = self.split_filters(filters)
        lo, hi = rng
        if dim is None:
            gk_e, gk_v = "''", "''"
        elif dim.startswith("time:"):
            c = dim.split(":")[1]  # the day / hour label columns
            gk_e, gk_v = "e." + c, "v." + c
        elif dim in EVENT_DIMS:
            gk_e, gk_v = "e." + EVENT_DIMS[dim], None
        else:
            gk_e = gk_v = "v." + VISIT_DIMS[dim]
        goal_only = " AND e.goal IS NOT NULL" if dim == "event:goal" else ""
        out = {}

        def agg(k):
            return out.setdefault(k, {"pageviews": 0, "events": 0, "visits": 0, "bounces": 0,
                                      "duration": 0, "visitors": 0, "revenue": 0})
        sql = ("SELECT %s, SUM(e.pv), COUNT(*), COUNT(DISTINCT e.visitor), "
               "SUM(CASE WHEN e.rev_cur = ? THEN e.rev ELSE 0 END) "
               "FROM ev e JOIN vi v ON v.id = e.visit WHERE e.ts >= ? AND e.ts < ? AND " %
               gk_e)
        args = [self.currency, lo, hi]
        sql += self.where(ev_l, args) + " AND " + self.where(vi_l, args) + goal_only
        sql += " GROUP BY 1"
        for k, pv, n, uv, rev in self.db.execute(sql, args):
            a = agg(k)
            a.update(pageviews=pv, events=n, visitors=uv, revenue=rev)
        args = []
        if gk_v is not None:
            sql = ("SELECT %s, COUNT(*), SUM(v.bounce), SUM(v.duration) FROM vi v "
                   "WHERE v.first_ts >= ? AND v.first_ts < ? AND " % gk_v)
            args = [lo, hi]
            sql += self.where(vi_l, args)
            sql += " AND EXISTS (SELECT 1 FROM ev e WHERE e.visit = v.id AND "
            sql += self.where(ev_l, args) + ") GROUP BY 1"
        else:
            sql = ("SELECT x.k, COUNT(*), SUM(v.bounce), SUM(v.duration) FROM vi v JOIN "
                   "(SELECT DISTINCT e.visit AS vid, %s AS k FROM ev e WHERE " % gk_e)
            sql += self.where(ev_l, args) + goal_only + ") x ON x.vid = v.id "
            sql += "WHERE v.first_ts >= ? AND v.first_ts < ? AND "
            args += [lo, hi]
            sql += self.where(vi_l, args) + " GROUP BY 1"
        for k, n, b, d in self.db.execute(sql, args):
            agg(k).update(visits=n, bounces=b, duration=d)
        return out

    def answer(self, q):
        """The expected `results` of a v2 query document q, as rows_of() shapes them, plus the
        list of rows (for messages)."""
        rng = q["_range"]
        filters = q.get("filters", [])
        dims = q.get("dimensions", [])
        dim = dims[0] if dims else None
        groups = self.aggregate(filters, dim, rng)
        total = self.aggregate(filters, None, rng).get("", None)
        base = None
        if "conversion_rate" in q["metrics"]:
            nogoal = [f for f in filters if f[1] != "event:goal"]
            base = self.aggregate(nogoal, None, rng).get("", None)
        rows = []
        if dim is None:
            groups = {"": groups.get("", None) or self.empty()}
        for k, a in groups.items():
            if dim is not None and not any(a[m] for m in ("pageviews", "events", "visits",
                                                          "visitors", "revenue")):
                continue
            shown = [] if dim is None else [k if k != "" else "(none)"]
            rows.append([shown, [self.metric(m, a, total, base) for m in q["metrics"]]])
        return sorted(json.dumps(norm(r), sort_keys=True) for r in rows)

    @staticmethod
    def empty():
        return {"pageviews": 0, "events": 0, "visits": 0, "bounces": 0, "duration": 0,
                "visitors": 0, "revenue": 0}

    def metric(self, m, a, total, base):
        if m in ("visitors", "visits", "pageviews", "events"):
            return a[m]
        v = a["visits"]
        if m == "views_per_visit":
            return round_to(a["pageviews"] / v, 2) if v else 0
        if m == "bounce_rate":
            return c_round(100.0 * a["bounces"] / v) if v else 0
        if m == "visit_duration":
            return c_round(a["duration"] / 1000.0 / v) if v else 0
        if m == "percentage":
            return round_to(100.0 * a["visitors"] / total["visitors"], 1) \
                if total and total["visitors"] else 0
        if m == "conversion_rate":
            return round_to(100.0 * a["visitors"] / base["visitors"], 2) \
                if base and base["visitors"] else 0
        if m == "total_revenue":
            val = round_to(a["revenue"] / 1e6, 2)
            cur = self.currency
            av = abs(val)
            short = ("%s%.1fM" % (cur, val / 1e6) if av >= 1e6 else
                     "%s%.1fK" % (cur, val / 1e3) if av >= 1e3 else "%s%.1f" % (cur, val))
            return {"currency": cur, "value": val, "short": short, "long": "%s%.2f" % (cur, val)}
        raise AssertionError("metric %s" % m)


# ------------------------------------------------------------------ the random queries

def random_leaf(rnd, ref, dim):
    vals = ref.values(dim)
    if dim == "event:goal":  # goal filters take is and contains only (qparse.c)
        if rnd.random() < 0.3:
            return ["contains", dim, [rnd.choice(["Sign", "pricing", "Visit"])]]
        return ["is", dim, rnd.sample(vals, min(len(vals), rnd.choice([1, 1, 2])))]
    op = rnd.choice(["is", "is", "is_not", "contains", "matches", "contains_not",
                     "matches_not"])
    shown = [v if v else "(none)" for v in vals]
    if op in ("is", "is_not"):
        return [op, dim, rnd.sample(shown, min(len(shown), rnd.choice([1, 1, 2])))]
    if op.startswith("contains"):
        subs = []
        for _ in range(rnd.choice([1, 1, 2])):
            v = rnd.choice([x for x in vals if x] or ["x"])
            a = rnd.randint(0, len(v) - 1)
            subs.append(v[a:a + rnd.randint(1, 3)])
        return [op, dim, sorted(set(subs))]
    return [op, dim, rnd.sample(REGEXES[dim], min(len(REGEXES[dim]), rnd.choice([1, 1, 2])))]


def random_query(rnd, ref, now_ms):
    today = local_dt(now_ms).date()
    q = {"site_id": SITE}
    if rnd.random() < 0.8:
        d1 = today - datetime.timedelta(days=rnd.randint(1, 6))
        d2 = d1 + datetime.timedelta(days=rnd.randint(0, 3))
        if d2 >= today:
            d2 = today - datetime.timedelta(days=1)
        q["date_range"] = [d1.isoformat(), d2.isoformat()]
        rng = (local_midnight_ms(d1), local_midnight_ms(d2 + datetime.timedelta(days=1)))
    else:  # whole local hours, the end given as the last second
        last_hour = (now_ms - 3600000) // 3600000
        h1 = rnd.randint(last_hour - 4 * 24, last_hour - 1)
        h2 = min(h1 + rnd.randint(1, 30), last_hour)
        rng = (h1 * 3600000, h2 * 3600000)
        q["date_range"] = [iso_local(rng[0]), iso_local(rng[1] - 1000)]
    r = rnd.random()
    dim = None
    if r < 0.3:
        dims = []
    elif r < 0.42:
        dims = ["time:day"]
    elif r < 0.5:
        dims = ["time:hour"]
    else:
        dim = rnd.choice(FIELD_DIMS)
        dims = [dim]
    q["dimensions"] = dims
    filters = []
    r = rnd.random()
    if r < 0.33:
        d1 = rnd.choice(FIELD_DIMS)
        d2 = rnd.choice([d for d in FIELD_DIMS if d != d1])
        filters = [random_leaf(rnd, ref, d1), random_leaf(rnd, ref, d2)]
    elif r < 0.66:
        filters = [random_leaf(rnd, ref, dim or rnd.choice(FIELD_DIMS))]
    if filters:
        q["filters"] = filters
    pool = BASE_METRICS
    if dim in EVENT_DIMS:  # session metrics go with visit:* and time dimensions (qparse.c)
        pool = [m for m in pool if m not in SESSION_METRICS]
    metrics = rnd.sample(pool, rnd.randint(1, 4))
    if dim and rnd.random() < 0.3:
        metrics.append("percentage")
    if (dim == "event:goal" or any(f[1] == "event:goal" for f in filters)) and \
            rnd.random() < 0.6:
        metrics.append("conversion_rate")
    rnd.shuffle(metrics)
    q["metrics"] = metrics
    q["pagination"] = {"limit": 10000}
    return q, rng


def rollup_can(q):
    """qplan_rollup_can (query.c), on the shapes generated here."""
    if "conversion_rate" in q["metrics"]:
        return False
    dims = q["dimensions"]
    if len(dims) > 1:
        return False
    field = None
    if dims and not dims[0].startswith("time:"):
        if dims[0] not in ROLLUP_DIMS:
            return False
        field = dims[0]
    for f in q.get("filters", []):
        if f[1] not in ROLLUP_DIMS:
            return False
        if field is None:
            field = f[1]
        if f[1] != field:
            return False
    return True


STREAM_METRICS = {"visitors", "visits", "pageviews", "views_per_visit", "bounce_rate",
                  "visit_duration", "time_on_page", "events", "percentage", "conversion_rate",
                  "group_conversion_rate"}


def stream_can(q):
    """qplan_stream_can (qscan.c), on the shapes generated here (flat filter lists)."""
    if any(m not in STREAM_METRICS for m in q["metrics"]):
        return False
    if "event:goal" in q["dimensions"] and "time_on_page" in q["metrics"]:
        return False
    if "visit:exit_page" in q["dimensions"] and len(q["dimensions"]) > 1:
        return False
    return "visit:exit_page" not in [f[1] for f in q.get("filters", [])]


# ------------------------------------------------------------------ the differential test

@test
def random_queries_scan_rollup_and_reference_agree():
    rnd = random.Random(20261126)
    wait_out_utc_midnight()
    key, digests = admin_key()
    t = Tally(site_config(digests))
    t.start()
    try:
        now_ms = int(time.time() * 1000)
        events = generate(rnd, now_ms)
        t0 = time.time()
        send(t, key, events)
        t.wait_consumers(30)
        ref = Reference(events, now_ms)
        print("sent %d events (%.1fs): %d counted in %d visits, excluded %s" %
              (len(events), time.time() - t0, ref.nevents, ref.nvisits, ref.excluded))
        check(ref.nvisits > 300 and ref.nevents > 2000, "generator too small")
        nq = ncomparable = nskipped = nstream = 0
        mismatches = []
        t0 = time.time()
        nrows = nempty = 0
        shapes = {}
        rollup_answers = []
        qranges = {}
        while nq < QUERIES:
            qdoc, rng = random_query(rnd, ref, now_ms)
            nq += 1
            expect = ref.answer(dict(qdoc, _range=rng))
            nrows += len(expect)
            nempty += not any(m not in (0, None) and not isinstance(m, dict)
                              for r in expect for m in json.loads(r)[1])
            shape = "%s/%d filters" % ((qdoc["dimensions"] or ["none"])[0].split(":")[0],
                                       len(qdoc.get("filters", [])))
            shapes[shape] = shapes.get(shape, 0) + 1
            s, body = query(t, key, qdoc, "scan")
            got_scan = rows_of(body) if s == 200 else ["HTTP %d %s" % (s, body)]
            if stream_can(qdoc):
                s3, body3 = query(t, key, qdoc, "stream")
                nstream += 1
                got_stream = rows_of(body3) if s3 == 200 else ["HTTP %d %s" % (s3, body3)]
                if got_stream != expect:
                    mismatches.append((qdoc, expect, got_stream, None))
            got_rollup = None
            if rollup_can(qdoc):
                s2, body2 = query(t, key, qdoc, "rollup")
                if s2 == 400 and "rollups cannot answer" in str(body2):
                    nskipped += 1
                else:
                    ncomparable += 1
                    got_rollup = rows_of(body2) if s2 == 200 else ["HTTP %d %s" % (s2, body2)]
                    rollup_answers.append((qdoc, got_rollup))
                    qranges[id(qdoc)] = rng
            if got_scan != expect or (got_rollup is not None and
                                      (got_rollup != expect or got_rollup != got_scan)):
                mismatches.append((qdoc, expect, got_scan, got_rollup))
        print("queries %d (%d expected rows, %d queries all-zero or empty; shapes %s)" %
              (nq, nrows, nempty, ", ".join("%s %d" % kv for kv in sorted(shapes.items()))))
        print("queries %d, rollup-comparable %d (rollup refused %d), stream-comparable %d, "
              "mismatches %d (%.1fs)" % (nq, ncomparable, nskipped, nstream, len(mismatches),
                                         time.time() - t0))
        check(nstream >= QUERIES // 5, "too few queries the stream form answers: %d" % nstream)
        # the same rollup queries again: whole-day breakdowns now come from the query cache
        for qdoc, first in rollup_answers:
            s2, body2 = query(t, key, qdoc, "rollup")
            again = rows_of(body2) if s2 == 200 else ["HTTP %d %s" % (s2, body2)]
            if again != first:
                mismatches.append((qdoc, first, first, again))
        # the day ranges again, ending today: a breakdown reads today's cells and the kept
        # state of the days before (rollup.h). Asked once (the cache fills), then events of
        # today arrive (known and new visitors) and they are asked again: each answer must be
        # SQL's, before and after.
        today = local_dt(now_ms).date()
        today_ms = local_midnight_ms(today)
        span_to = now_ms - 10 * 60 * 1000
        nextra = 0
        if span_to - today_ms > 60000:
            to_today = []
            for qdoc, _ in rollup_answers:
                rng = qranges[id(qdoc)]
                if not isinstance(qdoc["date_range"][0], str) or "T" in qdoc["date_range"][0]:
                    continue
                q2 = dict(qdoc, date_range=[qdoc["date_range"][0], today.isoformat()])
                to_today.append((q2, (rng[0], local_midnight_ms(
                    today + datetime.timedelta(days=1)))))
            for round_ in range(2):
                if round_ == 1:
                    known = [{"ip": e["ip"], "ua": e["user_agent"], "vid": e.get("visitor_id")}
                             for e in rnd.sample(events, 60) if e.get("user_agent") != BOT_UA]
                    known += [{"ip": "203.0.113.%d" % (200 + i),
                               "ua": BROWSER_UAS[0] % (50 + i), "vid": None} for i in range(20)]
                    extra = [make_event(rnd, v, rnd.randint(today_ms, span_to - 1), 100000 + i)
                             for i, v in enumerate(known)]
                    send(t, key, extra)
                    t.wait_consumers(30)
                    events = events + extra
                    ref = Reference(events, now_ms)
                    nextra = len(extra)
                for q2, rng2 in to_today:
                    s2, body2 = query(t, key, q2, "rollup")
                    if s2 == 400 and "rollups cannot answer" in str(body2):
                        continue  # as above (a filter the range's cells cannot answer)
                    expect = ref.answer(dict(q2, _range=rng2))
                    got = rows_of(body2) if s2 == 200 else ["HTTP %d %s" % (s2, body2)]
                    if got != expect:
                        mismatches.append((q2, expect, got, got))
        print("rollup queries asked again: %d; %d of them to today, before and after %d events "
              "of today" % (len(rollup_answers), len(to_today) if nextra else 0, nextra))
        if mismatches:
            msg = []
            for qdoc, expect, got_scan, got_rollup in mismatches[:4]:
                msg.append("query %s\n  reference %s\n  scan      %s\n  rollup    %s" %
                           (json.dumps(qdoc), describe(expect, got_scan),
                            describe(got_scan, expect),
                            describe(got_rollup, expect) if got_rollup is not None else "-"))
            raise AssertionError("%d of %d queries disagree; the first ones:\n%s" %
                                 (len(mismatches), nq, "\n".join(msg)))
    finally:
        t.cleanup()


def describe(rows, other, cap=12):
    """rows, with the ones absent from other first (the differences), cut to cap."""
    if rows is None:
        return "-"
    diff = [r for r in rows if r not in other]
    same = len(rows) - len(diff)
    return "%d rows, %d also in the other; differing: %s" % (len(rows), same,
                                                             "; ".join(diff[:cap]))


# ------------------------------------------------------------------ hand-checked cases
# Each case sends a handful of events (stable visitor ids, so identities are obvious) on past
# days of January or July 2026 (Berlin: CET +01:00 / CEST +02:00) and checks the answers worked
# out by hand in the comments, with the scan and, where the planner allows, the rollups.

def at(local):
    """'2026-01-14 10:00:00[.mmm]' Berlin time -> epoch ms."""
    dt = datetime.datetime.strptime(local, "%Y-%m-%d %H:%M:%S.%f" if "." in local
                                    else "%Y-%m-%d %H:%M:%S").replace(tzinfo=TZ)
    return int(round(dt.timestamp() * 1000))


def utc(text):
    dt = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f" if "." in text
                                    else "%Y-%m-%dT%H:%M:%S")
    return int(round(dt.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000))


def ev(vid, ts, path="/", name="pageview", **kw):
    e = {"site": SITE, "name": name, "visitor_id": vid, "ts": ts if isinstance(ts, int)
         else at(ts), "url": "https://example.com" + path, "ip": "203.0.113.7",
         "user_agent": BROWSER_UAS[0] % 1}  # no User-Agent at all would be a bot
    e.update(kw)
    return e


class Hand:
    def __init__(self, events):
        self.key, digests = admin_key()
        self.t = Tally(site_config(digests))
        self.t.start()
        send(self.t, self.key, events)
        self.t.wait_consumers(10)

    def run(self, q, plans=None):
        """The body of q's answer by each plan (all must be equal); returns it."""
        q = dict(q, site_id=SITE)
        if plans is None:
            plans = ["scan", "rollup"] if rollup_can(dict({"dimensions": []}, **q)) else \
                ["scan"]
        bodies = []
        for plan in plans:
            s, body = query(self.t, self.key, q, plan)
            eq(s, 200, "%s: %s (%s)" % (plan, body, json.dumps(q)))
            bodies.append(body)
        for b in bodies[1:]:
            eq(norm(b["results"]), norm(bodies[0]["results"]), "rollup vs scan: %s" % q)
        return bodies[0]

    def results(self, q, plans=None):
        return norm(self.run(q, plans)["results"])

    def close(self):
        self.t.cleanup()


def hand_case(events, fn):
    h = Hand(events)
    try:
        fn(h)
    finally:
        h.close()


def R(dims, metrics):
    return {"dimensions": dims, "metrics": metrics}


DAY14 = ["2026-01-14", "2026-01-14"]


@test
def hand_bounce_rate():
    # A: one pageview                               -> 1 visit, bounce
    # B: pageviews /a, /b                           -> not a bounce
    # C: pageview /a + non-interactive Scroll       -> bounce (only one pageview, nothing
    #                                                  interactive besides it)
    # D: pageview /a + Signup (interactive)         -> not a bounce
    # E: only a Download custom event on /d         -> no pageview: not a bounce
    # F: pageviews /a at 10:00 and 11:00 (60 min)   -> two visits, two bounces
    # visits 7, bounces A C F F = 4 -> round(57.14) = 57
    evs = [ev("A", "2026-01-14 10:00:00", "/a"),
           ev("B", "2026-01-14 10:00:00", "/a"), ev("B", "2026-01-14 10:05:00", "/b"),
           ev("C", "2026-01-14 10:00:00", "/a"),
           ev("C", "2026-01-14 10:01:00", "/a", "Scroll", interactive=False),
           ev("D", "2026-01-14 10:00:00", "/a"), ev("D", "2026-01-14 10:02:00", "/a", "Signup"),
           ev("E", "2026-01-14 10:00:00", "/d", "Download"),
           ev("F", "2026-01-14 10:00:00", "/a"), ev("F", "2026-01-14 11:00:00", "/a")]

    def check_all(h):
        m = ["visits", "bounce_rate"]
        eq(h.results({"date_range": DAY14, "metrics": m}), [R([], [7, 57])])
        # entry page /a: A B C D F F = 6 visits, 4 bounces -> 67; /d: E, 0
        eq(sorted(h.results({"date_range": DAY14, "metrics": m,
                             "dimensions": ["visit:entry_page"]}), key=str),
           [R(["/a"], [6, 67]), R(["/d"], [1, 0])])
        # visits holding a pageview of /b: B's, not a bounce
        eq(h.results({"date_range": DAY14, "metrics": m,
                      "filters": [["is", "event:page", ["/b"]]]}), [R([], [1, 0])])
        # exit page /a: A C D F F (B ends on /b, E on /d): bounces A C F F -> 80
        eq(h.results({"date_range": DAY14, "metrics": m,
                      "filters": [["is", "visit:exit_page", ["/a"]]]}), [R([], [5, 80])])
    hand_case(evs, check_all)


@test
def hand_visit_duration():
    # A: 10:00:00, 10:10:00, 10:39:59.999 (gaps 10 min, 29:59.999) -> one visit of 2399.999 s
    # B: 10:00:00, 10:30:00.000 (gap exactly 30 min)              -> two visits of 0 s
    # C: pageview 10:00:00 + Download 10:00:30                    -> one visit of 30 s
    # visits 4, duration 2429.999 s / 4 = 607.49975 -> 607; visitors 3
    evs = [ev("A", "2026-01-14 10:00:00"), ev("A", "2026-01-14 10:10:00", "/x"),
           ev("A", "2026-01-14 10:39:59.999", "/y"),
           ev("B", "2026-01-14 10:00:00"), ev("B", "2026-01-14 10:30:00"),
           ev("C", "2026-01-14 10:00:00"), ev("C", "2026-01-14 10:00:30", "/", "Download")]

    def check_all(h):
        eq(h.results({"date_range": DAY14, "metrics": ["visitors", "visits", "visit_duration"]}),
           [R([], [3, 4, 607])])
        # by exit page: /y: A (2400 s); /: B B C -> 30 / 3 = 10 s
        eq(sorted(h.results({"date_range": DAY14, "metrics": ["visits", "visit_duration"],
                             "dimensions": ["visit:exit_page"]}), key=str),
           [R(["/"], [3, 10]), R(["/y"], [1, 2400])])
        # by hour: B's second visit starts at 10:30, still hour 10: all four visits
        eq(h.results({"date_range": DAY14, "metrics": ["visits", "visit_duration"],
                      "dimensions": ["time:hour"]}),
           [R(["2026-01-14 10:00:00"], [4, 607])])
    hand_case(evs, check_all)


@test
def hand_views_per_visit():
    # A: 4 pageviews in one visit; B: 1; C: 2 pageviews + Signup -> 7 pageviews / 3 visits
    # = 2.333 -> 2.33; events 4 + 1 + 3 = 8
    evs = [ev("A", "2026-01-14 09:0%d:00" % i, "/a%d" % i) for i in range(4)] + \
        [ev("B", "2026-01-14 09:00:00"),
         ev("C", "2026-01-14 09:00:00"), ev("C", "2026-01-14 09:01:00", "/c"),
         ev("C", "2026-01-14 09:02:00", "/c", "Signup")]

    def check_all(h):
        eq(h.results({"date_range": DAY14,
                      "metrics": ["pageviews", "visits", "views_per_visit", "events"]}),
           [R([], [7, 3, 2.33, 8])])
        # visits entering on /: B (1 pageview) and C (2) -> 1.5
        eq(h.results({"date_range": DAY14, "metrics": ["views_per_visit"],
                      "filters": [["is", "visit:entry_page", ["/"]]]}), [R([], [1.5])])
    hand_case(evs, check_all)


@test
def hand_conversion_rate():
    # goals: event:Signup, page:/pricing. Six visitors:
    # A /pricing; B / + Signup; C /; D /pricing + Signup; E /about; F /pricing twice
    # "Visit /pricing": A D F = 3 visitors of 6 -> 50; 4 events
    # "Signup": B D = 2 of 6 -> 33.33; 2 events
    evs = [ev("A", "2026-01-14 12:00:00", "/pricing"),
           ev("B", "2026-01-14 12:00:00"), ev("B", "2026-01-14 12:01:00", "/", "Signup"),
           ev("C", "2026-01-14 12:00:00"),
           ev("D", "2026-01-14 12:00:00", "/pricing"),
           ev("D", "2026-01-14 12:01:00", "/pricing", "Signup"),
           ev("E", "2026-01-14 12:00:00", "/about"),
           ev("F", "2026-01-14 12:00:00", "/pricing"), ev("F", "2026-01-14 12:05:00", "/pricing")]

    def check_all(h):
        eq(sorted(h.results({"date_range": DAY14, "dimensions": ["event:goal"],
                             "metrics": ["visitors", "events", "conversion_rate"]}), key=str),
           [R(["Signup"], [2, 2, 33.33]), R(["Visit /pricing"], [3, 4, 50])])
        eq(h.results({"date_range": DAY14, "metrics": ["visitors", "conversion_rate"],
                      "filters": [["is", "event:goal", ["Signup"]]]}), [R([], [2, 33.33])])
        # with another filter, the base keeps it: visits entering on /pricing are A D F (3
        # visitors); of them D signed up -> 33.33
        eq(h.results({"date_range": DAY14, "metrics": ["visitors", "conversion_rate"],
                      "filters": [["is", "event:goal", ["Signup"]],
                                  ["is", "visit:entry_page", ["/pricing"]]]}),
           [R([], [1, 33.33])])
    hand_case(evs, check_all)


@test
def hand_percentage():
    # A: /a, /b; B: /a; C: /c -> 3 visitors: /a 2 (66.7 %), /b 1 (33.3), /c 1 (33.3)
    evs = [ev("A", "2026-01-14 08:00:00", "/a"), ev("A", "2026-01-14 08:01:00", "/b"),
           ev("B", "2026-01-14 08:00:00", "/a"), ev("C", "2026-01-14 08:00:00", "/c")]

    def check_all(h):
        m = ["visitors", "percentage"]
        eq(sorted(h.results({"date_range": DAY14, "metrics": m,
                             "dimensions": ["event:page"]}), key=str),
           [R(["/a"], [2, 66.7]), R(["/b"], [1, 33.3]), R(["/c"], [1, 33.3])])
        # the total takes the same filters: without /c, A and B -> /a 100 %, /b 50 %
        eq(sorted(h.results({"date_range": DAY14, "metrics": m, "dimensions": ["event:page"],
                             "filters": [["is_not", "event:page", ["/c"]]]}), key=str),
           [R(["/a"], [2, 100]), R(["/b"], [1, 50])])
    hand_case(evs, check_all)


@test
def hand_time_zones():
    # Berlin is UTC+1 in January, UTC+2 in July:
    # 2026-01-14T23:30Z = 2026-01-15 00:30 local; 2026-01-14T22:59:59.999Z = 14th 23:59:59.999
    # 2026-07-14T22:30Z = 2026-07-15 00:30 local; 2026-07-14T21:59Z = 14th 23:59
    evs = [ev("A", utc("2026-01-14T23:30:00"), "/late"),
           ev("B", utc("2026-01-14T22:59:59.999"), "/edge"),
           ev("C", utc("2026-07-14T22:30:00"), "/summer-late"),
           ev("D", utc("2026-07-14T21:59:00"), "/summer")]

    def check_all(h):
        pv = ["pageviews"]
        eq(h.results({"date_range": ["2026-01-15", "2026-01-15"], "metrics": pv,
                      "dimensions": ["event:page"]}), [R(["/late"], [1])])
        eq(h.results({"date_range": DAY14, "metrics": pv, "dimensions": ["event:page"]}),
           [R(["/edge"], [1])])
        eq(h.results({"date_range": ["2026-01-14", "2026-01-15"], "metrics": pv,
                      "dimensions": ["time:day"]}),
           [R(["2026-01-14"], [1]), R(["2026-01-15"], [1])])
        eq(h.results({"date_range": ["2026-01-14", "2026-01-15"], "metrics": pv,
                      "dimensions": ["time:hour"]}),
           [R(["2026-01-14 23:00:00"], [1]), R(["2026-01-15 00:00:00"], [1])])
        eq(h.results({"date_range": ["2026-07-15", "2026-07-15"], "metrics": pv,
                      "dimensions": ["event:page"]}), [R(["/summer-late"], [1])])
        eq(h.results({"date_range": ["2026-07-14", "2026-07-14"], "metrics": pv,
                      "dimensions": ["event:page"]}), [R(["/summer"], [1])])
        # a date-time range, its end inclusive to the second: 00:00:00 .. 00:59:59 local
        eq(h.results({"date_range": ["2026-01-15T00:00:00+01:00", "2026-01-15T00:59:59+01:00"],
                      "metrics": pv, "dimensions": ["event:page"]}), [R(["/late"], [1])])
        # the same instants written in UTC
        eq(h.results({"date_range": ["2026-01-14T22:00:00Z", "2026-01-14T22:59:59Z"],
                      "metrics": pv, "dimensions": ["event:page"]}), [R(["/edge"], [1])])
    hand_case(evs, check_all)


@test
def hand_pagination():
    # /p1 .. /p5 seen by 5, 4, 3, 2, 1 visitors; default order: visitors descending
    evs = [ev("v%d" % v, "2026-01-14 10:00:00", "/p%d" % p)
           for p in range(1, 6) for v in range(6 - p)]

    def check_all(h):
        base = {"date_range": DAY14, "metrics": ["visitors"], "dimensions": ["event:page"],
                "include": {"total_rows": True}}
        b = h.run(dict(base, pagination={"limit": 2, "offset": 1}))
        eq(norm(b["results"]), [R(["/p2"], [4]), R(["/p3"], [3])])
        eq(b["meta"]["total_rows"], 5)
        eq(h.results(dict(base, pagination={"limit": 2, "offset": 4})), [R(["/p5"], [1])])
        eq(h.results(dict(base, pagination={"limit": 2, "offset": 5})), [])
        eq(h.results(dict(base, pagination={"limit": 2}, order_by=[["visitors", "asc"]])),
           [R(["/p5"], [1]), R(["/p4"], [2])])
        eq(h.results(dict(base, pagination={"limit": 10})),
           [R(["/p%d" % p], [6 - p]) for p in range(1, 6)])
    hand_case(evs, check_all)


@test
def hand_comparisons_previous_period():
    # main range 2026-01-15 .. 16, previous_period = 2026-01-13 .. 14
    # Jan 13: nothing
    # Jan 14: p1 /a 10:00 + /b 10:05 (one visit, not a bounce), p2 /b 11:00
    # Jan 15: m1 /a 10:00; m2 /a 11:00 + /b 11:10 (one visit, not a bounce)
    # Jan 16: m4 /a, m5 /a, m6 /b, m7 /c (single pageviews: bounces)
    # aggregate: pageviews 7 vs 3 -> change round(4 / 3 * 100) = 133; bounce rate: main 5 of
    #   6 visits (m1 m4 m5 m6 m7) -> 83, previous 1 of 2 (p2) -> 50: change in points 33
    # by page: /a 4 vs 1 (300), /b 2 vs 2 (0), /c 1 vs nothing (0 -> 100)
    # by day, bucket k of the main range against bucket k of the previous one:
    #   15th: 3 vs the 13th: 0 -> change 100;  16th: 4 vs the 14th: 3 -> change 33
    evs = [ev("p1", "2026-01-14 10:00:00", "/a"), ev("p1", "2026-01-14 10:05:00", "/b"),
           ev("p2", "2026-01-14 11:00:00", "/b"),
           ev("m1", "2026-01-15 10:00:00", "/a"), ev("m2", "2026-01-15 11:00:00", "/a"),
           ev("m2", "2026-01-15 11:10:00", "/b"),
           ev("m4", "2026-01-16 10:00:00", "/a"), ev("m5", "2026-01-16 11:00:00", "/a"),
           ev("m6", "2026-01-16 12:00:00", "/b"), ev("m7", "2026-01-16 13:00:00", "/c")]

    def check_all(h):
        base = {"date_range": ["2026-01-15", "2026-01-16"], "metrics": ["pageviews"],
                "include": {"comparisons": {"mode": "previous_period"}}}
        eq(norm(h.run(dict(base, metrics=["pageviews", "bounce_rate"]))["results"]),
           [{"dimensions": [], "metrics": [7, 83],
             "comparison": {"dimensions": [], "metrics": [3, 50], "change": [133, 33]}}])
        eq(sorted(norm(h.run(dict(base, dimensions=["event:page"]))["results"]), key=str),
           [{"dimensions": ["/a"], "metrics": [4],
             "comparison": {"dimensions": ["/a"], "metrics": [1], "change": [300]}},
            {"dimensions": ["/b"], "metrics": [2],
             "comparison": {"dimensions": ["/b"], "metrics": [2], "change": [0]}},
            {"dimensions": ["/c"], "metrics": [1],
             "comparison": {"dimensions": ["/c"], "metrics": [0], "change": [100]}}])
        # one day against the day before, both with data
        eq(norm(h.run(dict(base, date_range=["2026-01-16", "2026-01-16"],
                           dimensions=["time:day"]))["results"]),
           [{"dimensions": ["2026-01-16"], "metrics": [4],
             "comparison": {"dimensions": ["2026-01-15"], "metrics": [3], "change": [33]}}])
        # the previous period's first day has no data: the 15th still compares with the 13th
        eq(norm(h.run(dict(base, dimensions=["time:day"]))["results"]),
           [{"dimensions": ["2026-01-15"], "metrics": [3],
             "comparison": {"dimensions": ["2026-01-13"], "metrics": [0], "change": [100]}},
            {"dimensions": ["2026-01-16"], "metrics": [4],
             "comparison": {"dimensions": ["2026-01-14"], "metrics": [3], "change": [33]}}])
    hand_case(evs, check_all)


@test
def hand_comparisons_time_and_page():
    # previous_period of 2026-01-16 is 2026-01-15. Pageviews:
    #   15th: /a 2, /b 1;   16th: /a 2, /b 1, /c 1
    # a row (day, page) compares with (the same position's day of the previous period, page)
    evs = [ev("m1", "2026-01-15 10:00:00", "/a"), ev("m2", "2026-01-15 11:00:00", "/a"),
           ev("m3", "2026-01-15 12:00:00", "/b"),
           ev("m4", "2026-01-16 10:00:00", "/a"), ev("m5", "2026-01-16 11:00:00", "/a"),
           ev("m6", "2026-01-16 12:00:00", "/b"), ev("m7", "2026-01-16 13:00:00", "/c")]

    def row(page, cur, prev, change, time_first):
        d, pd = ["2026-01-16", page], ["2026-01-15", page]
        if not time_first:
            d, pd = d[::-1], pd[::-1]
        return {"dimensions": d, "metrics": [cur],
                "comparison": {"dimensions": pd, "metrics": [prev], "change": [change]}}

    def check_all(h):
        for time_first in (True, False):
            dims = ["time:day", "event:page"] if time_first else ["event:page", "time:day"]
            got = norm(h.run({"date_range": ["2026-01-16", "2026-01-16"], "dimensions": dims,
                              "metrics": ["pageviews"],
                              "include": {"comparisons": {"mode": "previous_period"}}})
                       ["results"])
            eq(sorted(got, key=str),
               sorted([row("/a", 2, 2, 0, time_first), row("/b", 1, 1, 0, time_first),
                       row("/c", 1, 0, 100, time_first)], key=str), "dimensions %s" % dims)
    hand_case(evs, check_all)


@test
def hand_cache_is_reused_and_never_stale():
    # Whole-day breakdowns are kept in the query cache (store/memo.h): a repeat is a hit
    # (/metrics), and events that land later on a day of the range (a late event, an extended
    # visit) are in the next answer. Days: Jan 14 and 15 (Berlin).
    evs = [ev("A", "2026-01-14 10:00:00", "/a"), ev("B", "2026-01-15 10:00:00", "/b")]
    rng = ["2026-01-14", "2026-01-15"]

    def lookups(h):
        s, _, body = h.t.request("GET", "/metrics")
        eq(s, 200)
        out = {}
        for line in body.decode().splitlines():
            if line.startswith("tally_query_cache_lookups_total{"):
                out[line.split('"')[1]] = int(line.rsplit(" ", 1)[1])
        return out

    def check_all(h):
        q = {"date_range": rng, "metrics": ["visitors", "pageviews"],
             "dimensions": ["event:page"]}
        x = {"date_range": rng, "metrics": ["visits"], "dimensions": ["visit:exit_page"]}
        eq(sorted(h.results(q, ["rollup"]), key=str), [R(["/a"], [1, 1]), R(["/b"], [1, 1])])
        eq(sorted(h.results(x, ["rollup"]), key=str), [R(["/a"], [1]), R(["/b"], [1])])
        before = lookups(h)
        eq(sorted(h.results(q, ["rollup"]), key=str), [R(["/a"], [1, 1]), R(["/b"], [1, 1])])
        eq(sorted(h.results(x, ["rollup"]), key=str), [R(["/a"], [1]), R(["/b"], [1])])
        after = lookups(h)
        eq(after["hit"], before["hit"] + 2, "repeats are cache hits: %s -> %s" % (before, after))
        # a late event on Jan 14 (new page) and one that extends B's visit of Jan 15 (its
        # exit page moves from /b to /c)
        send(h.t, h.key, [ev("C", "2026-01-14 18:00:00", "/new"),
                          ev("B", "2026-01-15 10:05:00", "/c")])
        h.t.wait_consumers(10)
        eq(sorted(h.results(q, ["rollup", "scan"]), key=str),
           [R(["/a"], [1, 1]), R(["/b"], [1, 1]), R(["/c"], [1, 1]), R(["/new"], [1, 1])])
        eq(sorted(h.results(x, ["rollup", "scan"]), key=str),
           [R(["/a"], [1]), R(["/c"], [1]), R(["/new"], [1])])
        check(lookups(h)["stale"] >= before.get("stale", 0) + 2, "changed days drop answers")
    hand_case(evs, check_all)


if __name__ == "__main__":
    run_all()
