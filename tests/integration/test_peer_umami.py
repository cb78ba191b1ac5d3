"""Umami collection API (API.md §3.2): POST /api/send and /api/batch, driven by the official
@umami/node client unchanged (tests/compat/umami_client.mjs) and by raw requests as Umami's
tracker sends them; Umami's answers and error bodies; every error appends nothing."""
import datetime
import json
import os
import re
import shutil
import subprocess
import time

from harness import BIN, Tally, check, eq, run_all, test

WEBSITE = "4e4a8c0a-4b1e-4f6b-9a57-1d8a2c3b4d5e"
UNKNOWN = "11111111-2222-4333-8444-555555555555"
UA = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
      "Chrome/120.0 Safari/537.36")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
COMPAT = os.path.join(ROOT, "tests", "compat")


def admin_key():
    out = subprocess.run([BIN, "key", "new", "--scope", "admin"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


def server(extra=""):
    key, line = admin_key()
    t = Tally("[server]\n%s\n[auth]\nkey_digests = %s\n[site example.com]\nids = %s\n" %
              (extra, line, WEBSITE))
    t.start()
    return t, key


def send(t, obj, path="/api/send", headers=None):
    data = obj if isinstance(obj, (str, bytes)) else json.dumps(obj)
    s, h, raw = t.request("POST", path, data, dict({"Content-Type": "application/json",
                                                     "User-Agent": UA}, **(headers or {})))
    try:
        return s, h, json.loads(raw)
    except ValueError:
        return s, h, raw


def event(**payload):
    p = {"website": WEBSITE, "hostname": "example.com", "language": "en-GB",
         "screen": "1920x1080", "title": "Docs", "url": "https://example.com/docs",
         "referrer": "https://www.google.com/"}
    p.update(payload)
    return {"type": "event", "payload": p}


def check_success(body):
    eq(sorted(body), ["cache", "sessionId", "visitId"], body)
    check(re.match(r"^[0-9a-f-]{36}$", body["sessionId"]), body)


def zod(body, *path):
    """The message list at path in Umami's error tree."""
    e = body["error"]
    eq((e["message"], e["code"], e["status"]), ("Bad request", "bad-request", 400), body)
    node = e
    for k in path:
        node = node["properties"][k]
    return node["errors"]


@test
def official_node_client_events_are_durable_and_counted():
    if not os.path.isdir(os.path.join(COMPAT, "node_modules", "@umami", "node")):
        raise AssertionError("tests/compat/node_modules missing: run `make compat`")
    t, key = server()
    try:
        out = subprocess.run(["node", os.path.join(COMPAT, "umami_client.mjs"),
                              "http://127.0.0.1:%d" % t.port, WEBSITE], capture_output=True,
                             text=True, timeout=60, cwd=COMPAT)
        eq(out.returncode, 0, out.stderr)
        answers = [json.loads(l) for l in out.stdout.splitlines()]
        eq([a["status"] for a in answers], [200, 200, 200, 200], answers)
        for a in answers:
            check_success(a["body"])
        t.wait_consumers(20)
        d = datetime.datetime.utcnow().strftime("%Y-%m-%d")
        q = {"site_id": "example.com", "date_range": [d, d]}
        auth = {"Authorization": "Bearer " + key}
        s, _, b = t.post_json("/api/v2/query", dict(q, metrics=["visitors", "pageviews",
                                                                  "events"]), auth)
        eq(s, 200, b)
        eq(b["results"][0]["metrics"], [2, 2, 3], b)
        s, _, b = t.post_json("/api/v2/query", dict(q, metrics=["pageviews"],
                                                     dimensions=["event:page"]), auth)
        eq(sorted((r["dimensions"][0], r["metrics"][0]) for r in b["results"]
                  if r["metrics"][0]), [("/home", 1), ("/pricing", 1)], b)
        s, _, b = t.post_json("/api/v2/query", dict(q, metrics=["events"],
                                                     dimensions=["event:props:plan"]), auth)
        check(["pro"] in [r["dimensions"] for r in b["results"]], b)
        eq(t.stop(), 0)
        recs = t.dump_log()
        eq(len(recs), 3, "identify is acknowledged, not stored")
        eq({r["source"] for r in recs}, {"umami"})
        eq({r["site"] for r in recs}, {"example.com"})
        eq([r["name"] for r in recs], ["pageview", "signup", "pageview"])
        eq(recs[0]["url"], "https://example.com/home")
        eq(recs[0]["referrer"], "https://news.ycombinator.com/")
        eq(recs[1]["props"], {"plan": "pro", "seats": "3", "trial": "false",
                              "meta.source": "ad", "meta.ids": "[1,2]"})
        eq(recs[2]["url"], "https://example.com/pricing?utm_source=mail")
        check(recs[0]["user_agent"].startswith("Mozilla/5.0 Umami/"), recs[0])
        eq([r["flags"] for r in recs], [[], [], []], "the node client is not a bot")
        check("user-77" not in json.dumps(recs), "the distinct id is stored hashed")
    finally:
        t.cleanup()


@test
def tracker_requests_and_batch():
    t, _ = server()
    try:
        ts = int(time.time()) - 7200
        s, h, b = send(t, event(tag="spring", timestamp=ts, id="abc"),
                       headers={"x-umami-cache": "whatever", "Origin": "https://example.com"})
        eq(s, 200, b)
        check_success(b)
        eq(h.get("access-control-allow-origin"), "*")
        s, h, _ = t.request("OPTIONS", "/api/send", headers={
            "Origin": "https://example.com", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, x-umami-cache"})
        check(s in (200, 204), s)
        check("x-umami-cache" in h.get("access-control-allow-headers", "").lower(), h)
        s, _, b = send(t, event(url="/rel/path", hostname="www.example.com"))
        eq(s, 200, b)
        s, _, b = send(t, {"type": "performance", "payload": {"website": WEBSITE, "lcp": 1200,
                                                               "url": "/"}})
        eq(s, 200, b)
        batch = [event(url="https://example.com/b1"), {"type": "nope", "payload": {}},
                 event(url="https://example.com/b2", name="cta_click",
                       data={"position": "top"}),
                 {"type": "event", "payload": {"website": UNKNOWN}}]
        s, _, b = send(t, batch, "/api/batch")
        eq(s, 200, b)
        eq((b["size"], b["processed"], b["errors"]), (4, 2, 2), b)
        eq([d["index"] for d in b["details"]], [1, 3])
        eq(zod(b["details"][0]["response"], "type"),
           ['Invalid option: expected one of "event"|"identify"|"performance"'])
        eq(b["details"][1]["response"], {"error": {"message": "Website not found.",
                                                   "code": "bad-request", "status": 400}})
        check(isinstance(b["cache"], str), b)
        eq(t.stop(), 0)
        recs = t.dump_log()
        eq([r["url"] for r in recs], ["https://example.com/docs", "https://www.example.com/rel/path",
                                      "https://example.com/b1", "https://example.com/b2"])
        eq(recs[0]["ts_ms"], ts * 1000)
        eq(recs[0]["props"], {"tag": "spring"})
        eq(recs[3]["name"], "cta_click")
        eq(recs[3]["props"], {"position": "top"})
    finally:
        t.cleanup()


@test
def every_error_is_answered_like_umami_and_appends_nothing():
    t, _ = server("rate_limit_per_ip = 1\nrate_limit_burst = 1")
    try:
        cases = [
            ("{not json", (), "Invalid input: expected object, received undefined"),
            ([1], (), "Invalid input: expected object, received array"),
            ({"payload": {"website": WEBSITE}}, ("type",), "Invalid option"),
            ({"type": "event"}, ("payload",), "Invalid input: expected object"),
            ({"type": "event", "payload": {}}, ("payload", "website"), "Exactly one of"),
            ({"type": "event", "payload": {"website": WEBSITE, "pixel": WEBSITE}},
             ("payload", "website"), "Exactly one of"),
            (event(website="not-a-uuid"), ("payload", "website"), "Invalid UUID"),
            (event(name="n" * 51), ("payload", "name"), "<=50 characters"),
            (event(hostname="h" * 101), ("payload", "hostname"), "<=100 characters"),
            (event(screen="123456x123456"), ("payload", "screen"), "<=11 characters"),
            (event(language=5), ("payload", "language"), "expected string, received number"),
            (event(data=[1]), ("payload", "data"), "expected record"),
            (event(data={"k%d" % i: i for i in range(31)}), ("payload", "data"), "at most 30"),
            (event(timestamp="x"), ("payload", "timestamp"), "expected int"),
            (event(timestamp=int(time.time()) - 4 * 86400), ("payload", "timestamp"), "72 hours"),
            ({"type": "performance", "payload": {"website": WEBSITE, "lcp": -1}},
             ("payload", "lcp"), ">=0"),
        ]
        for body, path, needle in cases:
            s, h, b = send(t, body)
            eq(s, 400, (body, b))
            msgs = zod(b, *path)
            check(any(needle in m for m in msgs), (needle, b))
        s, _, b = send(t, event(website=UNKNOWN))
        eq((s, b), (400, {"error": {"message": "Website not found.", "code": "bad-request",
                                    "status": 400}}))
        s, _, b = send(t, {"type": "event"}, "/api/batch")
        eq(s, 400)
        eq(zod(b), ["Invalid input: expected array, received object"])
        s, _, b = send(t, [event()] * 1001, "/api/batch")
        eq(s, 413, b)
        eq(b["error"]["status"], 413)
        s, _, b = send(t, [event(website=UNKNOWN)], "/api/batch")
        eq((s, b["processed"], b["errors"], b["cache"]), (200, 0, 1, None))
        # rate limit (browsers, per IP): the first passes, the next is refused with 429
        eq(send(t, event())[0], 200)
        s, h, b = send(t, event())
        eq(s, 429, b)
        check("retry-after" in h, h)
        eq(b["error"]["status"], 429)
        eq(t.stop(), 0)
        eq(len(t.dump_log()), 1, "only the one valid event")
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
