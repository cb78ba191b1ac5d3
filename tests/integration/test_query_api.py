"""Stats API over HTTP (API.md §4): authentication (401/403), unknown sites (404), parse errors
(400), body limit (413), methods (405), the query queue (503), the key created on first start,
metrics, and a happy path from ingest to POST /api/v2/query and the v1 endpoints."""
import datetime
import hashlib
import json
import os
import re
import stat
import socket
import subprocess
import threading
import time

from harness import BIN, Tally, check, eq, parse_response, run_all, test

V2 = "/api/v2/query"
# Events without a browser User-Agent are taken for bots and not counted.
BROWSER = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                         "Chrome/120.0 Safari/537.36"}


def new_key(scope, site=None):
    """(key, 'SCOPE:DIGEST') from `tally key new`."""
    args = [BIN, "key", "new", "--scope", scope] + (["--site", site] if site else [])
    out = subprocess.run(args, capture_output=True, text=True, timeout=30, check=True).stdout
    key = re.search(r"^key = (\S+)$", out, re.M).group(1)
    line = re.search(r"^key_digests = (\S+)$", out, re.M).group(1)
    return key, line


def bearer(key):
    return {"Authorization": "Bearer " + key}


def query(t, body, key, headers=None):
    h = bearer(key)
    h.update(headers or {})
    return t.post_json(V2, body, h)


class Keys:
    """A global read key, a global admin key, and a read key of example.com only."""

    def __init__(self):
        self.read, self.read_line = new_key("read")
        self.admin, self.admin_line = new_key("admin")
        self.site_a, self.site_a_line = new_key("read", "example.com")
        self.write, self.write_line = new_key("write")

    def config(self, server=""):
        return ("[server]\n%s\n[auth]\nkey_digests = %s, %s, %s\n"
                "[site example.com]\nkey_digests = %s\n[site other.org]\ntimezone = UTC\n" %
                (server, self.read_line, self.admin_line, self.write_line, self.site_a_line))


def with_server(keys, server=""):
    t = Tally(keys.config(server))
    t.start()
    return t


@test
def missing_malformed_or_unknown_key_is_401():
    keys = Keys()
    t = with_server(keys)
    try:
        body = {"site_id": "example.com", "metrics": ["visitors"], "date_range": "7d"}
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"},
                        {"Authorization": "Bearer"}, bearer("tly_not-a-real-key")):
            s, h, b = t.post_json(V2, body, headers)
            eq(s, 401, (headers, b))
            eq(h.get("www-authenticate"), "Bearer")
            check(isinstance(b, dict) and b.get("error"), b)
            check("tly_not-a-real-key" not in json.dumps(b), "the key is never echoed")
        # before parsing: garbage with no key is still 401, not 400
        s, _, b = t.request("POST", V2, "{not json", {})
        eq(s, 401, b)
        s, h, b = t.request("GET", "/api/v1/stats/aggregate?site_id=example.com")
        eq(s, 401, b)
        eq(h.get("www-authenticate"), "Bearer")
        check("tly_not-a-real-key" not in t.stderr_text(), "keys are never logged")
    finally:
        t.cleanup()


@test
def site_key_is_403_on_another_site_and_write_key_is_403():
    keys = Keys()
    t = with_server(keys)
    try:
        s, _, b = query(t, {"site_id": "other.org", "metrics": ["visitors"],
                            "date_range": "7d"}, keys.site_a)
        eq(s, 403, b)
        check("other.org" in b["error"], b)
        s, _, b = query(t, {"site_id": "example.com", "metrics": ["visitors"],
                            "date_range": "7d"}, keys.site_a)
        eq(s, 200, b)
        s, _, b = query(t, {"site_id": "example.com", "metrics": ["visitors"],
                            "date_range": "7d"}, keys.write)
        eq(s, 403, b)
        check("scope" in b["error"], b)
        s, _, raw = t.request("GET", "/api/v1/stats/aggregate?site_id=other.org&metrics=visitors",
                              headers=bearer(keys.site_a))
        eq(s, 403, raw)
        # the plan override is for admin keys only
        s, _, b = query(t, {"site_id": "example.com", "metrics": ["visitors"],
                            "date_range": "7d"}, keys.read, {"X-Tally-Plan": "scan"})
        eq(s, 403, b)
        check("X-Tally-Plan" in b["error"], b)
        s, _, b = query(t, {"site_id": "example.com", "metrics": ["visitors"],
                            "date_range": "7d"}, keys.admin, {"X-Tally-Plan": "fast"})
        eq(s, 400, b)
    finally:
        t.cleanup()


@test
def unknown_site_is_404():
    keys = Keys()
    t = with_server(keys)  # auto_sites = true: a site is known once it has data
    try:
        for site in ("nowhere.example", "other.org.invalid"):
            s, _, b = query(t, {"site_id": site, "metrics": ["visitors"], "date_range": "7d"},
                            keys.admin)
            eq(s, 404, b)
            check(b.get("error"), b)
        s, _, raw = t.request("GET", "/api/v1/stats/aggregate?site_id=nowhere.example&"
                              "metrics=visitors", headers=bearer(keys.read))
        eq(s, 404, raw)
        # an auto-created site becomes known with its first event
        s, _, b = t.post_json("/v1/events", {"site": "auto.example", "url": "https://auto."
                                             "example/"}, bearer(keys.write))
        eq(s, 202, b)
        t.wait_consumers(20)
        s, _, b = query(t, {"site_id": "auto.example", "metrics": ["pageviews"],
                            "date_range": "7d"}, keys.read)
        eq(s, 200, b)
    finally:
        t.cleanup()


@test
def parse_errors_are_400_naming_the_field():
    keys = Keys()
    t = with_server(keys)
    try:
        s, _, raw = t.request("POST", V2, "{not json", bearer(keys.read))
        eq(s, 400, raw)
        check(json.loads(raw).get("error"), raw)
        s, _, b = query(t, {"site_id": "example.com", "metrics": ["visitorz"],
                            "date_range": "7d"}, keys.read)
        eq(s, 400, b)
        check("metrics" in b["error"], b)
        s, _, raw = t.request("GET", "/api/v1/stats/aggregate?site_id=example.com&metrics=%zz",
                              headers=bearer(keys.read))
        eq(s, 400, raw)
    finally:
        t.cleanup()


@test
def oversized_body_is_413_and_wrong_method_405():
    keys = Keys()
    t = with_server(keys)
    try:
        big = json.dumps({"site_id": "example.com", "metrics": ["visitors"], "date_range": "7d",
                          "pad": "x" * (70 << 10)})
        s, _, raw = t.request("POST", V2, big, bearer(keys.read))
        eq(s, 413, raw)
        check(json.loads(raw).get("error"), raw)
        s, h, _ = t.request("GET", V2, headers=bearer(keys.read))
        eq(s, 405)
        check("POST" in h.get("allow", ""), h)
        s, _, _ = t.request("POST", "/api/v1/stats/aggregate", "{}", bearer(keys.read))
        eq(s, 405)
    finally:
        t.cleanup()


@test
def first_start_key_is_printed_once_and_stored_as_digest():
    t = Tally("")  # no key configured at all
    t.start()
    try:
        err = t.stderr_text()
        found = re.findall(r"key = (tly_[A-Za-z0-9_-]+)", err)
        eq(len(found), 1, err)
        key = found[0]
        check("http://127.0.0.1:%d/" % t.port in err, err)
        path = os.path.join(t.data_dir, "keys")
        with open(path) as f:
            text = f.read()
        check(key not in text and key[4:] not in text, "only the digest is stored")
        eq(text, "read:%s\n" % hashlib.blake2b(key.encode(), digest_size=32).hexdigest())
        eq(stat.S_IMODE(os.stat(path).st_mode) & 0o077, 0, "keys file is private")
        body = {"site_id": "example.com", "metrics": ["visitors"], "date_range": "7d"}
        s, _, b = query(t, body, key)
        eq(s, 404, b)  # authenticated; the site has no data yet
        eq(t.post_json("/v1/events", {"site": "example.com", "url": "https://example.com/"})[0],
           202)
        t.wait_consumers(20)
        s, _, b = query(t, body, key)
        eq(s, 200, b)
        eq(t.stop(), 0)
        before = len(t.stderr_text())
        t.start()
        again = t.stderr_text()[before:]
        check("key = " not in again, again)
        with open(path) as f:
            eq(f.read(), text)
        s, _, b = query(t, body, key)
        eq(s, 200, b)
        s, _, b = query(t, body, key + "x")
        eq(s, 401, b)
    finally:
        t.cleanup()


@test
def configured_read_key_means_no_generated_key():
    keys = Keys()
    t = with_server(keys)
    try:
        check("key = " not in t.stderr_text(), t.stderr_text())
        check(not os.path.exists(os.path.join(t.data_dir, "keys")), "no keys file")
    finally:
        t.cleanup()


def gauge(t, name):
    """The value of a metrics gauge (a line "name VALUE")."""
    text = t.request("GET", "/metrics")[2].decode()
    m = re.search(r"^%s (\S+)$" % re.escape(name), text, re.M)
    return float(m.group(1)) if m else None


def wait_gauge(t, name, value, timeout_s=20):
    deadline = time.time() + timeout_s
    while gauge(t, name) != value:
        check(time.time() < deadline, "%s never reached %s (is %s)" % (name, value,
                                                                     gauge(t, name)))
        time.sleep(0.02)


@test
def full_queue_answers_503_with_retry_after():
    # Deterministic: one worker, one queue slot. The worker is held by an export whose client
    # does not read (the export waits for the connection to drain: back-pressure), one query
    # waits in the queue, and the next one must be refused at once with 503.
    keys = Keys()
    t = with_server(keys, "query_threads = 1\nquery_queue_max = 1\n")
    try:
        now = int(time.time() * 1000)
        pad = "x" * 900
        for r in range(40):  # 8,000 events of about 1 KiB: an export of several MiB
            evs = [{"site": "example.com", "url": "https://example.com/p%d" % (i % 50),
                    "visitor_id": "v%d" % i, "ts": now - 3600000 + r * 1000 + i,
                    "props": {"pad": pad}} for i in range(200)]
            eq(t.post_json("/v1/events", evs, dict(bearer(keys.write), **BROWSER))[0], 202)
        t.wait_consumers(60)
        stall = socket.socket()
        stall.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stall.connect(("127.0.0.1", t.port))
        stall.sendall(("GET /api/v1/export?site_id=example.com&date_range=all HTTP/1.1\r\n"
                       "Host: x\r\nAuthorization: Bearer %s\r\n\r\n" % keys.read).encode())
        wait_gauge(t, "tally_query_running", 1)
        queued = {}

        def send_queued():
            queued["res"] = query(t, {"site_id": "example.com", "metrics": ["visitors"],
                                      "date_range": "day"}, keys.read)

        th = threading.Thread(target=send_queued)
        th.start()
        wait_gauge(t, "tally_query_queue_length", 1)
        s, h, b = query(t, {"site_id": "example.com", "metrics": ["visitors"],
                            "date_range": "day"}, keys.read)
        eq(s, 503, b)
        eq(h.get("retry-after"), "1")
        check("queue full" in b["error"], b)
        stall.close()  # the export aborts; the worker takes the queued query
        th.join(30)
        eq(queued["res"][0], 200, queued["res"])
        text = t.request("GET", "/metrics")[2].decode()
        check('tally_query_responses_total{status="503"}' in text, "503s are counted")
    finally:
        t.cleanup()


def day(ms):
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.timezone.utc).strftime("%Y-%m-%d")


@test
def ingested_events_are_counted():
    keys = Keys()
    t = with_server(keys)
    try:
        now = int(time.time() * 1000)
        base = (now // 86400000 - 2) * 86400000 + 12 * 3600000  # noon UTC two days ago
        evs = [{"site": "example.com", "url": "https://example.com/", "visitor_id": "v1",
                "ts": base},
               {"site": "example.com", "url": "https://example.com/pricing",
                "visitor_id": "v1", "ts": base + 60000},
               {"site": "example.com", "url": "https://example.com/", "visitor_id": "v2",
                "ts": base + 120000},
               {"site": "example.com", "name": "Signup", "url": "https://example.com/",
                "visitor_id": "v2", "ts": base + 180000}]
        s, _, b = t.post_json("/v1/events", evs, dict(bearer(keys.write), **BROWSER))
        eq((s, b), (202, {"accepted": 4}))
        t.wait_consumers(20)
        d = day(base)
        body = {"site_id": "example.com", "metrics": ["visitors", "pageviews", "events"],
                "date_range": [d, d]}
        s, h, b = query(t, body, keys.read)
        eq(s, 200, b)
        eq(b["results"][0]["metrics"], [2, 3, 4], b)
        for plan in ("rollup", "scan", "stream"):
            s, h, b2 = query(t, dict(body, metrics=["visitors", "pageviews"]), keys.admin,
                             {"X-Tally-Plan": plan})
            eq(s, 200, b2)
            eq(h.get("x-tally-plan"), plan)
            eq(b2["meta"]["plan"], plan, b2)
            eq(b2["results"][0]["metrics"], [2, 3], (plan, b2))
        # a filter on another dimension than the breakdown: not the rollups; the planner
        # streams it, and the holding scan agrees
        q2 = dict(body, metrics=["visitors", "pageviews"],
                  dimensions=["event:page"], filters=[["is", "visit:entry_page", ["/"]]])
        s, h, auto = query(t, q2, keys.read)
        eq(s, 200, auto)
        eq(auto["meta"]["plan"], "stream", auto)
        s, h, held = query(t, q2, keys.admin, {"X-Tally-Plan": "scan"})
        eq(s, 200, held)
        eq(held["results"], auto["results"])
        eq(sorted((r["dimensions"][0], r["metrics"][1]) for r in auto["results"]),
           [("/", 2), ("/pricing", 1)], auto)
        s, _, b = query(t, dict(body, dimensions=["event:page"], metrics=["pageviews"]),
                        keys.site_a)
        eq(s, 200, b)
        eq(sorted((r["dimensions"][0], r["metrics"][0]) for r in b["results"]),
           [("/", 2), ("/pricing", 1)], b)
        s, _, raw = t.request("GET", "/api/v1/stats/aggregate?site_id=example.com&period=day&"
                              "date=%s&metrics=visitors,pageviews" % d, headers=bearer(keys.read))
        eq(s, 200, raw)
        res = json.loads(raw)["results"]
        eq((res["visitors"]["value"], res["pageviews"]["value"]), (2, 3), res)
        s, _, raw = t.request("GET", "/metrics")
        text = raw.decode()
        check('tally_query_responses_total{status="200"}' in text, text[-3000:])
        check("tally_query_duration_seconds_count" in text, "latency histogram")
    finally:
        t.cleanup()


@test
def revenue_in_other_currencies_is_reported_in_meta():
    keys = Keys()
    t = with_server(keys)
    try:
        now = int(time.time() * 1000)
        base = (now // 86400000 - 2) * 86400000 + 12 * 3600000
        evs = [{"site": "example.com", "name": "Purchase", "url": "https://example.com/buy",
                "visitor_id": "v%d" % i, "ts": base + i * 1000,
                "revenue": {"amount": amount, "currency": cur}}
               for i, (amount, cur) in enumerate([("10.50", "EUR"), ("4.50", "EUR"),
                                                   ("7.25", "USD"), ("100", "JPY"),
                                                   ("0.75", "USD")])]
        eq(t.post_json("/v1/events", evs, dict(bearer(keys.write), **BROWSER))[0], 202)
        t.wait_consumers(20)
        d = day(base)
        body = {"site_id": "example.com", "metrics": ["total_revenue", "events"],
                "date_range": [d, d]}
        # the stream form carries no revenue: asked for it, it says so
        s, h, b = query(t, body, keys.admin, {"X-Tally-Plan": "stream"})
        eq(s, 400, b)
        check("stream scan cannot answer" in b["error"], b)
        for plan in ("rollup", "scan"):
            s, h, b = query(t, body, keys.admin, {"X-Tally-Plan": plan})
            eq(s, 200, b)
            eq(b["results"][0]["metrics"][0]["currency"], "EUR", b)
            eq(b["results"][0]["metrics"][0]["value"], 15.0, b)
            eq(b["results"][0]["metrics"][1], 5, b)
            eq(b["meta"]["revenue_other_currencies"],
               [{"currency": "JPY", "value": 100}, {"currency": "USD", "value": 8}], (plan, b))
    finally:
        t.cleanup()


@test
def stop_with_queries_exits_cleanly():
    keys = Keys()
    t = with_server(keys)
    try:
        s, _, _ = query(t, {"site_id": "example.com", "metrics": ["visitors"],
                            "date_range": "7d"}, keys.read)
        eq(s, 200)
        eq(t.stop(), 0)
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
