"""Programs that make real traffic on lab hosts, as Python source run with ``host.python(CODE, args...)``.

Each prints one JSON line with what it did (pids, byte counts) so tests can compare the sensor's records
with what really happened.
"""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

# Serve one TCP connection: read exactly N bytes, answer M bytes, close. argv: family port N M
TCP_SERVER = r"""
import json, socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
port, n, m = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", port)); s.listen(16)
print(json.dumps({"ready": True}), flush=True)
c, _ = s.accept(); got = 0
while got < n:
    d = c.recv(1 << 20)
    if not d: break
    got += len(d)
c.sendall(b"y" * m); c.shutdown(socket.SHUT_WR)
while c.recv(1 << 16): pass
c.close(); s.close()
print(json.dumps({"received": got, "sent": m}), flush=True)
"""

# Connect from a child process, send N, read until EOF. argv: addr port N
TCP_CLIENT = r"""
import json, subprocess, sys
child = r'''
import json, os, socket, sys
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = socket.create_connection((addr, port), timeout=20)
c.sendall(b"x" * n); c.shutdown(socket.SHUT_WR); got = 0
while True:
    d = c.recv(1 << 20)
    if not d: break
    got += len(d)
c.close()
print(json.dumps({"pid": os.getpid(), "comm": open("/proc/self/comm").read().strip(), "sent": n, "received": got}))
'''
out = subprocess.run([sys.executable, "-c", child, *sys.argv[1:4]], capture_output=True, text=True, check=True)
print(out.stdout.strip(), flush=True)
"""

# One connect attempt with a timeout; prints the errno name. argv: addr port timeout
TCP_CONNECT = r"""
import json, os, socket, sys, errno
addr, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    socket.create_connection((addr, port), timeout=timeout).close(); res = "ok"
except socket.timeout: res = "timeout"
except OSError as e: res = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps({"pid": os.getpid(), "result": res}), flush=True)
"""

# UDP echo: answer every datagram with 3x its size until killed. argv: family port
UDP_ECHO = r"""
import json, socket, sys
fam = socket.AF_INET6 if sys.argv[1] == "6" else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", int(sys.argv[2])))
print(json.dumps({"ready": True}), flush=True)
while True:
    d, a = s.recvfrom(65535); s.sendto(d * 3, a)
"""

# Send one UDP query, wait for an answer. argv: addr port size timeout
UDP_QUERY = r"""
import json, os, socket, sys
addr, port, size, timeout = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(timeout)
s.sendto(b"q" * size, (addr, port))
try: got = len(s.recv(65535))
except OSError: got = 0
s.close()
print(json.dumps({"pid": os.getpid(), "sent": size, "received": got}), flush=True)
"""

# Bulk upload: send N bytes as fast as possible to a sink, then close. argv: addr port N
TCP_BULK = r"""
import json, os, socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
c.sendall(b"z" * int(sys.argv[3])); c.shutdown(socket.SHUT_WR)
while c.recv(1 << 16): pass
c.close(); print(json.dumps({"pid": os.getpid()}), flush=True)
"""

# Connect a socket to a closed port (refused), then the same socket to a listening one; send N bytes.
# argv: addr closed_port port N
TCP_RECONNECT = r"""
import json, os, socket, sys
s = socket.socket()
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
except ConnectionRefusedError:
    pass
s.connect((sys.argv[1], int(sys.argv[3])))  # the same socket again, now to a listening port
s.sendall(b"r" * int(sys.argv[4])); s.shutdown(socket.SHUT_WR)
while s.recv(1 << 16): pass
s.close(); print(json.dumps({"pid": os.getpid()}), flush=True)
"""

# Sink: accept connections and read them to EOF, forever. argv: port
TCP_SINK = r"""
import json, socket, sys, threading
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
print(json.dumps({"ready": True}), flush=True)
def serve(c):
    while c.recv(1 << 20): pass
    c.close()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""


def start(host: Any, code: str, *args: object) -> subprocess.Popen[str]:
    """Start a traffic program on a host; waits for its ``{"ready": true}`` line when it prints one."""
    proc: subprocess.Popen[str] = host.python(code, *map(str, args), stdout=subprocess.PIPE,
                                              stderr=subprocess.PIPE, text=True)
    return proc


def wait_ready(proc: subprocess.Popen[str], timeout: float = 10.0) -> None:
    """Block until a server printed its ready line."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if '"ready"' not in line:
        err = proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        raise AssertionError(f"server did not become ready: {line!r} {err}")
    assert time.monotonic() <= deadline


def result(proc: subprocess.Popen[str], timeout: float = 60.0) -> dict[str, Any]:
    """The last JSON line a traffic program printed, after it exits."""
    out, err = proc.communicate(timeout=timeout)
    lines = [ln for ln in out.splitlines() if ln.startswith("{")]
    assert lines, f"no result (rc={proc.returncode}): {err}"
    data: dict[str, Any] = json.loads(lines[-1])
    return data
