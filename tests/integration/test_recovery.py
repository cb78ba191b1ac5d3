"""Recovery through the binary: a torn tail after a crash is truncated and the server starts;
corruption inside a closed segment makes --check exit 1 and the server refuse to start, and
--repair quarantines the segment, reports the offsets lost, and serves the rest."""
import base64
import os

from harness import Tally, check, eq, run_all, test


def fill(t, n_requests, tag):
    ids = []
    for i in range(n_requests):
        batch = [{"site": "example.com", "url": "https://example.com/", "id": "%s%d-%d" % (tag, i, k),
                  "props": {"pad": base64.b64encode(os.urandom(1200)).decode()}} for k in range(10)]
        s, _, body = t.post_json("/v1/events", batch)
        eq(s, 202, body)
        ids += [b["id"] for b in batch]
    return ids


def segments(t):
    d = os.path.join(t.data_dir, "log")
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".seg"))


@test
def torn_tail_is_truncated_and_mid_log_corruption_needs_repair():
    t = Tally("[storage]\nsegment_bytes = 1048576\n")
    try:
        t.start()
        ids = fill(t, 200, "a")
        eq(t.stop(), 0)
        segs = segments(t)
        check(len(segs) >= 3, "want several segments, got %d" % len(segs))
        # a torn tail: garbage appended to the active segment, as a crash mid-write leaves it
        with open(segs[-1], "ab") as f:
            f.write(os.urandom(777))
        t.start()
        eq(t.stop(), 0)
        check("777" in t.stderr_text(), "the warning names the bytes dropped")
        eq(len(t.dump_log()), len(ids))
        # corruption in the middle of a closed segment
        with open(segs[0], "r+b") as f:
            f.seek(os.path.getsize(segs[0]) // 2)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x40]))
        rc, out, err = t.tool("--check", timeout_s=60)
        eq(rc, 1, out + err)
        rc, _, err = t.tool(timeout_s=60)
        eq(rc, 1, "the server refuses to start on mid-log corruption")
        check("--repair" in err, err)
        t.args = ["--repair"]
        t.start()
        eq(t.stop(), 0)
        check("lost" in t.stderr_text(), t.stderr_text()[-2000:])
        check(os.listdir(os.path.join(t.data_dir, "log", "quarantine")), "segment quarantined")
        left = t.dump_log()
        check(0 < len(left) < len(ids), "the rest of the log is served: %d" % len(left))
        t.args = []
        t.start()  # a repaired log opens without --repair afterwards
        eq(t.stop(), 0)
    finally:
        t.cleanup()


if __name__ == "__main__":
    run_all()
