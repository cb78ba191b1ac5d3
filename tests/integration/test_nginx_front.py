"""Behind a reverse proxy (issue 9): Debian's nginx runs as a child process on a free loopback
port with its own configuration in a temporary directory and proxies to Tally with
X-Forwarded-For. With trusted_proxies = 127.0.0.1/32, two clients whose (forwarded) addresses
differ are two visitors; without it, Tally sees only nginx's address: one visitor."""
import http.client
import json
import os
import re
import shutil
import subprocess
import time

from harness import BIN, Tally, check, eq, free_port, run_all, test

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0"

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path %(dir)s/body;
    proxy_temp_path %(dir)s/proxy;
    fastcgi_temp_path %(dir)s/fastcgi;
    uwsgi_temp_path %(dir)s/uwsgi;
    scgi_temp_path %(dir)s/scgi;
    upstream tally { server 127.0.0.1:%(tally)d; keepalive 8; }
    server {
        listen 127.0.0.1:%(port)d;
        # The test's clients pretend to be behind other proxies: nginx appends the address it
        # sees, as in production; Tally takes the rightmost address that is not trusted.
        location / {
            proxy_pass http://tally;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto $scheme;
        }
    }
}
"""


def new_key(scope):
    out = subprocess.run([BIN, "key", "new", "--scope", scope], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    return (re.search(r"^key = (\S+)$", out, re.M).group(1),
            re.search(r"^key_digests = (\S+)$", out, re.M).group(1))


class Nginx:
    def __init__(self, tmp, tally_port):
        self.dir = os.path.join(tmp, "nginx")
        os.makedirs(self.dir)
        self.port = free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF % {"dir": self.dir, "tally": tally_port, "port": self.port})
        self.proc = subprocess.Popen([NGINX, "-c", conf, "-p", self.dir, "-e",
                                      os.path.join(self.dir, "error.log")],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 10
        while True:
            check(self.proc.poll() is None, "nginx exited: %s" % self.proc.stderr.read())
            try:
                if self.get("/healthz")[0] == 200:
                    break
            except OSError:
                pass
            check(time.time() < deadline, "nginx not ready")
            time.sleep(0.05)

    def request(self, method, path, body=None, headers=None):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        finally:
            c.close()

    def get(self, path):
        return self.request("GET", path)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # our own child, by its PID
            self.proc.wait(10)


def visitors_through_nginx(trusted):
    read, read_line = new_key("read")
    cfg = "[auth]\nkey_digests = %s\n[site example.com]\ntimezone = UTC\n" % read_line
    if trusted:
        cfg = "[server]\ntrusted_proxies = 127.0.0.1/32\n" + cfg
    t = Tally(cfg)
    t.start()
    ng = Nginx(t.tmp, t.port)
    try:
        for client in ("203.0.113.7", "198.51.100.23"):
            for path in ("/", "/a"):
                body = json.dumps({"site": "example.com", "url": "https://example.com" + path})
                # Every test client connects from 127.0.0.1, so each one's address is set as
                # a first hop would: nginx appends 127.0.0.1 (its peer), and Tally, trusting
                # 127.0.0.1/32, takes the rightmost untrusted address: the client's.
                s, b = ng.request("POST", "/v1/events", body, {
                    "Content-Type": "application/json", "User-Agent": UA,
                    "X-Forwarded-For": client})
                eq(s, 202, b)
        t.wait_consumers(20)
        s, b = ng.request("POST", "/api/v2/query", json.dumps(
            {"site_id": "example.com", "metrics": ["visitors", "pageviews"],
             "date_range": "day"}), {"Authorization": "Bearer " + read,
                                     "Content-Type": "application/json"})
        eq(s, 200, b)
        return json.loads(b)["results"][0]["metrics"]
    finally:
        ng.stop()
        t.stop()


@test
def forwarded_ips_tell_visitors_apart():
    eq(visitors_through_nginx(trusted=True), [2, 4])


@test
def untrusted_proxy_is_one_visitor():
    eq(visitors_through_nginx(trusted=False), [1, 4])


if __name__ == "__main__":
    run_all()
