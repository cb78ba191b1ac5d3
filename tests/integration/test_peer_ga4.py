"""GA4 Measurement Protocol (API.md §3.2): POST /mp/collect and /debug/mp/collect driven by the
documented HTTP requests. Valid page_view and custom events are durable (--dump-log) and
counted by the query API; the debug endpoint answers GA4's validation messages and codes and
appends nothing; production answers 204 to everything, appending nothing for invalid payloads,
unknown measurement ids and wrong secrets; timestamp_micros may be at most 72 h back; requests
authenticated by the api_secret are not rate limited."""
import datetime
import json
import re
import subprocess
import time

from harness import BIN, Tally, check, eq, run_all, test

MID = "G-TEST12345"
SECRET = "mp-secret-Xy7"
COLLECT = "/mp/collect?measurement_id=%s&api_secret=%s" % (MID, SECRET)
DEBUG = "/debug/mp/collect?measurement_id=%s&api_secret=%s" % (MID, SECRET)
NOW_US = lambda: int(time.time() * 1e6)  # noqa: E731


def admin_key():
    out = subprocess.run([BIN, "key", "new", "--scope", "admin"], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


def server(extra_server="", with_key=False):
    key = line = None
    if with_key:
        key, line = admin_key()
    cfg = "[server]\n%s\n" % extra_server
    if line:
        cfg += "[auth]\nkey_digests = %s\n" % line
    cfg += ("[site example.com]\nids = %s\nga4_api_secret = %s\n"
            "[site nosecret.org]\nids = G-NOSECRET\n" % (MID, SECRET))
    t = Tally(cfg)
    t.start()
    return t, key


def post(t, path, body, headers=None):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return t.request("POST", path, data, dict({"Content-Type": "application/json"},
                                              **(headers or {})))


def pv(**params):
    p = {"page_location": "https://example.com/docs?utm_source=news",
         "page_referrer": "https://www.google.com/", "page_title": "Docs",
         "engagement_time_msec": 1200, "session_id": "123"}
    p.update(params)
    return {"name": "page_view", "params": p}


@test
def page_view_and_custom_events_are_durable_and_counted():
    t, key = server(with_key=True)
    try:
        ts = NOW_US() - 3600 * 10**6
        body = {"client_id": "555.1700000000", "user_id": "u-1", "timestamp_micros": ts,
                "non_personalized_ads": False,
                "user_properties": {"plan": {"value": "pro"}},
                "device": {"language": "de-DE", "screen_resolution": "1280x800"},
                "events": [pv(),
                           {"name": "sign_up", "params": {"method": "Google", "beta": True,
                                                          "seats": 3}},
                           {"name": "purchase", "timestamp_micros": ts + 10**6,
                            "params": {"currency": "USD", "value": 30.5,
                                       "transaction_id": "T-1001", "coupon": "WELCOME",
                                       "items": [{"item_id": "sku1", "price": 30.5}]}}]}
        s, h, raw = post(t, COLLECT, body)
        eq((s, raw), (204, b""))
        # the same client again, no timestamp: now
        s, _, raw = post(t, COLLECT, {"client_id": "555.1700000000",
                                      "events": [pv(page_location="https://example.com/")]})
        eq(s, 204, raw)
        t.wait_consumers(20)
        day = datetime.datetime.utcfromtimestamp(ts / 1e6).strftime("%Y-%m-%d")
        today = datetime.datetime.utcnow().strftime("%Y-%m-%d")
        q = {"site_id": "example.com", "metrics": ["visitors", "pageviews", "events"],
             "date_range": [min(day, today), max(day, today)]}
        auth = {"Authorization": "Bearer " + key}
        s, _, b = t.post_json("/api/v2/query", q, auth)
        eq(s, 200, b)
        eq(b["results"][0]["metrics"], [1, 2, 4], b)
        s, _, b = t.post_json("/api/v2/query", dict(q, metrics=["events"],
                                                     dimensions=["event:name"]), auth)
        eq(sorted((r["dimensions"][0], r["metrics"][0]) for r in b["results"]),
           [("pageview", 2), ("purchase", 1), ("sign_up", 1)], b)
        s, _, b = t.post_json("/api/v2/query", dict(q, metrics=["pageviews"],
                                                     dimensions=["event:page"]), auth)
        eq(sorted((r["dimensions"][0], r["metrics"][0]) for r in b["results"]
                  if r["metrics"][0]), [("/", 1), ("/docs", 1)], b)
        s, _, b = t.post_json("/api/v2/query", dict(q, metrics=["events"],
                                                     dimensions=["event:props:method"]), auth)
        check(["Google"] in [r["dimensions"] for r in b["results"]], b)
        eq(t.stop(), 0)
        recs = t.dump_log()
        eq([r["source"] for r in recs], ["ga4"] * 4)
        eq([r["name"] for r in recs], ["pageview", "sign_up", "purchase", "pageview"])
        eq([r["site"] for r in recs], ["example.com"] * 4)
        eq(recs[0]["url"], "https://example.com/docs?utm_source=news")
        eq(recs[0]["referrer"], "https://www.google.com/")
        eq(recs[0]["props"], {}, "page_title, engagement_time_msec, session_id not stored")
        eq(recs[0]["ts_ms"], ts // 1000)
        eq(recs[2]["ts_ms"], ts // 1000 + 1000, "event timestamp_micros overrides")
        eq(recs[1]["props"], {"method": "Google", "beta": "true", "seats": "3"})
        eq(recs[2]["props"], {"coupon": "WELCOME"})
        eq(recs[2]["revenue"], {"amount": "30.500000", "currency": "USD"})
        eq(recs[2]["id"], "T-1001", "transaction_id of a purchase is its idempotency id")
        eq(len({r["visitor"] for r in recs}), 1, "client_id is the visitor")
        check("555.1700000000" not in json.dumps(recs), "client ids are stored hashed only")
        eq(recs[0]["flags"], [], "a server's request is not taken for a bot")
    finally:
        t.cleanup()


def messages(t, body, path=DEBUG):
    s, h, raw = post(t, path, body)
    eq(s, 200, raw)
    eq(h.get("content-type"), "application/json")
    return json.loads(raw)["validationMessages"]


def expect(t, body, code, field, needle=""):
    m = messages(t, body)
    check(m, "expected a validation message for %r" % body)
    check(any(x["validationCode"] == code and x["fieldPath"] == field and
              needle in x["description"] for x in m),
          "want %s at %s (%r) in %r" % (code, field, needle, m))
    for x in m:
        eq(sorted(x), ["description", "fieldPath", "validationCode"])


INVALID = [
    # body, code, fieldPath, text in the description
    ("{not json", "VALUE_INVALID", "", "Unable to parse"),
    ([1, 2], "VALUE_INVALID", "", "JSON object"),
    ({"events": [{"name": "x"}]}, "VALUE_REQUIRED", "client_id", "client_id"),
    ({"client_id": 5, "events": [{"name": "x"}]}, "VALUE_INVALID", "client_id", ""),
    ({"client_id": "c"}, "VALUE_REQUIRED", "events", "at least one event"),
    ({"client_id": "c", "events": []}, "VALUE_REQUIRED", "events", ""),
    ({"client_id": "c", "events": [{"name": "e%d" % i} for i in range(26)]},
     "EXCEEDED_MAX_ENTITIES", "events", "25"),
    ({"client_id": "c", "events": [{"params": {}}]}, "VALUE_REQUIRED", "events", "[0]"),
    ({"client_id": "c", "events": [{"name": "_badEventName"}]}, "NAME_INVALID", "events",
     "Event at index: [0] has invalid name [_badEventName]. Names must start with an "
     "alphabetic character."),
    ({"client_id": "c", "events": [{"name": "ok"}, {"name": "has space"}]}, "NAME_INVALID",
     "events", "[1]"),
    ({"client_id": "c", "events": [{"name": "a" * 41}]}, "VALUE_OUT_OF_BOUNDS", "events", "40"),
    ({"client_id": "c", "events": [{"name": "session_start"}]}, "NAME_RESERVED", "events",
     "reserved"),
    ({"client_id": "c", "events": [{"name": "firebase_thing"}]}, "NAME_RESERVED", "events",
     "firebase_"),
    ({"client_id": "c", "events": [{"name": "x", "params": {"p%d" % i: 1 for i in range(26)}}]},
     "EXCEEDED_MAX_ENTITIES", "events.params", "25"),
    ({"client_id": "c", "events": [{"name": "x", "params": {"9p": 1}}]}, "NAME_INVALID",
     "events.params", "9p"),
    ({"client_id": "c", "events": [{"name": "x", "params": {"ga_thing": 1}}]}, "NAME_RESERVED",
     "events.params", "ga_thing"),
    ({"client_id": "c", "events": [{"name": "x", "params": {"firebase_conversion": 1}}]},
     "NAME_RESERVED", "events.params", ""),
    ({"client_id": "c", "events": [{"name": "x", "params": {"p": "v" * 101}}]},
     "VALUE_OUT_OF_BOUNDS", "events.params", "100"),
    ({"client_id": "c", "events": [{"name": "x", "params": {"p": {"a": 1}}}]}, "VALUE_INVALID",
     "events.params", ""),
    ({"client_id": "c", "events": [{"name": "x", "params": {"currency": "usd", "value": 1}}]},
     "VALUE_INVALID", "events.params.currency", ""),
    ({"client_id": "c", "user_properties": {"u%d" % i: {"value": 1} for i in range(26)},
      "events": [{"name": "x"}]}, "EXCEEDED_MAX_ENTITIES", "user_properties", "25"),
    ({"client_id": "c", "user_properties": {"first_open_time": {"value": 1}},
      "events": [{"name": "x"}]}, "NAME_RESERVED", "user_properties", ""),
    ({"client_id": "c", "user_properties": {"plan": {"value": "p" * 37}},
      "events": [{"name": "x"}]}, "VALUE_OUT_OF_BOUNDS", "user_properties", "36"),
    ({"client_id": "c", "user_properties": {"a" * 25: {"value": 1}},
      "events": [{"name": "x"}]}, "NAME_INVALID", "user_properties", ""),
    ({"client_id": "c", "timestamp_micros": "soon", "events": [{"name": "x"}]}, "VALUE_INVALID",
     "timestamp_micros", ""),
    ({"client_id": "c", "ip_override": "not-an-ip", "events": [{"name": "x"}]},
     "VALUE_INVALID", "ip_override", ""),
    ({"client_id": "c", "non_personalized_ads": "yes", "events": [{"name": "x"}]},
     "VALUE_INVALID", "non_personalized_ads", ""),
]


@test
def debug_endpoint_reports_each_problem_and_appends_nothing():
    t, _ = server()
    try:
        eq(messages(t, {"client_id": "c", "events": [pv()]}), [])
        for body, code, field, needle in INVALID:
            expect(t, body, code, field, needle)
        big = {"client_id": "c", "events": [{"name": "x", "params": {"p": "v" * 90}}] * 25,
               "pad": "x" * (131 * 1024)}
        expect(t, big, "VALUE_OUT_OF_BOUNDS", "", "130 kB")
        # several problems in one request are all reported
        m = messages(t, {"events": [{"name": "_a"}, {"name": "error"}]})
        eq(sorted(x["validationCode"] for x in m), ["NAME_INVALID", "NAME_RESERVED",
                                                    "VALUE_REQUIRED"], m)
        # missing measurement_id is reported; api_secret is not checked (as GA4's server)
        m = messages(t, {"client_id": "c", "events": [pv()]}, "/debug/mp/collect")
        eq([(x["fieldPath"], x["validationCode"]) for x in m],
           [("measurement_id", "VALUE_REQUIRED")])
        eq(messages(t, {"client_id": "c", "events": [pv()]},
                    "/debug/mp/collect?measurement_id=%s&api_secret=wrong" % MID), [])
        eq(t.stop(), 0)
        eq(t.dump_log(), [], "the debug endpoint never appends")
    finally:
        t.cleanup()


@test
def production_answers_204_and_appends_nothing_for_invalid_payloads():
    t, _ = server()
    try:
        for body, _code, _field, _needle in INVALID:
            s, h, raw = post(t, COLLECT, body)
            eq((s, raw), (204, b""), body)
        ok = {"client_id": "c", "events": [pv()]}
        for path in ("/mp/collect?measurement_id=%s&api_secret=wrong" % MID,
                     "/mp/collect?measurement_id=%s&api_secret=" % MID,
                     "/mp/collect?measurement_id=%s" % MID,
                     "/mp/collect?api_secret=%s" % SECRET,
                     "/mp/collect?measurement_id=G-UNKNOWN&api_secret=%s" % SECRET,
                     "/mp/collect?measurement_id=G-NOSECRET&api_secret=%s" % SECRET,
                     "/mp/collect?measurement_id=G-NOSECRET&api_secret=",
                     "/mp/collect?measurement_id=%s&api_secret=%s" % (MID, SECRET[:-1]),
                     "/mp/collect?measurement_id=%s&api_secret=%sX" % (MID, SECRET)):
            s, _, raw = post(t, path, ok)
            eq((s, raw), (204, b""), path)
        s, _, raw = t.request("GET", COLLECT)
        eq(s, 405, raw)
        s, _, raw = t.request("GET", "/metrics")
        check(re.search(rb'tally_events_dropped_total\{reason="invalid"\} [1-9]', raw),
              "refusals are counted")
        eq(t.stop(), 0)
        eq(t.dump_log(), [], "nothing appended")
    finally:
        t.cleanup()


@test
def timestamp_may_be_at_most_72_hours_back():
    t, _ = server()
    try:
        old = NOW_US() - 73 * 3600 * 10**6
        ok = NOW_US() - 71 * 3600 * 10**6
        for where in ("request", "event"):
            def body(ts):
                if where == "request":
                    return {"client_id": "c", "timestamp_micros": ts, "events": [pv()]}
                return {"client_id": "c", "events": [dict(pv(), timestamp_micros=ts)]}
            path = "timestamp_micros" if where == "request" else "events.timestamp_micros"
            expect(t, body(old), "VALUE_INVALID", path, "72 hours")
            expect(t, body(NOW_US() + 3600 * 10**6), "VALUE_INVALID", path, "future")
            eq(messages(t, body(ok)), [])
            eq(post(t, COLLECT, body(old))[0], 204)
            eq(post(t, COLLECT, body(ok))[0], 204)
        eq(t.stop(), 0)
        recs = t.dump_log()
        eq(len(recs), 2, recs)
        eq(recs[0]["ts_ms"], ok // 1000)
    finally:
        t.cleanup()


@test
def authenticated_requests_are_not_rate_limited_and_browsers_keep_their_agent():
    t, _ = server("rate_limit_per_ip = 1\nrate_limit_burst = 1")
    try:
        for i in range(6):
            s, _, raw = post(t, COLLECT, {"client_id": "c%d" % i, "events": [pv()]})
            eq((s, raw), (204, b""), i)
        ua = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/120.0 Safari/537.36")
        s, h, _ = post(t, COLLECT, {"client_id": "b", "ip_override": "203.0.113.9",
                                    "events": [pv()]}, {"User-Agent": ua, "Origin": "https://x"})
        eq(s, 204)
        eq(h.get("access-control-allow-origin"), "*")
        s, h, _ = t.request("OPTIONS", COLLECT, headers={
            "Origin": "https://example.com", "Access-Control-Request-Method": "POST"})
        check(s in (200, 204), s)
        eq(t.stop(), 0)
        recs = t.dump_log()
        eq(len(recs), 7)
        eq(recs[-1]["user_agent"], ua)
        check("203.0.113.9" not in json.dumps(recs), "ip_override is never stored")
        eq({r["user_agent"] for r in recs[:-1]}, {"GA4-Measurement-Protocol"})
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
