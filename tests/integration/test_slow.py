"""Slow clients: 1,000 idle and trickling connections do not stop normal requests, and the
trickling ones are closed by the head/body deadlines, idle ones by the idle timeout."""
import selectors
import socket
import time

from harness import Tally, check, eq, run_all, test


@test
def slowloris_and_idle_connections():
    t = Tally("[server]\nthreads = 2\nhead_timeout_ms = 2000\nbody_timeout_ms = 2000\n"
              "idle_timeout_ms = 3000\nconnections_max = 5000\n")
    t.start()
    socks = []
    try:
        kinds = {}
        for i in range(1000):
            s = socket.create_connection(("127.0.0.1", t.port), timeout=5)
            s.setblocking(False)
            kind = ("idle", "head", "body")[i % 3]
            kinds[s] = kind
            socks.append(s)
        head = b"POST /v1/events HTTP/1.1\r\nHost: t\r\n"
        body_head = (b"POST /v1/events HTTP/1.1\r\nHost: t\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n")
        sent = {s: 0 for s in socks}
        for s in socks:
            if kinds[s] == "body":
                s.send(body_head)
        closed_at = {}
        t0 = time.time()
        lat = []
        sel = selectors.DefaultSelector()
        for s in socks:
            sel.register(s, selectors.EVENT_READ)
        while time.time() - t0 < 6 and len(closed_at) < len(socks):
            # trickle one byte per connection every ~0.3 s
            for s in socks:
                if s in closed_at or kinds[s] == "idle":
                    continue
                try:
                    if kinds[s] == "head":
                        s.send(head[sent[s] % len(head):][:1] if sent[s] < len(head) else b"X")
                    else:
                        s.send(b" ")
                    sent[s] += 1
                except OSError:
                    closed_at.setdefault(s, time.time() - t0)
            r0 = time.time()
            status, _, _ = t.request("GET", "/healthz", timeout=5)
            lat.append(time.time() - r0)
            eq(status, 200, "normal request served while 1,000 slow connections are open")
            for key, _ in sel.select(timeout=0.3):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data or b"408" in data[:20] or data.startswith(b"HTTP/1.1 4"):
                    if s not in closed_at:
                        closed_at[s] = time.time() - t0
                        sel.unregister(s)
        by_kind = {k: [closed_at.get(s) for s in socks if kinds[s] == k] for k in
                   ("idle", "head", "body")}
        for k in ("head", "body"):
            still = sum(1 for v in by_kind[k] if v is None)
            check(still == 0, "%d trickling %s connections not closed after 6 s" % (still, k))
            check(max(by_kind[k]) < 4.5, "%s deadline too late: %.1fs" % (k, max(by_kind[k])))
        still_idle = sum(1 for v in by_kind["idle"] if v is None)
        check(still_idle == 0, "%d idle connections not closed" % still_idle)
        lat.sort()
        check(lat[len(lat) // 2] < 0.5, "median latency %.3fs under slow load" % lat[len(lat) // 2])
        print("slow: median healthz latency %.1f ms" % (lat[len(lat) // 2] * 1000))
    finally:
        for s in socks:
            s.close()
        t.cleanup()


if __name__ == "__main__":
    run_all()
