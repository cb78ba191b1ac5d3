"""Inherited listening sockets (issue 9): systemd socket activation (LISTEN_PID/LISTEN_FDS,
descriptor 3) and --listen-fd N. The test creates the listening socket itself, as systemd does,
and checks that tally serves on it without binding, and that connections made before tally is
ready wait in the kernel backlog instead of being refused."""
import json
import os
import socket
import subprocess
import time

from harness import BIN, Tally, check, eq, run_all, test


def listening_socket():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


def start_inherited(t, sock, systemd):
    fd = sock.fileno()
    args = [BIN, "--config", t.config_path, "--data-dir", t.data_dir]
    if not systemd:
        args += ["--listen-fd", str(fd)]

    def child():
        if systemd:  # what systemd does between fork and exec
            if fd == 3:
                os.set_inheritable(3, True)
            else:
                os.dup2(fd, 3)
            os.environ["LISTEN_PID"] = str(os.getpid())
            os.environ["LISTEN_FDS"] = "1"
            os.environ["LISTEN_FDNAMES"] = "tally.socket"

    t.stderr = open(t.stderr_path, "ab")
    if systemd:  # close_fds=False: Python's own descriptors are close-on-exec anyway
        t.proc = subprocess.Popen(args, stdout=t.stderr, stderr=t.stderr, close_fds=False,
                                  preexec_fn=child)
    else:
        t.proc = subprocess.Popen(args, stdout=t.stderr, stderr=t.stderr, pass_fds=(fd,))
    return t


def early_request(port, out):
    """Connects before tally accepts; the request waits in the backlog."""
    c = socket.create_connection(("127.0.0.1", port), timeout=20)
    c.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    data = b""
    while True:
        chunk = c.recv(65536)
        if not chunk:
            break
        data += chunk
    out.append(data)
    c.close()


def run(systemd):
    sock = listening_socket()
    port = sock.getsockname()[1]
    t = Tally("")  # its listen port is never bound: the inherited socket wins
    t.port = port
    import threading
    got = []
    th = threading.Thread(target=early_request, args=(port, got))
    th.start()
    time.sleep(0.2)
    start_inherited(t, sock, systemd)
    sock.close()  # tally holds its own copy now
    t.wait_ready()
    th.join(20)
    check(got and got[0].startswith(b"HTTP/1.1 200"), got)
    s, _, b = t.post_json("/v1/events", {"site": "example.com", "url": "https://example.com/"},
                          {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0"})
    eq(s, 202, b)
    check("inherited socket" in t.stderr_text(), t.stderr_text()[-500:])
    eq(t.stop(), 0)


@test
def systemd_socket_activation():
    run(systemd=True)


@test
def listen_fd_flag():
    run(systemd=False)


@test
def listen_fd_not_a_socket():
    t = Tally("")
    r = subprocess.run([BIN, "--config", t.config_path, "--data-dir", t.data_dir,
                        "--listen-fd", "0"], stdin=subprocess.DEVNULL, capture_output=True,
                       text=True, timeout=30)
    check(r.returncode != 0, r)
    check("not a listening" in r.stderr, r.stderr)


if __name__ == "__main__":
    run_all()
