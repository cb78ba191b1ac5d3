"""Raw export (GET /api/v1/export, src/app/export.h) and import: a varied event set (pageviews
with UTM tags and ref parameters, referrers, custom events with props, revenue in two currencies,
non-interactive events, a bot, anonymous and identified visitors) goes into server A; its NDJSON
export is posted back through POST /v1/events with a write key into server B; a set of v2 queries
must give identical answers on both. Also: the export is streamed (chunked), filtered, CSV, holds
no IP address, and a client that disconnects midway does not hurt the server."""
import json
import random
import re
import socket
import subprocess
import time

from harness import BIN, Tally, check, eq, run_all, test

SITE = "example.com"
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0 Safari/537.36")
BOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def new_key(scope):
    out = subprocess.run([BIN, "key", "new", "--scope", scope], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


def bearer(key, **extra):
    h = {"Authorization": "Bearer " + key, "User-Agent": UA}
    h.update(extra)
    return h


def generate(rnd, now):
    evs = []
    urls = ["/", "/pricing", "/blog/a", "/blog/b", "/docs?utm_source=newsletter&utm_medium=email",
            "/?utm_campaign=spring&utm_source=twitter", "/landing?ref=producthunt",
            "/x?utm_term=a%20b&utm_content=c%2Cd"]
    refs = [None, "https://www.google.com/search?q=x", "https://news.ycombinator.com/item?id=1",
            "https://example.com/self", "https://blog.other.org/post/1"]
    for v in range(80):
        t = now - rnd.randrange(50 * 3600 * 1000) - 600000
        ref = rnd.choice(refs)
        vid = "user-%d" % v if v % 3 else None
        ip = "10.0.%d.%d" % (v // 200, v % 200 + 1)
        for i in range(rnd.randrange(1, 10)):
            t += rnd.choice([2000, 60000, 20 * 60000, 40 * 60000])
            if t >= now:
                break
            r = rnd.random()
            e = {"site": SITE, "ts": t, "url": "https://%s%s" % (SITE, rnd.choice(urls)),
                 "ip": ip}
            if vid:
                e["visitor_id"] = vid
            if r < 0.65:
                e["name"] = "pageview"
            elif r < 0.8:
                e["name"] = "Signup"
                e["props"] = {"plan": rnd.choice(["free", "pro", "team, \"big\""]), "n": 3}
            elif r < 0.9:
                e["name"] = "Purchase"
                e["revenue"] = {"amount": rnd.choice(["19.99", "5", "0.25"]),
                                "currency": rnd.choice(["EUR", "EUR", "USD"])}
            else:
                e["name"] = "scroll"
                e["interactive"] = False
            if ref and i == 0:
                e["referrer"] = ref
            evs.append(e)
    evs.append({"site": SITE, "ts": now - 60000, "url": "https://%s/" % SITE,
                "user_agent": BOT, "ip": "10.9.9.9"})
    return evs


QUERIES = [
    {"metrics": ["visitors", "visits", "pageviews", "events", "bounce_rate", "visit_duration",
                 "views_per_visit"]},
    {"metrics": ["visitors", "pageviews", "events"], "dimensions": ["event:page"]},
    {"metrics": ["visitors", "visits"], "dimensions": ["visit:source"]},
    {"metrics": ["visitors", "visits", "bounce_rate"], "dimensions": ["visit:channel"]},
    {"metrics": ["visitors"], "dimensions": ["visit:utm_source", "visit:utm_campaign"]},
    {"metrics": ["visitors", "events"], "dimensions": ["event:name"]},
    {"metrics": ["events"], "dimensions": ["event:props:plan"]},
    {"metrics": ["visitors", "visits"], "dimensions": ["visit:entry_page", "visit:exit_page"]},
    {"metrics": ["visitors", "pageviews", "visits"], "dimensions": ["time:hour"]},
    {"metrics": ["total_revenue", "average_revenue", "events"],
     "filters": [["is", "event:name", ["Purchase"]]]},
    {"metrics": ["visitors", "pageviews"], "dimensions": ["event:hostname"],
     "filters": [["is", "visit:source", ["Google"]]]},
]


def answers(t, key):
    out = []
    for q in QUERIES:
        today = time.strftime("%Y-%m-%d", time.gmtime())
        first = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 4 * 86400))
        body = dict(q, site_id=SITE, date_range=[first, today])
        s, _, b = t.post_json("/api/v2/query", body, bearer(key))
        eq(s, 200, (body, b))
        out.append(b["results"])
    return out


def export(t, key, params="date_range=all"):
    s, h, data = t.request("GET", "/api/v1/export?site_id=%s&%s" % (SITE, params),
                           headers=bearer(key), timeout=30)
    eq(s, 200, data[:300])
    return h, data


@test
def export_import_round_trip_gives_same_answers():
    read, read_line = new_key("read")
    write, write_line = new_key("write")
    cfg = "[auth]\nkey_digests = %s, %s\n[site example.com]\ngoals = event:Signup\n" % (
        read_line, write_line)
    a, b = Tally(cfg), Tally(cfg)
    a.start()
    b.start()
    try:
        rnd = random.Random(3)
        now = int(time.time() * 1000)
        evs = generate(rnd, now)
        s, _, body = a.post_json("/v1/events", evs, bearer(write))
        eq(s, 202, body)
        a.wait_consumers(30)
        h, data = export(a, read)
        eq(h.get("transfer-encoding"), "chunked")
        check(h.get("content-type", "").startswith("application/x-ndjson"), h)
        lines = [json.loads(x) for x in data.decode().splitlines()]
        counted = len(evs) - 1  # the bot is not exported
        eq(len(lines), counted)
        text = data.decode()
        check("10.0." not in text and "10.9.9.9" not in text, "no IP address in the export")
        check("user-1\"" not in text, "client ids are exported hashed, not as sent")
        for ln in lines:
            check(re.fullmatch(r"v[0-9a-f]{16}", ln["visitor_id"]), ln)
        # import into B: one NDJSON request
        s, _, body = b.request("POST", "/v1/events", data,
                               bearer(write, **{"Content-Type": "application/x-ndjson"}))
        eq(s, 202, body)
        b.wait_consumers(30)
        qa, qb = answers(a, read), answers(b, read)
        for q, x, y in zip(QUERIES, qa, qb):
            eq(y, x, json.dumps(q))
        check(qa[0] and qa[0][0]["metrics"][0] > 20, qa[0])
        # importing the same file again counts nothing twice (ids are idempotency keys)
        s, _, body = b.request("POST", "/v1/events", data,
                               bearer(write, **{"Content-Type": "application/x-ndjson"}))
        eq(s, 202, body)
        b.wait_consumers(30)
        eq(answers(b, read), qa)
        # a second export of B equals A's export up to ids and order
        _, data_b = export(b, read)
        strip = lambda d: sorted(json.dumps({k: v for k, v in json.loads(x).items()
                                             if k not in ("id", "visitor_id")}, sort_keys=True)
                                 for x in d.decode().splitlines())
        eq(strip(data_b), strip(data))
    finally:
        a.stop()
        b.stop()


def metric(t, name):
    s, _, body = t.request("GET", "/metrics")
    eq(s, 200)
    m = re.search(r"^%s (\d+)$" % re.escape(name), body.decode(), re.M)
    check(m, "no %s in /metrics" % name)
    return int(m.group(1))


@test
def raw_compaction_keeps_answers():
    """Events of the last two days sent in slices a flush apart leave every hour as several
    small raw blocks; the compaction a restart runs (closed hours of the last 20 h) rewrites
    them, and queries, a funnel and the export answer exactly as before."""
    read, read_line = new_key("read")
    write, write_line = new_key("write")
    cfg = "[auth]\nkey_digests = %s, %s\n" % (read_line, write_line)
    t = Tally(cfg)
    t.start()
    try:
        now = int(time.time() * 1000)
        evs = generate(random.Random(11), now) + generate(random.Random(12), now)
        for k in range(5):  # five raw flushes (1 s apart), each with events in most hours
            s, _, body = t.post_json("/v1/events", evs[k::5], bearer(write))
            eq(s, 202, body)
            t.wait_consumers(30)
            time.sleep(1.2)
        funnel = {"site_id": SITE, "date_range": "7d", "steps": [
            {"page": "/"}, {"page": "/blog/*"}, {"event": "Signup"}], "window": "visit"}
        before = (answers(t, read), export(t, read)[1].decode().splitlines(),
                  t.post_json("/api/v1/funnel", funnel, bearer(read)))
        eq(before[2][0], 200, before[2])
        eq(metric(t, "tally_raw_compacted_hours_total"), 0)
        t.stop()
        t.start()
        deadline = time.time() + 30
        while metric(t, "tally_raw_compacted_hours_total") == 0:
            check(time.time() < deadline, "no hour was compacted after the restart")
            time.sleep(0.2)
        hours = metric(t, "tally_raw_compacted_hours_total")
        check(metric(t, "tally_raw_compacted_blocks_total") >= 2 * hours)
        after = (answers(t, read), export(t, read)[1].decode().splitlines(),
                 t.post_json("/api/v1/funnel", funnel, bearer(read)))
        for q, x, y in zip(QUERIES, before[0], after[0]):
            eq(y, x, json.dumps(q))
        eq(sorted(after[1]), sorted(before[1]))
        check(len(before[1]) > 500, len(before[1]))
        eq(after[2][2], before[2][2])
    finally:
        t.stop()


@test
def export_filters_csv_and_errors():
    read, read_line = new_key("read")
    write, write_line = new_key("write")
    t = Tally("[auth]\nkey_digests = %s, %s\n" % (read_line, write_line))
    t.start()
    try:
        rnd = random.Random(5)
        now = int(time.time() * 1000)
        evs = generate(rnd, now)
        s, _, body = t.post_json("/v1/events", evs, bearer(write))
        eq(s, 202, body)
        t.wait_consumers(30)
        _, data = export(t, read, "date_range=all&filters=" +
                         "%5B%5B%22is%22%2C%22event%3Aname%22%2C%5B%22Signup%22%5D%5D%5D")
        lines = [json.loads(x) for x in data.decode().splitlines()]
        eq(len(lines), sum(1 for e in evs if e.get("name") == "Signup"))
        check(all(x["name"] == "Signup" for x in lines))
        h, data = export(t, read, "date_range=all&format=csv")
        check(h.get("content-type", "").startswith("text/csv"), h)
        rows = data.decode().splitlines()
        check(rows[0].startswith("site,name,url,referrer,ts,visitor_id"), rows[0])
        check("browser" in rows[0] and "country" in rows[0], rows[0])
        # a day range with no events: an empty body
        _, data = export(t, read, "date_range=2001-01-01,2001-01-02")
        eq(data, b"")
        for params, field in (("date_range=forever", "date_range"), ("format=xml", "format"),
                              ("filters=%5B", "filters")):
            s, _, body = t.request("GET", "/api/v1/export?site_id=%s&%s" % (SITE, params),
                                   headers=bearer(read))
            eq(s, 400, body)
            check(field in json.loads(body)["error"], body)
        s, _, body = t.request("GET", "/api/v1/export?site_id=%s" % SITE)
        eq(s, 401, body)
        # a client that goes away midway: the server carries on
        sock = socket.create_connection(("127.0.0.1", t.port))
        sock.sendall(("GET /api/v1/export?site_id=%s&date_range=all HTTP/1.1\r\nHost: x\r\n"
                      "Authorization: Bearer %s\r\n\r\n" % (SITE, read)).encode())
        sock.recv(100)
        sock.close()
        _, data = export(t, read)
        eq(len(data.decode().splitlines()), len(evs) - 1)
    finally:
        t.stop()


if __name__ == "__main__":
    run_all()
