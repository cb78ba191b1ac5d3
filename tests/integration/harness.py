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
        rc, out, err = self.tool("--dump-log", timeout_s=120)
        if rc != 0:
            raise AssertionError("--dump-log failed: %s" % err[-2000:])
        return [json.loads(l) for l in out.splitlines() if l.strip()]

    def wait_consumers(self, timeout_s):
        """Waits until the raw and rollup consumers have processed the whole committed log."""
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
    sys.exit(1 if failed else 0)
