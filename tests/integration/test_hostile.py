"""Hundreds of malformed or hostile requests: each gets the right 4xx with a JSON error body,
nothing is appended to the log, and the server stays up and keeps serving."""
import gzip
import json
import time

from harness import Tally, check, eq, parse_response, run_all, test

GOOD = json.dumps({"site": "example.com", "url": "https://example.com/"}).encode()


def post(body, extra=b"", ctype=b"application/json"):
    return (b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: " + ctype + b"\r\n" + extra +
            b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


def framing_cases():
    c = []
    hdr = b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
    c.append(("cl+te", hdr + b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
              {400}))
    c.append(("te+cl", hdr + b"Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
              {400}))
    c.append(("dup-cl", hdr + b"Content-Length: 2\r\nContent-Length: 2\r\n\r\n{}", {400}))
    c.append(("dup-cl-diff", hdr + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", {400}))
    c.append(("cl-list", hdr + b"Content-Length: 2, 2\r\n\r\n{}", {400}))
    for v in [b"abc", b"-1", b"+2", b"0x10", b"1e3", b" ", b"", b"99999999999999999999999",
              b"2 2", b"\t2x"]:
        c.append(("cl-%r" % v, hdr + b"Content-Length: " + v + b"\r\n\r\n{}", {400, 413}))
    for te in [b"gzip", b"chunked, gzip", b"gzip, chunked", b"identity", b"chunkedx",
               b"chunked\x00", b"chunked;x=1", b"x-chunked"]:
        c.append(("te-%r" % te, hdr + b"Transfer-Encoding: " + te + b"\r\n\r\n0\r\n\r\n",
                  {400, 501}))
    te = hdr + b"Transfer-Encoding: chunked\r\n\r\n"
    for body in [b"zz\r\nabc\r\n0\r\n\r\n", b"fffffffffffffffffffff\r\n", b"-1\r\n\r\n",
                 b"3\r\nabcX0\r\n\r\n", b"3\nabc\n0\n\n", b"0x3\r\nabc\r\n0\r\n\r\n",
                 b" 3\r\nabc\r\n0\r\n\r\n", b"3 \r\nabc\r\n0\r\n\r\n"]:
        c.append(("chunk-%r" % body[:12], te + body, {400}))
    base = b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n"
    for h in [b"X-A: a\x00b\r\n", b"X-A: a\rb\r\n", b"X-A: a\nb\r\n", b"X-A: a\r\n b\r\n",
              b"X-A: a\r\n\tb\r\n", b"X A: b\r\n", b"X-A : b\r\n", b": novalue\r\n",
              b"X-\x01A: b\r\n", b"X-A\r\n", b"(X): b\r\n", b"X-\xffA: b\r\n"]:
        c.append(("hdr-%r" % h[:10], base + h + b"\r\n{}", {400}))
    for line in [b"POST /v1/events HTTP/1.1x\r\n", b"POST /v1/events HTTP/2.0\r\n",
                 b"POST /v1/events HTTP/1\r\n", b"POST  /v1/events HTTP/1.1\r\n",
                 b"POST /v1/events  HTTP/1.1\r\n", b"PO\x00ST /v1/events HTTP/1.1\r\n",
                 b"POST\t/v1/events HTTP/1.1\r\n", b"POST /v1/ev ents HTTP/1.1\r\n",
                 b"POST v1/events HTTP/1.1\r\n", b"/v1/events HTTP/1.1\r\n",
                 b"POST /v1/events\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n"]:
        c.append(("line-%r" % line[:16], line + b"Host: t\r\nContent-Length: 2\r\n\r\n{}",
                  {400, 501, 505}))
    c.append(("no-host", b"POST /v1/events HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", {400}))
    c.append(("two-hosts", b"POST /v1/events HTTP/1.1\r\nHost: a\r\nHost: b\r\n"
              b"Content-Length: 2\r\n\r\n{}", {400}))
    return c


def limit_cases():
    c = []
    c.append(("huge-head", b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70000 +
              b"\r\n\r\n", {431}))
    c.append(("many-headers", b"GET /healthz HTTP/1.1\r\nHost: t\r\n" +
              b"".join(b"X-%d: v\r\n" % i for i in range(300)) + b"\r\n", {431}))
    c.append(("long-url", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", {414, 431}))
    c.append(("big-body-cl", b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Length: "
              b"999999999\r\n\r\n", {413}))
    big = b"x" * (1 << 20 + 1)
    c.append(("big-body-chunked", b"POST /v1/events HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: "
              b"chunked\r\n\r\n" + b"%x\r\n" % len(big) + big + b"\r\n0\r\n\r\n", {413}))
    bomb = gzip.compress(b"[" + b" " * (64 << 20) + b"]")
    c.append(("gzip-bomb", post(bomb, b"Content-Encoding: gzip\r\n"), {413}))
    c.append(("bad-gzip", post(b"\x1f\x8b\x08\x00garbage", b"Content-Encoding: gzip\r\n"),
              {400}))
    c.append(("unknown-encoding", post(GOOD, b"Content-Encoding: br\r\n"), {415}))
    return c


def utf8_cases():
    bad = [b"\xff", b"\xc0\xaf", b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80",
           b"\xc3", b"\xe2\x82", b"\xf0\x9f\x98", b"\x80", b"\xfe\xfe"]
    c = []
    for i, b in enumerate(bad):
        for field in (b"site", b"url", b"name", b"referrer"):
            body = (b'{"site": "example.com", "url": "https://example.com/", "' + field +
                    b'": "a' + b + b'b"}') if field not in (b"site", b"url") else (
                b'{"site": "example.com", "url": "https://example.com/", "name": "pv"}'
                .replace(b'"' + field + b'": "', b'"' + field + b'": "x' + b))
            c.append(("utf8-%d-%s" % (i, field.decode()), post(body), {400}))
    return c


def json_cases():
    now = int(time.time() * 1000)
    c = []
    c.append(("deep-array", post(b"[" * 10000 + b"]" * 10000), {400}))
    c.append(("deep-object", post(b'{"a":' * 10000 + b"1" + b"}" * 10000), {400}))
    c.append(("deep-props", post(json.dumps({"site": "example.com", "url": "https://e.com/",
              "props": {"a": {"b": {"c": {"d": 1}}}}}).encode()), {400}))
    wrong = [1, 1.5, True, None, [], {}, [1], {"a": 1}, "", -1]
    fields = {"site": lambda v: not isinstance(v, str) or v == "",
              "name": lambda v: not isinstance(v, str) or v == "",
              "url": lambda v: not isinstance(v, str) or v == "",
              "referrer": lambda v: not isinstance(v, str),
              "ts": lambda v: True,
              "visitor_id": lambda v: not isinstance(v, str),
              "id": lambda v: not isinstance(v, str),
              "props": lambda v: not isinstance(v, dict) or v,
              "revenue": lambda v: True,
              "interactive": lambda v: not isinstance(v, bool)}
    for f, is_bad in fields.items():
        for v in wrong:
            if not is_bad(v) or (v is None and f != "site"):
                continue  # null means "absent" for optional fields (native.h)
            ev = {"site": "example.com", "url": "https://example.com/"}
            ev[f] = v
            if f == "props" and v == {"a": 1}:
                continue
            c.append(("type-%s-%r" % (f, v), post(json.dumps(ev).encode()), {400}))
    for ts in [now - 73 * 3600 * 1000, now + 10 * 60 * 1000, 0, -5, 10 ** 30, "2026-13-01T00:00:00Z",
               "2026-02-30T00:00:00Z", "2026-01-01 00:00:00", "2026-01-01T25:00:00Z", "now",
               1.5, "1700000000000"]:
        ev = {"site": "example.com", "url": "https://example.com/", "ts": ts}
        c.append(("ts-%r" % (ts,), post(json.dumps(ev).encode()), {400}))
    for num in [b"1e999", b"-1e999", b"123456789012345678901234567890", b"NaN", b"Infinity",
                b"0x10", b"01"]:
        body = (b'{"site": "example.com", "url": "https://example.com/", "ts": ' + num + b"}")
        c.append(("num-%r" % num, post(body), {400}))
    for rev in [{"amount": "1e999", "currency": "EUR"}, {"amount": -5, "currency": "EUR"},
                {"amount": "12.3.4", "currency": "EUR"}, {"currency": "EUR"}, {"amount": 1},
                {"amount": 1, "currency": "EURO"}, {"amount": 1, "currency": "eur"},
                {"amount": 1, "currency": "EUR", "x": 1}, {"amount": [1], "currency": "EUR"}]:
        ev = {"site": "example.com", "url": "https://example.com/", "revenue": rev}
        c.append(("revenue-%r" % (rev,), post(json.dumps(ev).encode()), {400}))
    for bodytext in [b"", b" ", b"null", b"1", b'"str"', b"[1]", b"[null]", b"{", b"[{}",
                     b'{"site":"example.com","url":"https://example.com/"} x',
                     b'{"site":"example.com","site":"example.com","url":"https://example.com/"}',
                     b"\xef\xbb\xbf{}", b"[" + b"{}," * 2000 + b"{}]"]:
        c.append(("body-%r" % bodytext[:20], post(bodytext), {400, 413}))
    for url in ["", "example.com/a", "javascript:alert(1)", "https://", "https:///path",
                "http://exa mple.com/", "https://example.com:99999/", "//example.com/"]:
        ev = {"site": "example.com", "url": url}
        c.append(("url-%r" % url, post(json.dumps(ev).encode()), {400}))
    for site in ["", " ", "a" * 300, "UPPER.com", "bad site", "ex/ample"]:
        ev = {"site": site, "url": "https://example.com/"}
        c.append(("site-%r" % site[:10], post(json.dumps(ev).encode()), {400, 404}))
    return c


@test
def hostile_requests_get_precise_4xx_and_append_nothing():
    t = Tally("[server]\nbody_bytes_max = 1048576\nthreads = 2\n")
    t.start()
    try:
        cases = framing_cases() + limit_cases() + utf8_cases() + json_cases()
        check(len(cases) >= 200, "only %d cases" % len(cases))
        bad = []
        for name, raw, want in cases:
            out = t.raw(raw, timeout=5)
            status, headers, body = parse_response(out)
            ok = status in want
            if ok:
                try:
                    obj = json.loads(body)
                    ok = isinstance(obj.get("error"), str) and obj["error"] != ""
                except ValueError:
                    ok = False
            if not ok:
                bad.append("%s: got %s %r want %s" % (name, status, body[:120], sorted(want)))
        eq(t.request("GET", "/healthz")[0], 200, "server still up")
        eq(t.post_json("/v1/events", {"site": "example.com", "url": "https://example.com/x",
                                      "id": "after"})[0], 202)
        check(not bad, "%d of %d cases wrong:\n  %s" % (len(bad), len(cases),
                                                      "\n  ".join(bad[:40])))
        t.stop()
        eq([r["id"] for r in t.dump_log()], ["after"], "only the valid event was appended")
        print("hostile cases: %d" % len(cases))
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
