"""Integration-test harness: starts the real ./tally binary on a free loopback port in a
temporary data directory, talks HTTP to it, and reports PASS/FAIL lines that tests/run.sh counts.

Every test is a function decorated with @test; run_all() runs them in order, each isolated (a
failure or exception in one does not stop the others). Servers are stopped by their own PID only.
"""
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

BIN = os.path.abspath(os.environ.get("TALLY_BIN", "./tally"))
_TESTS = []
_INSTANCES = []  # every Tally made by the running test, for its stderr on failure


def test(fn):
    _TESTS.append(fn)
    return fn


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Tally:
    """One tally process. `config` is extra INI text appended to a base config."""

    def __init__(self, config="", data_dir=None, args=(), env=None):
        self.port = free_port()
        self.tmp = tempfile.mkdtemp(prefix="tally-it-")
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.config_path = os.path.join(self.tmp, "tally.ini")
        self.stderr_path = os.path.join(self.tmp, "stderr.log")
        self.args = list(args)
        self.env = env
        self.write_config(config)
        self.proc = None
        self.saved_stderr = None
        self.shared = False  # True: lives across tests; its test file cleans it up
        _INSTANCES.append(self)

    def write_config(self, extra):
        base = ("[server]\nlisten = 127.0.0.1:%d\n" % self.port)
        # Merge: if extra has its own [server] section, append its keys to ours.
        if extra.lstrip().startswith("[server]"):
            extra = extra.lstrip()[len("[server]"):]
            text = base + extra
        else:
            text = base + extra
        with open(self.config_path, "w") as f:
            f.write(text)

    def start(self, wait=True, timeout_s=15):
        self.stderr = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(
            [BIN, "--config", self.config_path, "--data-dir", self.data_dir] + self.args,
            stdout=self.stderr, stderr=self.stderr, env=self.env)
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s=15):
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("tally exited with %s: %s" % (self.proc.returncode,
                                                                   self.stderr_text()[-2000:]))
            try:
                status, _, _ = self.request("GET", "/healthz", timeout=1)
                if status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError("tally not ready after %ss: %s" % (timeout_s,
                                                               self.stderr_text()[-2000:]))

    def stderr_text(self):
        if self.saved_stderr is not None:
            return self.saved_stderr
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def request(self, method, path, body=None, headers=None, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body)
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            conn.close()

    def post_json(self, path, obj, headers=None):
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        status, hdrs, data = self.request("POST", path, obj, h)
        try:
            parsed = json.loads(data) if data else None
        except ValueError:
            parsed = data
        return status, hdrs, parsed

    def raw(self, data, timeout=5, read_all=True):
        """Sends raw bytes on a new connection; returns everything read until close/timeout."""
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            s.sendall(data)
            out = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                out += chunk
                if not read_all and b"\r\n\r\n" in out:
                    break
            return out
        finally:
            s.close()

    def stop(self, sig=signal.SIGTERM, timeout_s=15):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError("tally did not stop within %ss" % timeout_s)
        return self.proc.returncode if self.proc else None

    def kill9(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def tool(self, *args, timeout_s=300):
        """Runs the binary on this instance's config and data directory (an offline mode such
        as --digest or --rebuild); returns (exit code, stdout, stderr)."""
        out = subprocess.run([BIN, "--config", self.config_path, "--data-dir", self.data_dir] +
                             list(args), capture_output=True, text=True, timeout=timeout_s)
        return out.returncode, out.stdout, out.stderr

    def dump_log(self):
        """Records in the log, as parsed JSON objects (offline tool; server must be stopped)."""
        return list(self.iter_log(timeout_s=120))

    def iter_log(self, timeout_s=600):
        """Yields the log's records one by one, as parsed JSON objects (offline tool; server
        must be stopped). Streams: a `make crash` log of millions of records parsed whole took
        more than 20 GB."""
        p = subprocess.Popen([BIN, "--config", self.config_path, "--data-dir", self.data_dir,
                              "--dump-log"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        deadline = time.time() + timeout_s
        try:
            for line in p.stdout:
                if time.time() > deadline:
                    raise AssertionError("--dump-log took more than %d s" % timeout_s)
                if line.strip():
                    yield json.loads(line)
            rc = p.wait(timeout=max(1, deadline - time.time()))
            if rc != 0:
                raise AssertionError("--dump-log failed: %s" % p.stderr.read()[-2000:])
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()

    def wait_consumers(self, timeout_s):
        """Waits until the raw and rollup consumers have processed the whole committed log
        (three times longer for a sanitizer build, which runs the consumers 3-5x slower)."""
        if "asan" in BIN:
            timeout_s *= 3
        deadline = time.time() + timeout_s
        while True:
            h = json.loads(self.request("GET", "/healthz")[2])
            if h["consumers"]["rollup"]["lag"] == 0 and h["consumers"]["raw"]["lag"] == 0:
                return
            check(time.time() < deadline, "consumers did not catch up: %s" % h)
            time.sleep(0.05)

    def cleanup(self):
        self.kill9()
        self.saved_stderr = self.stderr_text()
        shutil.rmtree(self.tmp, ignore_errors=True)


def parse_response(raw):
    """First HTTP response in raw bytes -> (status, headers dict, body bytes)."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines or not lines[0].startswith("HTTP/1."):
        return None, {}, raw
    status = int(lines[0].split()[1])
    headers = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0") or 0)
    return status, headers, rest[:n]


def digest_line(output):
    """The digest printed by --digest or --rebuild ("digest HEX")."""
    return [l for l in output.splitlines() if l.startswith("digest ")][0].split()[1]


def check(cond, msg="check failed"):
    if not cond:
        raise AssertionError(msg)


def eq(a, b, msg=""):
    if a != b:
        raise AssertionError("%r != %r %s" % (a, b, msg))


def run_all():
    name = os.path.basename(sys.argv[0]).replace(".py", "")
    only = sys.argv[1:]
    failed = 0
    for fn in _TESTS:
        if only and fn.__name__ not in only:
            continue
        t0 = time.time()
        del _INSTANCES[:]
        try:
            fn()
            print("PASS %s.%s (%.1fs)" % (name, fn.__name__, time.time() - t0), flush=True)
        except Exception as e:  # noqa: BLE001 - a test failure of any kind is reported
            failed += 1
            print("FAIL %s.%s: %s" % (name, fn.__name__, e), flush=True)
            traceback.print_exc(file=sys.stdout)
            for inst in _INSTANCES:
                rc = inst.proc.poll() if inst.proc else None
                print("    --- server on port %d (exit %s), last stderr:\n%s" %
                      (inst.port, rc, inst.stderr_text()[-int(os.environ.get("TALLY_STDERR_TAIL", "3000")):]), flush=True)
        finally:
            # every server the test made is stopped (by its PID) and its directory removed,
            # whether or not the test did so (a run of `make test` used to leave ~50 of them,
            # 3-4 GB, in /tmp); shared ones (test_cluster's cluster) stay for the next test
            for inst in _INSTANCES:
                if not inst.shared:
                    inst.cleanup()
    sys.exit(1 if failed else 0)


# --- JetStream cluster helpers (issue 10: test_cluster.py, bench/cluster.sh) ------------------

NATS_BIN = os.environ.get("NATS_SERVER_BIN", "/usr/sbin/nats-server")
_M64 = (1 << 64) - 1
_P1, _P2, _P3, _P4, _P5 = (11400714785074694791, 14029467366897019727, 1609587929392839161,
                           9650029242287828579, 2870177450012600261)


def _rotl64(x, r):
    return ((x << r) | (x >> (64 - r))) & _M64


def _xxh_round(acc, v):
    return (_rotl64((acc + v * _P2) & _M64, 31) * _P1) & _M64


def xxh64(data, seed=0):
    """XXH64 of bytes (pure Python; the value xxhash.h's XXH64 returns)."""
    n = len(data)
    i = 0
    if n >= 32:
        v = [(seed + _P1 + _P2) & _M64, (seed + _P2) & _M64, seed, (seed - _P1) & _M64]
        while i + 32 <= n:
            for k in range(4):
                v[k] = _xxh_round(v[k], int.from_bytes(data[i + 8 * k:i + 8 * k + 8], "little"))
            i += 32
        h = (_rotl64(v[0], 1) + _rotl64(v[1], 7) + _rotl64(v[2], 12) + _rotl64(v[3], 18)) & _M64
        for k in range(4):
            h = ((h ^ _xxh_round(0, v[k])) * _P1 + _P4) & _M64
    else:
        h = (seed + _P5) & _M64
    h = (h + n) & _M64
    while i + 8 <= n:
        h ^= _xxh_round(0, int.from_bytes(data[i:i + 8], "little"))
        h = (_rotl64(h, 27) * _P1 + _P4) & _M64
        i += 8
    if i + 4 <= n:
        h ^= (int.from_bytes(data[i:i + 4], "little") * _P1) & _M64
        h = (_rotl64(h, 23) * _P2 + _P3) & _M64
        i += 4
    while i < n:
        h ^= (data[i] * _P5) & _M64
        h = (_rotl64(h, 11) * _P1) & _M64
        i += 1
    h ^= h >> 33
    h = (h * _P2) & _M64
    h ^= h >> 29
    h = (h * _P3) & _M64
    return h ^ (h >> 32)


def partition_of(site, partitions):
    """The partition of a site as cluster.h computes it: xxh64(name, seed 0) % partitions."""
    return xxh64(site.encode()) % partitions


class NatsCluster:
    """n nats-server processes with JetStream as one cluster on loopback: each has its own
    client, route and monitoring ports and its own store directory (kept across restarts).
    Stopped by PID only (cleanup)."""

    def __init__(self, n=3, name="tally"):
        self.tmp = tempfile.mkdtemp(prefix="tally-nats-")
        self.name = name
        self.servers = []
        for i in range(n):
            d = os.path.join(self.tmp, "n%d" % i)
            os.makedirs(d)
            self.servers.append({"name": "n%d" % i, "port": free_port(), "route": free_port(),
                                 "mon": free_port(), "store": os.path.join(d, "js"),
                                 "log": os.path.join(d, "server.log"), "proc": None})

    def urls(self):
        return ["nats://127.0.0.1:%d" % s["port"] for s in self.servers]

    def start(self, i=None):
        for k in ([i] if i is not None else range(len(self.servers))):
            s = self.servers[k]
            if s["proc"] and s["proc"].poll() is None:
                continue
            routes = ",".join("nats://127.0.0.1:%d" % o["route"] for o in self.servers
                              if o is not s)
            log = open(s["log"], "ab")
            s["proc"] = subprocess.Popen(
                [NATS_BIN, "-js", "-sd", s["store"], "-a", "127.0.0.1", "-p", str(s["port"]),
                 "-n", s["name"], "-m", str(s["mon"]), "--cluster_name", self.name,
                 "--cluster", "nats://127.0.0.1:%d" % s["route"], "--routes", routes],
                stdout=log, stderr=log)
            log.close()
        return self

    def running(self):
        return [k for k, s in enumerate(self.servers) if s["proc"] and s["proc"].poll() is None]

    def monitor(self, i, path, timeout=2):
        conn = http.client.HTTPConnection("127.0.0.1", self.servers[i]["mon"], timeout=timeout)
        try:
            conn.request("GET", path)
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def wait_ready(self, timeout_s=30, health=True):
        """Until every running server agrees on a JetStream meta leader (one of them) and,
        with health, answers /healthz 200 (every stream and consumer it holds is current:
        after a restart under load that can take long; without health only the meta group
        and the routes are waited for)."""
        deadline = time.time() + timeout_s
        last = ""
        while time.time() < deadline:
            try:
                leaders = set()
                ok = True
                for k in self.running():
                    st, body = self.monitor(k, "/varz")
                    routes = json.loads(body).get("routes", 0) if st == 200 else 0
                    if routes < len(self.running()) - 1:
                        ok = False
                        last = "server %s has %d routes" % (self.servers[k]["name"], routes)
                        break
                    st = self.monitor(k, "/healthz")[0] if health else 200
                    if st != 200:
                        ok = False
                        last = "server %s healthz %d" % (self.servers[k]["name"], st)
                        break
                    st, body = self.monitor(k, "/jsz")
                    meta = json.loads(body).get("meta_cluster") or {}
                    leaders.add(meta.get("leader", ""))
                names = {self.servers[k]["name"] for k in self.running()}
                if ok and len(leaders) == 1 and leaders <= names:
                    return
                if ok:
                    last = "meta leaders %s" % leaders
            except (OSError, ValueError) as e:
                last = str(e)
            time.sleep(0.1)
        raise AssertionError("NATS cluster not ready after %ss: %s\n%s" %
                             (timeout_s, last, self.log_tail()))

    def kill9(self, i):
        p = self.servers[i]["proc"]
        if p and p.poll() is None:
            p.send_signal(signal.SIGKILL)
            p.wait()

    def log_tail(self, n=1500):
        out = []
        for s in self.servers:
            try:
                with open(s["log"], "rb") as f:
                    out.append("--- nats %s:\n%s" % (s["name"], f.read()[-n:].decode("utf-8",
                                                                                     "replace")))
            except OSError:
                pass
        return "\n".join(out)

    def cleanup(self):
        for k in range(len(self.servers)):
            self.kill9(k)
        shutil.rmtree(self.tmp, ignore_errors=True)


def nats_stream_leaders(nats, prefix="TALLY_P"):
    """{stream name: leader server name} of the streams whose name starts with prefix, as the
    first running server reports them (empty when it cannot say)."""
    try:
        st, body = nats.monitor(nats.running()[0], "/jsz?accounts=true&streams=true")
        out = {}
        for acc in json.loads(body).get("account_details") or []:
            for sd in acc.get("stream_detail") or []:
                if sd["name"].startswith(prefix):
                    out[sd["name"]] = (sd.get("cluster") or {}).get("leader", "")
        return out
    except (OSError, ValueError, IndexError, KeyError):
        return {}
