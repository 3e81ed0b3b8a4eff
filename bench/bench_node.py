"""Node start-up and memory (issue 4): time from `meshnode run` to the first flow record answered over gRPC,
and the node's RSS after a minute of steady churn. Run as root: ``.venv/bin/python -m bench.bench_node``.

The first record needs the sensor attached, one connection made, and one export period closed (the node
serves records when their period closes), so it is measured with a 1 s export period.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NODE = "127.0.0.1:7477"


def rss_kb(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    vals = {ln.split(":")[0]: int(ln.split()[1]) for ln in status.splitlines() if ln.startswith(("VmRSS", "VmHWM"))}
    return vals["VmRSS"], vals["VmHWM"]


def churn(stop: threading.Event, rate: float) -> int:
    """Loopback connections at about ``rate`` per second until stopped; returns how many."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(128)
    port = srv.getsockname()[1]
    n = 0

    def serve() -> None:
        while not stop.is_set():
            try:
                c, _ = srv.accept()
            except OSError:
                return
            c.recv(100)
            c.sendall(b"r" * 2000)
            c.close()

    threading.Thread(target=serve, daemon=True).start()
    while not stop.is_set():
        c = socket.create_connection(("127.0.0.1", port))
        c.sendall(b"q" * 100)
        while c.recv(65536):
            pass
        c.close()
        n += 1
        time.sleep(1 / rate)
    srv.close()
    return n


def first_record_seconds(data: str) -> float:
    t0 = time.monotonic()
    node = subprocess.Popen([str(ROOT / ".venv/bin/meshnode"), "run", "--insecure", "--listen", NODE,
                             "--data-dir", data, "--export-period", "1", "--metrics", "off", "--sensor", "ebpf"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    meshctl = [str(ROOT / ".venv/bin/meshctl"), "--node", NODE, "flows", "--since", "1m", "--json", "--dport"]
    try:
        srv = socket.socket()
        srv.bind(("127.0.0.1", 0))
        srv.listen(8)
        port = srv.getsockname()[1]
        while time.monotonic() - t0 < 30:
            try:
                c = socket.create_connection(("127.0.0.1", port))
                a, _ = srv.accept()
                c.close()
                a.close()
            except OSError:
                pass
            out = subprocess.run([*meshctl, str(port)], capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                return time.monotonic() - t0
            time.sleep(0.05)
        raise SystemExit("no record within 30 s")
    finally:
        node.terminate()
        node.wait(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seconds", type=float, default=60.0, help="steady churn duration (default 60)")
    ap.add_argument("--rate", type=float, default=200.0, help="connections per second (default 200)")
    ns = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mn-bench-node-")
    try:
        firsts = [first_record_seconds(f"{tmp}/{i}") for i in range(3)]
        node = subprocess.Popen([str(ROOT / ".venv/bin/meshnode"), "run", "--insecure", "--listen", NODE, "--data-dir",
                                 f"{tmp}/steady", "--metrics", "off", "--sensor", "ebpf"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(3)
        stop = threading.Event()
        box: list[int] = []
        th = threading.Thread(target=lambda: box.append(churn(stop, ns.rate)))
        th.start()
        samples = []
        t_end = time.monotonic() + ns.seconds
        while time.monotonic() < t_end:
            time.sleep(5)
            samples.append(rss_kb(node.pid)[0])
        stop.set()
        th.join()
        rss, hwm = rss_kb(node.pid)
        node.terminate()
        node.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"start to first record (1 s export period), 3 runs: {', '.join(f'{x:.2f}' for x in firsts)} s "
          f"(goal <= 3 s)")
    print(f"steady churn: {box[0]} connections in {ns.seconds:.0f} s ({box[0] / ns.seconds:.0f}/s)")
    print(f"node RSS: steady {rss / 1024:.0f} MB (samples {min(samples) / 1024:.0f}-{max(samples) / 1024:.0f} MB), "
          f"peak {hwm / 1024:.0f} MB (goal <= 120 MB steady)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
