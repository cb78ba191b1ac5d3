"""Zero-downtime restarts (issue 9), under continuous load from several client threads (single
events and small batches to POST /v1/events, each event with a unique id):

- SIGUSR2 upgrade: the running tally starts a new process on its listening socket, then drains
  and exits; repeated --cycles times, once with the binary file replaced by a new copy first.
- a new process that cannot start (invalid configuration) leaves the old one serving.
- systemd-style restart: the test holds the listening socket (as a socket unit does) and
  restarts tally on it via LISTEN_FDS (SIGTERM, wait, start) --cycles times.

Each asserts 0 failed requests (any exception, connection reset or non-2xx answer) and 0 lost
acknowledged events (--dump-log holds every acknowledged id exactly once), and prints the
longest request latency and the longest time without any answer around each restart.
`make upgrade` runs 100 cycles.

usage: test_upgrade.py [--cycles N]
"""
import argparse
import ctypes
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter

from harness import BIN, Tally, check, eq, run_all, test

ARGS = argparse.Namespace(cycles=10)
CLIENTS = 6
CONFIG = "[server]\nthreads = 2\n[storage]\nfsync = always\n"
UA = "Mozilla/5.0 (X11; Linux x86_64) Firefox/%d.0"


def become_subreaper():
    """Orphaned tally processes (a new process whose old parent exited) are re-parented to us,
    so the test can wait for them and see their exit status."""
    libc = ctypes.CDLL(None, use_errno=True)
    check(libc.prctl(36, 1, 0, 0, 0) == 0, "prctl(PR_SET_CHILD_SUBREAPER)")  # 36: SUBREAPER


class Load:
    """Client threads, one new connection per request (see the report: keep-alive clients can
    see an idle connection closed by the stopping process, which HTTP lets them retry)."""

    def __init__(self, port, tag):
        self.port = port
        self.tag = tag
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.acked = []
        self.failures = []
        self.samples = []  # (start, end) of every answered request
        self.threads = [threading.Thread(target=self.client, args=(i,)) for i in range(CLIENTS)]

    def start(self):
        for th in self.threads:
            th.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for th in self.threads:
            th.join()

    def client(self, tid):
        rnd = random.Random(tid)
        seq = 0
        while not self.stop_ev.is_set():
            n = 1 if rnd.random() < 0.5 else rnd.randint(2, 5)
            ids = ["%s-t%d-%d" % (self.tag, tid, seq + i) for i in range(n)]
            seq += n
            evs = [{"site": "example.com", "url": "https://example.com/p%d" % (seq % 7),
                    "id": i} for i in ids]
            body = json.dumps(evs[0] if n == 1 else evs)
            t0 = time.monotonic()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
                try:
                    conn.request("POST", "/v1/events", body, {
                        "Content-Type": "application/json", "Connection": "close",
                        "User-Agent": UA % (100 + tid)})
                    r = conn.getresponse()
                    data = r.read()
                finally:
                    conn.close()
                t1 = time.monotonic()
                with self.lock:
                    self.samples.append((t0, t1))
                    if 200 <= r.status < 300:
                        self.acked.extend(ids)
                    else:
                        self.failures.append("HTTP %d: %r" % (r.status, data[:200]))
            except (OSError, http.client.HTTPException) as e:
                with self.lock:
                    self.failures.append("%s: %s" % (type(e).__name__, e))
                time.sleep(0.01)

    def answered_count(self):
        with self.lock:
            return len(self.samples)

    def longest_latency(self):
        with self.lock:
            return max((b - a for a, b in self.samples), default=0.0)

    def longest_gap(self, t_from, t_to):
        """Longest time without any answer between t_from and t_to (monotonic)."""
        with self.lock:
            ends = sorted(b for _, b in self.samples if t_from <= b <= t_to)
        return max((b - a for a, b in zip(ends, ends[1:])), default=0.0)


def wait_answers(load, more, timeout_s=10):
    n = load.answered_count() + more
    deadline = time.time() + timeout_s
    while load.answered_count() < n:
        check(time.time() < deadline, "load made no progress")
        time.sleep(0.01)


def healthz_pid(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        body = r.read()
        return json.loads(body).get("pid") if r.status == 200 else None
    finally:
        conn.close()


def wait_exit(pid, proc=None, timeout_s=30):
    """Exit status of an old tally: our Popen child, or an orphan re-parented to us."""
    if proc is not None:
        return proc.wait(timeout_s)
    deadline = time.time() + timeout_s
    while True:
        got, status = os.waitpid(pid, os.WNOHANG)
        if got == pid:
            return os.waitstatus_to_exitcode(status)
        check(time.time() < deadline, "process %d did not exit" % pid)
        time.sleep(0.01)


def check_log(t, load):
    recs = t.dump_log()
    counts = Counter(r["id"] for r in recs)
    dup = [i for i, n in counts.items() if n > 1]
    missing = [i for i in load.acked if counts[i] != 1]
    check(not dup, "ids logged twice: %s" % dup[:10])
    check(not missing, "%d acknowledged events missing, e.g. %s" % (len(missing), missing[:10]))
    return len(recs)


def report(name, load, gaps, n_logged):
    print("%s: cycles=%d requests=%d failed=%d acked_events=%d logged=%d "
          "longest_latency_ms=%.0f longest_pause_ms=%.0f (per restart: %s)" % (
              name, len(gaps), len(load.samples), len(load.failures), len(load.acked),
              n_logged, load.longest_latency() * 1000, max(gaps, default=0) * 1000,
              " ".join("%.0f" % (g * 1000) for g in gaps)), flush=True)


def replace_binary(path):
    """What an operator does: a new file moved over the old path (cp onto a running binary
    would fail with ETXTBSY)."""
    tmp = path + ".new"
    shutil.copy2(BIN, tmp)
    os.rename(tmp, path)


@test
def sigusr2_upgrade_under_load():
    become_subreaper()
    t = Tally(CONFIG)
    bindir = os.path.join(t.tmp, "bin")
    os.mkdir(bindir)
    exe = os.path.join(bindir, "tally")
    shutil.copy2(BIN, exe)
    t.stderr = open(t.stderr_path, "ab")
    t.proc = subprocess.Popen([exe, "--config", t.config_path, "--data-dir", t.data_dir],
                              stdout=t.stderr, stderr=t.stderr)
    t.wait_ready(30)
    pid, proc = t.proc.pid, t.proc
    load = Load(t.port, "u").start()
    gaps = []
    swap_at = ARGS.cycles // 2
    try:
        wait_answers(load, 50)
        for cycle in range(ARGS.cycles):
            if cycle == swap_at:
                replace_binary(exe)
                check(os.readlink("/proc/%d/exe" % pid).endswith("(deleted)"),
                      "the binary file was not replaced")
            t0 = time.monotonic()
            os.kill(pid, signal.SIGUSR2)
            eq(wait_exit(pid, proc), 0, "old process %d exit status" % pid)
            deadline = time.time() + 30
            new_pid = pid
            while new_pid == pid:  # the new process writes its pid once it has the lock
                check(time.time() < deadline, "no new process took the data directory")
                with open(os.path.join(t.data_dir, "LOCK")) as f:
                    new_pid = int(f.read().strip() or pid)
                time.sleep(0.005)
            while healthz_pid(t.port) != new_pid:
                check(time.time() < deadline, "new process %d does not answer" % new_pid)
                time.sleep(0.01)
            if cycle == swap_at:
                eq(os.readlink("/proc/%d/exe" % new_pid), exe, "the new binary runs")
            wait_answers(load, 30)
            gaps.append(load.longest_gap(t0, time.monotonic()))
            pid, proc = new_pid, None
        load.stop()
        check(not load.failures, "%d failed requests, e.g. %s" % (len(load.failures),
                                                                 load.failures[:5]))
        check(len(load.acked) > ARGS.cycles * 20, "load too low: %d" % len(load.acked))
        os.kill(pid, signal.SIGTERM)
        eq(wait_exit(pid, proc), 0)
        report("sigusr2", load, gaps, check_log(t, load))
    finally:
        load.stop()
        if proc is None and pid:
            try:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
            except OSError:
                pass
        t.cleanup()


@test
def failed_upgrade_keeps_serving():
    become_subreaper()
    t = Tally(CONFIG).start(timeout_s=30)
    load = Load(t.port, "f").start()
    try:
        wait_answers(load, 20)
        good = open(t.config_path).read()
        with open(t.config_path, "a") as f:
            f.write("no_such_key = 1\n")
        t.proc.send_signal(signal.SIGUSR2)
        deadline = time.time() + 30
        while "upgrade failed" not in t.stderr_text():
            check(time.time() < deadline, "no failure logged: %s" % t.stderr_text()[-1000:])
            time.sleep(0.02)
        check("configuration error" in t.stderr_text().split("upgrade failed")[1],
              t.stderr_text()[-1000:])
        eq(healthz_pid(t.port), t.proc.pid, "the old process still serves")
        wait_answers(load, 20)
        with open(t.config_path, "w") as f:
            f.write(good)
        load.stop()
        check(not load.failures, "%d failed requests, e.g. %s" % (len(load.failures),
                                                                 load.failures[:5]))
        eq(t.stop(), 0)
        check_log(t, load)
    finally:
        load.stop()
        t.cleanup()


def start_activated(t, sock):
    fd = sock.fileno()

    def child():  # what systemd does between fork and exec
        if fd != 3:
            os.dup2(fd, 3)
        os.set_inheritable(3, True)
        os.environ["LISTEN_PID"] = str(os.getpid())
        os.environ["LISTEN_FDS"] = "1"

    return subprocess.Popen([BIN, "--config", t.config_path, "--data-dir", t.data_dir],
                            stdout=t.stderr, stderr=t.stderr, close_fds=False,
                            preexec_fn=child)


@test
def systemd_restart_under_load():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    t = Tally(CONFIG)
    t.port = sock.getsockname()[1]
    t.stderr = open(t.stderr_path, "ab")
    t.proc = start_activated(t, sock)
    t.wait_ready(30)
    load = Load(t.port, "s").start()
    gaps = []
    try:
        wait_answers(load, 50)
        for _ in range(ARGS.cycles):
            t0 = time.monotonic()
            eq(t.stop(timeout_s=30), 0)
            t.proc = start_activated(t, sock)
            deadline = time.time() + 30
            while healthz_pid(t.port) != t.proc.pid:
                check(time.time() < deadline, "restarted tally does not answer")
                time.sleep(0.01)
            wait_answers(load, 30)
            gaps.append(load.longest_gap(t0, time.monotonic()))
        load.stop()
        check(not load.failures, "%d failed requests, e.g. %s" % (len(load.failures),
                                                                 load.failures[:5]))
        eq(t.stop(), 0)
        report("systemd", load, gaps, check_log(t, load))
    finally:
        load.stop()
        sock.close()
        t.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--cycles", type=int, default=10)
    ARGS, rest = p.parse_known_args()
    import sys
    sys.argv = sys.argv[:1] + rest
    run_all()
