"""Sensor benchmark: the same connection churn with no sensor, tcplife-bpfcc, ``meshnode capture`` and the
whole node (``meshnode run``); the node under a paced churn; a bulk transfer with the node off and on.

Run as root (it loads BPF programs; needs ``bpftool``, ``tcplife-bpfcc``, and ``iperf3`` for ``--bulk``:
``apt-get install -y iperf3``). Everything runs on loopback (127.0.0.1). Three modes:

``.venv/bin/python -m bench.bench_sensor [--conns 20000] [--rounds 2] [--only none,tcplife,capture,node]``
    Churn. Each round runs the chosen configurations back to back on the same churn (sequential loopback
    TCP connections: 100 B request, 5 KB reply), so machine noise hits them alike:
    (a) ``none``; (b) ``tcplife``: ``tcplife-bpfcc``; (c) ``capture``: ``meshnode capture --sensor ebpf
    --json``; (d) ``node``: ``meshnode run --insecure --sensor ebpf`` on free loopback ports with a throwaway
    ``--data-dir`` and its other defaults (store, mesh, trust, diagnosis, Prometheus metrics; 10 s export
    period). Per configuration (medians over rounds):

    * churn wall time, relative to no sensor;
    * CPU microseconds per flow (each connection is a flow at both ends): the process's user+system time,
      plus that of its reaped children (cutime, cstime), plus the kernel time of the BPF programs it holds
      (``kernel.bpf_stats_enabled``); and its ratio to tcplife's. (b) and (c) are measured over the churn
      and a 1 s tail; (d) from before the churn until the export period holding the churn's last flow has
      closed (``periods`` in ``meshctl status``) and 2 s more, so its period close, store write, digests
      and diagnosis are counted;
    * completeness: records of the churn's server port ÷ (TcpActiveOpens + TcpPassiveOpens delta); for (d)
      the final TCP records the node stored, as ``meshctl flows --json --port PORT`` returns them;
    * cold start (to the first record for (b) and (c); to the "listening on" log line for (d)), steady and
      peak RSS, BPF ns per program run, and the kernel map memory per tracked TCP flow.

``.venv/bin/python -m bench.bench_sensor --sustained 1000,5000,10000 [--seconds 60] [--clients N]``
    The node (d) under a paced churn at each rate: several client processes (one per 1,500/s unless
    ``--clients``), each pacing its connections to its share, against a pre-forked server; the rate
    actually achieved is printed beside the target. Per rate: the node's CPU as % of one core over the run
    (process and reaped children; its BPF programs' time apart), and the same counting what it spent until
    the period holding the run's last flow closed (a node that falls behind does the rest after the run),
    RSS at the end of the run (VmRSS) and peak (VmHWM),
    and the duration of the last export period close, the gauge ``meshnode_period_close_seconds`` on the
    node's metrics endpoint (sampled once a period during the run and after the run's last period closed;
    "n/a" where the node does not export it).

``.venv/bin/python -m bench.bench_sensor --bulk [--rounds 5] [--bulk-size 2G]``
    Bulk loopback transfer with iperf3 (``iperf3 -s -1``, ``iperf3 -c 127.0.0.1 -n SIZE``), alternating
    node off / node on each round. Per side (medians): CPU seconds per GiB of the two iperf3 processes
    (user+system of the waited children, which includes the BPF programs run in their context), the node's
    own CPU during the transfer, their ratio on/off, and throughput.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import queue
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")
MESHNODE = str(ROOT / ".venv" / "bin" / "meshnode")
MESHCTL = str(ROOT / ".venv" / "bin" / "meshctl")
KINDS = ("none", "tcplife", "capture", "node")

# argv: [workers]. Workers > 1 fork after listen() and accept on the one socket (for the paced churn, where
# one Python server would be the bottleneck). Started in a session of its own: killpg ends all of them.
SERVER = r"""
import os, socket, sys
workers = int(sys.argv[1]) if len(sys.argv) > 1 else 1
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(4096)
print(s.getsockname()[1], flush=True)
for _ in range(workers - 1):
    if os.fork() == 0:
        break
reply = b"r" * 5000
while True:
    c, _ = s.accept()
    c.recv(100); c.sendall(reply); c.close()
"""

CLIENT = r"""
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
req = b"q" * 100
t0 = time.perf_counter()
for _ in range(n):
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(req)
    while c.recv(65536): pass
    c.close()
print(time.perf_counter() - t0)
"""

# argv: port, rate (connections/s), seconds, start (wall clock). Connection i is due at start + i / rate; a
# client that falls behind does not sleep until it has caught up. Prints connections made and seconds taken.
PACED = r"""
import socket, sys, time
port, rate, seconds, start = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
req = b"q" * 100
time.sleep(max(0.0, start - time.time()))
t0 = time.perf_counter()
end, n = t0 + seconds, 0
while True:
    now = time.perf_counter()
    if now >= end:
        break
    due = t0 + n / rate
    if due > now:
        time.sleep(due - now)
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(req)
    while c.recv(65536): pass
    c.close()
    n += 1
print(n, time.perf_counter() - t0)
"""

SETTLE_S = 5.0  # after the node says it is listening, before measuring
TICK_S = 0.5  # the node's sensor poll interval (its default): a flow ended this close to a boundary may
# be drained after it, into the next period


def snmp_opens() -> int:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Tcp:")]
    hdr, val = lines[0], lines[1]
    return int(val[hdr.index("ActiveOpens")]) + int(val[hdr.index("PassiveOpens")])


def proc_user_sys(pid: int, children: bool = False) -> tuple[float, float]:
    """A process's user and system CPU seconds so far; with ``children``, plus those of its reaped children
    (cutime, cstime), where the cost of helpers it runs and waits for (a compiler, a shell) lands."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    user, system = int(fields[11]), int(fields[12])
    if children:
        user, system = user + int(fields[13]), system + int(fields[14])
    return user / tck, system / tck


def proc_rss_kb(pid: int) -> tuple[int, int]:
    status = Path(f"/proc/{pid}/status").read_text()
    get = {ln.split(":")[0]: int(ln.split()[1]) for ln in status.splitlines() if ln.startswith(("VmRSS", "VmHWM"))}
    return get.get("VmRSS", 0), get.get("VmHWM", 0)


def bpf_prog_stats(pid: int) -> dict[str, tuple[int, int]]:
    """run_time_ns and run_cnt of the BPF programs a process holds, by program name."""
    out = subprocess.run(["bpftool", "-j", "prog", "show"], capture_output=True, text=True, check=True).stdout
    held = set()
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            info = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        for ln in info.splitlines():
            if ln.startswith("prog_id:"):
                held.add(int(ln.split()[1]))
    stats = {}
    for p in json.loads(out):
        if p["id"] in held:
            stats[p.get("name", str(p["id"]))] = (p.get("run_time_ns", 0), p.get("run_cnt", 0))
    return stats


Usage = tuple[float, float, dict[str, tuple[int, int]], float]


def usage(pid: int) -> Usage:
    """What a sensor has spent so far: user and system seconds (with reaped children), its BPF programs'
    stats, and the monotonic time they were read at."""
    user, system = proc_user_sys(pid, children=True)
    return user, system, bpf_prog_stats(pid), time.monotonic()


def spent(res: dict[str, Any], before: Usage, after: Usage) -> None:
    """Record in ``res`` what a sensor spent between two ``usage`` readings."""
    (user0, sys0, bpf0, t0), (user1, sys1, bpf1, t1) = before, after
    res["cpu_user_s"], res["cpu_sys_s"] = user1 - user0, sys1 - sys0
    res["cpu_user_sys_s"] = res["cpu_user_s"] + res["cpu_sys_s"]
    runs = {k: (bpf1[k][0] - bpf0.get(k, (0, 0))[0], bpf1[k][1] - bpf0.get(k, (0, 0))[1]) for k in bpf1}
    res["bpf_ns"] = sum(v[0] for v in runs.values())
    res["bpf_runs"] = {k: v for k, v in runs.items() if v[1]}
    res["measured_s"] = t1 - t0


def run_workload(port: int, n: int) -> float:
    out = subprocess.run([PY, "-c", CLIENT, str(port), str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def start_server(workers: int = 1) -> tuple[subprocess.Popen[str], int]:
    """The churn's server (``workers`` processes on one listening socket) and its port."""
    server = subprocess.Popen([PY, "-c", SERVER, str(workers)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    assert server.stdout is not None
    return server, int(server.stdout.readline())


def stop_server(server: subprocess.Popen[str]) -> None:
    os.killpg(server.pid, signal.SIGKILL)  # its own session: the forked workers with it
    server.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Drain:
    """Reads a sensor's output on a thread so a full pipe never stalls the sensor being measured."""

    def __init__(self, stream: Any) -> None:
        import threading

        self.lines: queue.Queue[str] = queue.Queue()
        self.all: list[str] = []
        self._t = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self._t.start()

    def _run(self, stream: Any) -> None:
        for raw in stream:
            line = raw.decode(errors="replace")
            self.all.append(line)
            self.lines.put(line)

    def next(self, timeout: float = 30.0) -> str:
        return self.lines.get(timeout=timeout)

    def join(self) -> list[str]:
        self._t.join(timeout=30)
        return self.all


def start_sensor(kind: str) -> tuple[subprocess.Popen[bytes], Drain, float]:
    """Start a sensor; returns it, its stdout drain, and seconds until it said it is attached."""
    if kind == "tcplife":
        argv = ["tcplife-bpfcc"]
    else:
        argv = [MESHNODE, "capture", "--sensor", "ebpf", "--json", "--interval", "0.1"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = Drain(proc.stdout), Drain(proc.stderr)
    # ready when it prints its header (tcplife) / its banner (ours); then one probe connection makes a record
    (out if kind == "tcplife" else err).next()
    return proc, out, time.monotonic() - t0


def first_record_latency(out: Drain, port: int) -> float:
    t0 = time.monotonic()
    run_workload(port, 1)
    out.next()
    return time.monotonic() - t0


class Node:
    """A ``meshnode run`` as a host runs it (store, mesh, trust, diagnosis, metrics), on free loopback ports
    with a throwaway data dir; ``--insecure`` only so that the bench needs no certificates."""

    def __init__(self) -> None:
        self.data = tempfile.mkdtemp(prefix="bench_sensor_node_")
        self.addr = f"127.0.0.1:{free_port()}"
        self.metrics_addr = f"127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0

    def __enter__(self) -> Node:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> float:
        """Start the node; returns the seconds until its log said it is listening."""
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            [MESHNODE, "run", "--insecure", "--listen", self.addr, "--data-dir", self.data, "--sensor", "ebpf",
             "--metrics", self.metrics_addr], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.out, self.err = Drain(self.proc.stdout), Drain(self.proc.stderr)
        while True:
            try:
                line = self.err.next(timeout=1.0)
            except queue.Empty:
                if self.proc.poll() is not None or time.monotonic() - self.started > 120:
                    raise RuntimeError("meshnode run did not say it is listening:\n"
                                       + "".join(self.err.all[-20:])) from None
                continue
            if f"listening on {self.addr}" in line:
                return time.monotonic() - self.started

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # flushes its last period, then exits
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)

    def meshctl(self, *args: str) -> str:
        return subprocess.run([MESHCTL, "--node", self.addr, *args, "--timeout", "300s"], capture_output=True,
                              text=True, check=True, timeout=600).stdout

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.meshctl("status", "--json")))

    def period_mark(self, period: float) -> tuple[float, int]:
        """The wall time and the count of closed periods at it, read well inside a period (not in the 3 s
        after a boundary, when the node may still be closing one, nor in the last 2 s)."""
        while True:
            phase = time.time() % period
            if phase < 3.0 or phase > period - 2.0:
                time.sleep((3.0 - phase) % period)
            t = time.time()
            closed = int(self.status()["periods"])
            if int(time.time() // period) == int(t // period):
                return t, closed

    def wait_closed(self, mark: tuple[float, int], until: float, period: float) -> None:
        """Wait until the export period holding wall time ``until`` (and the poll after it) has closed."""
        t0, closed0 = mark
        last = int((until + 2 * TICK_S) // period)
        target = closed0 + last - int(t0 // period) + 1
        time.sleep(max(0.0, (last + 1) * period - time.time()))
        deadline = time.monotonic() + 3 * period + 120  # a close of a large period takes a while
        while int(self.status()["periods"]) < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the node did not close export period {target} in time")
            time.sleep(1.0)

    def final_tcp_records(self, port: int) -> int:
        """TCP final records the node stored with ``port`` at either end."""
        since = max(300, int(time.monotonic() - self.started) + 60)
        out = self.meshctl("flows", "--json", "--since", f"{since}s", "--port", str(port), "--proto", "tcp",
                           "--limit", "1000000")
        n = 0
        for ln in out.splitlines():
            if ln.startswith("{"):
                r = json.loads(ln)
                n += r.get("kind") == "final" and port in (r.get("sport"), r.get("dport"))
        return n

    def gauge(self, name: str) -> float | None:
        """A gauge's value on the node's Prometheus endpoint; None where it does not export it."""
        with urllib.request.urlopen(f"http://{self.metrics_addr}/metrics", timeout=10) as resp:
            text = resp.read().decode()
        for ln in text.splitlines():
            if ln.startswith(name) and ln[len(name):len(name) + 1] in (" ", "{"):
                return float(ln.split()[-1])
        return None


def measure(kind: str, port: int, n: int) -> dict[str, Any]:
    if kind == "node":
        return measure_node(port, n)
    res: dict[str, Any] = {"kind": kind}
    proc = None
    if kind != "none":
        proc, drain, ready = start_sensor(kind)
        res["cold_start_s"] = ready + first_record_latency(drain, port)
        time.sleep(0.5)
        before = usage(proc.pid)
    opens0 = snmp_opens()
    res["wall_s"] = run_workload(port, n)
    res["opens"] = snmp_opens() - opens0
    if proc is not None:
        time.sleep(1.0)  # let the sensor drain the tail
        after = usage(proc.pid)
        res["rss_kb"], res["hwm_kb"] = proc_rss_kb(proc.pid)
        spent(res, before, after)
        proc.send_signal(signal.SIGINT)
        try:  # its CPU is measured: only its output is wanted now (bcc's tracepoint detach can take minutes
            proc.wait(timeout=300)  # on a loaded machine)
        except subprocess.TimeoutExpired:
            print(f"  {kind} did not exit 300 s after SIGINT: killed", file=sys.stderr)
            proc.kill()
            proc.wait()
        lines = drain.join()
        if kind == "capture":
            recs, bad = [], []
            for ln in lines:
                if ln.startswith("{"):
                    try:
                        recs.append(json.loads(ln))
                    except ValueError:
                        bad.append(ln)
            if bad:  # counted and shown, not fatal: one such line voided a whole run once
                print(f"capture: {len(bad)} unparsable output lines, first: {bad[0][:300]!r}", file=sys.stderr)
            res["bad_lines"] = len(bad)
            res["completeness"] = recs[-1].get("completeness", {}) if recs else {}
            res["records"] = sum(1 for r in recs if r.get("proto") == "tcp" and r.get("kind") == "final"
                                 and port in (r.get("dport"), r.get("sport")))
        else:
            res["records"] = sum(1 for ln in lines if f" {port} " in ln)
    return res


def measure_node(port: int, n: int) -> dict[str, Any]:
    """The churn with the whole node running: CPU from before the churn until the export period holding its
    last flow has closed (+ 2 s for what follows a close: digests, diagnosis), records from its store."""
    res: dict[str, Any] = {"kind": "node"}
    with Node() as node:
        res["cold_start_s"] = node.start()
        time.sleep(SETTLE_S)
        period = float(node.status()["export_period_s"])
        mark = node.period_mark(period)
        before = usage(node.pid)
        opens0 = snmp_opens()
        res["wall_s"] = run_workload(port, n)
        res["opens"] = snmp_opens() - opens0
        node.wait_closed(mark, time.time(), period)
        time.sleep(2.0)
        after = usage(node.pid)
        res["rss_kb"], res["hwm_kb"] = proc_rss_kb(node.pid)
        spent(res, before, after)
        res["records"] = node.final_tcp_records(port)
        res["completeness"] = node.status()["completeness"]
    return res


PERIOD_CLOSE_GAUGE = "meshnode_period_close_seconds"


def sustained_once(rate: float, seconds: float, clients: int) -> dict[str, Any]:
    """The node under ``clients`` processes pacing loopback connections to ``rate`` per second in all."""
    res: dict[str, Any] = {"rate": rate, "clients": clients}
    server, port = start_server(workers=min(clients, 4))
    try:
        run_workload(port, 200)  # warm up
        with Node() as node:
            node.start()
            time.sleep(SETTLE_S)
            period = float(node.status()["export_period_s"])
            mark = node.period_mark(period)
            start = time.time() + 1.5
            procs = [subprocess.Popen([PY, "-c", PACED, str(port), str(rate / clients), str(seconds), str(start)],
                                      stdout=subprocess.PIPE, text=True) for _ in range(clients)]
            time.sleep(max(0.0, start - 0.2 - time.time()))  # read before the first connection
            opens0 = snmp_opens()
            before = usage(node.pid)
            closes: list[float] = []  # the gauge, sampled once a period during the run
            next_scrape = time.monotonic() + period
            while any(p.poll() is None for p in procs):
                time.sleep(0.2)
                if time.monotonic() >= next_scrape:
                    next_scrape += period
                    if (v := node.gauge(PERIOD_CLOSE_GAUGE)) is not None:
                        closes.append(v)
            after = usage(node.pid)
            res["opens"] = snmp_opens() - opens0
            res["rss_kb"], _ = proc_rss_kb(node.pid)
            done = [p.communicate()[0].split() for p in procs]
            if any(p.returncode for p in procs):
                raise RuntimeError("a paced client failed")
            res["conns"] = sum(int(d[0]) for d in done)
            res["achieved"] = res["conns"] / max(float(d[1]) for d in done)
            spent(res, before, after)
            node.wait_closed(mark, time.time(), period)  # the period holding the run's last flows
            # what the run cost in all: a node that falls behind does the rest after the run
            user, system, _, _ = usage(node.pid)
            res["cpu_to_close_s"] = user + system - before[0] - before[1]
            res["close_last_s"] = node.gauge(PERIOD_CLOSE_GAUGE)
            if res["close_last_s"] is not None:
                closes.append(res["close_last_s"])
            res["close_max_s"] = max(closes) if closes else None
            _, res["hwm_kb"] = proc_rss_kb(node.pid)
            res["completeness"] = node.status()["completeness"]
    finally:
        stop_server(server)
    return res


def sustained(rates: list[float], seconds: float, clients: int | None) -> None:
    rows = []
    for rate in rates:
        r = sustained_once(rate, seconds, clients or max(1, math.ceil(rate / 1500)))
        rows.append(r)
        print(f"sustained {rate:.0f}/s: achieved {r['achieved']:.0f}/s with {r['clients']} clients", file=sys.stderr)
    print(f"node under a paced loopback churn, {seconds:g} s per rate (one node each, fresh data dir)")
    print(f"{'target/s':>9s}{'achieved/s':>11s}{'clients':>8s}{'CPU %':>7s}{'+tail %':>8s}{'BPF %':>7s}"
          f"{'RSS MB':>8s}{'peak MB':>8s}{'close last s':>13s}{'close max s':>12s}")

    def secs(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for r in rows:
        print(f"{r['rate']:>9.0f}{r['achieved']:>11.0f}{r['clients']:>8d}"
              f"{100 * r['cpu_user_sys_s'] / r['measured_s']:>7.1f}{100 * r['cpu_to_close_s'] / r['measured_s']:>8.1f}"
              f"{100 * r['bpf_ns'] / 1e9 / r['measured_s']:>7.1f}"
              f"{r['rss_kb'] / 1024:>8.0f}{r['hwm_kb'] / 1024:>8.0f}{secs(r['close_last_s']):>13s}"
              f"{secs(r['close_max_s']):>12s}")
    print("CPU % = the node's user+system (with reaped children) during the run, of one core; +tail % = the same "
          "until the period holding the run's last flow closed, over the run's seconds (a node that falls behind "
          "does the rest then); BPF % = its BPF programs' run time (in the churning processes' context)")
    if all(r["close_last_s"] is None for r in rows):
        print(f"close: n/a, the node exports no {PERIOD_CLOSE_GAUGE} gauge")
    for r in rows:
        c = r["completeness"]
        print(f"{r['rate']:.0f}/s: {r['conns']} connections, opens {r['opens']}; node lost {c.get('lost_events')}, "
              f"evicted {c.get('map_evictions')}, overruns {c.get('ringbuf_overruns')}, "
              f"store evictions {c.get('store_evictions')}, incomplete periods {c.get('incomplete_periods')}")


def listening(port: int) -> bool:
    """Whether something listens on 127.0.0.1:port (read from /proc, without connecting to it)."""
    want = f"0100007F:{port:04X}"
    return any(ln.split()[1] == want and ln.split()[3] == "0A"
               for ln in Path("/proc/net/tcp").read_text().splitlines()[1:])


def wait_cpu(proc: subprocess.Popen[Any]) -> float:
    """Wait for a child; returns its user+system seconds (with its own waited children)."""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
    return ru.ru_utime + ru.ru_stime


def bulk_once(on: bool, size: str) -> dict[str, Any]:
    res: dict[str, Any] = {"on": on}
    with Node() as node, tempfile.TemporaryDirectory(prefix="bench_sensor_iperf_") as tmp:
        if on:
            node.start()
            time.sleep(SETTLE_S)
        port = free_port()
        server = subprocess.Popen(["iperf3", "-s", "-1", "-B", "127.0.0.1", "-p", str(port)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not listening(port):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"iperf3 -s did not listen on 127.0.0.1:{port}")
            time.sleep(0.05)
        before = usage(node.pid) if on else None
        t0 = time.monotonic()
        with open(Path(tmp) / "client.json", "w") as out:
            client = subprocess.Popen(["iperf3", "-c", "127.0.0.1", "-p", str(port), "-n", size, "-J"], stdout=out)
            res["iperf_cpu_s"] = wait_cpu(client) + wait_cpu(server)
        res["wall_s"] = time.monotonic() - t0
        if before is not None:
            spent(res, before, usage(node.pid))
        report = json.loads((Path(tmp) / "client.json").read_text())
        res["bytes"] = int(report["end"]["sum_received"]["bytes"])
    return res


def bulk(rounds: int, size: str) -> int:
    if shutil.which("iperf3") is None:
        print("bench_sensor --bulk needs iperf3: apt-get install -y iperf3", file=sys.stderr)
        return 2
    rows: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    for rnd in range(rounds):
        for on in (False, True):
            r = bulk_once(on, size)
            rows[on].append(r)
            print(f"round {rnd + 1} node {'on ' if on else 'off'} {r['bytes'] / 2**30:.2f} GiB in {r['wall_s']:.2f}s, "
                  f"iperf3 CPU {r['iperf_cpu_s']:.2f}s", file=sys.stderr)
    med = statistics.median

    def per_gib(on: bool, key: str) -> float:
        return float(med(r[key] / (r["bytes"] / 2**30) for r in rows[on]))

    off_ip, on_ip = per_gib(False, "iperf_cpu_s"), per_gib(True, "iperf_cpu_s")
    node_cpu = per_gib(True, "cpu_user_sys_s")
    on_total = med((r["iperf_cpu_s"] + r["cpu_user_sys_s"]) / (r["bytes"] / 2**30) for r in rows[True])
    gbit = {on: med(8 * r["bytes"] / r["wall_s"] / 1e9 for r in rows[on]) for on in (False, True)}
    print(f"bulk loopback transfer: iperf3 -n {size} per round, {rounds} rounds alternating node off / on; medians")
    print(f"{'':34s}{'node off':>10s}{'node on':>10s}{'on / off':>10s}")
    print(f"{'iperf3 CPU s / GiB (both ends)':34s}{off_ip:>10.3f}{on_ip:>10.3f}{on_ip / off_ip:>10.3f}")
    print(f"{'node CPU s / GiB, during transfer':34s}{'-':>10s}{node_cpu:>10.3f}")
    print(f"{'iperf3 + node CPU s / GiB':34s}{off_ip:>10.3f}{on_total:>10.3f}{on_total / off_ip:>10.3f}")
    print(f"{'throughput Gbit/s':34s}{gbit[False]:>10.2f}{gbit[True]:>10.2f}{gbit[True] / gbit[False]:>10.3f}")
    print(f"{'  node BPF s / GiB (in iperf3 CPU)':34s}{'-':>10s}{per_gib(True, 'bpf_ns') / 1e9:>10.4f}")
    return 0


# kmalloc size classes (bytes) that objects of up to 512 B are rounded up to.
_KMALLOC_CLASSES = (8, 16, 32, 64, 96, 128, 192, 256, 512)


def map_memory_per_flow(live_conns: int = 2000) -> dict[str, float]:
    """Kernel memory of the per-flow TCP map, preallocated and not, with ``live_conns`` loopback
    connections held open (both ends tracked: 2 flows each).

    Preallocated, the map holds its whole capacity from load: bytes / capacity. Not preallocated, it holds
    the bucket array (fixed) and one element per live flow: (bytes with the flows - bytes empty) / flows,
    as the kernel accounts it (memlock); the element itself comes from kmalloc, rounded up to a size class.
    """
    sys.path.insert(0, str(ROOT))
    from meshnode.probes._loader import ProbeConfig, Probes

    out: dict[str, float] = {}
    for prealloc in (True, False):
        p = Probes(ProbeConfig(tcp_prealloc=prealloc))
        p.open()
        conns: list[socket.socket] = []
        try:
            empty = p.map_memory()["tcp_flows"]
            with socket.create_server(("127.0.0.1", 0), backlog=4096) as srv:
                port = srv.getsockname()[1]
                for _ in range(live_conns):
                    conns.append(socket.create_connection(("127.0.0.1", port)))
                    conns.append(srv.accept()[0])
            deadline = time.monotonic() + 10
            while len(p.tcp_flows()) < 2 * live_conns and time.monotonic() < deadline:
                time.sleep(0.05)
            live = len(p.tcp_flows())
            full = p.map_memory()["tcp_flows"]
            cap = p.config.tcp_max_flows
            if prealloc:
                out["prealloc_per_slot"] = full / cap
            else:
                elem = (full - empty) / max(live, 1)
                out["fixed_per_slot"] = empty / cap
                out["per_live_flow"] = elem
                out["per_live_flow_slab"] = next((c for c in _KMALLOC_CLASSES if c >= elem), elem)
                out["live_flows"] = live
        finally:
            for c in conns:
                c.close()
            p.close()
    return out


def churn(kinds: list[str], conns: int, rounds: int) -> None:
    server, port = start_server()
    try:
        run_workload(port, 500)  # warm up
        results: dict[str, list[dict[str, Any]]] = {k: [] for k in kinds}
        for rnd in range(rounds):
            for kind in kinds:
                r = measure(kind, port, conns)
                results[kind].append(r)
                print(f"round {rnd + 1} {kind:8s} wall {r['wall_s']:.2f}s", file=sys.stderr)
    finally:
        stop_server(server)
    mem = map_memory_per_flow() if {"capture", "node"} & set(kinds) else None
    report(results, conns, mem)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=20000, help="connections per churn (default 20000)")
    ap.add_argument("--rounds", type=int, help="rounds (default 2 for the churn, 5 for --bulk)")
    ap.add_argument("--only", default=",".join(KINDS), help=f"churn configurations (default {','.join(KINDS)})")
    ap.add_argument("--sustained", metavar="RATES", help="paced churn at these connections/s, e.g. 1000,5000,10000")
    ap.add_argument("--seconds", type=float, default=60.0, help="seconds per --sustained rate (default 60)")
    ap.add_argument("--clients", type=int, help="client processes for --sustained (default one per 1,500/s)")
    ap.add_argument("--bulk", action="store_true", help="iperf3 loopback transfer, node off / on")
    ap.add_argument("--bulk-size", default="2G", help="iperf3 -n per round (default 2G)")
    ns = ap.parse_args()
    kinds = [k for k in KINDS if k in ns.only.split(",")]
    if unknown := set(ns.only.split(",")) - set(KINDS):
        ap.error(f"--only: unknown {','.join(sorted(unknown))} (choose from {','.join(KINDS)})")
    if os.geteuid() != 0:
        print("bench_sensor: run as root (it loads BPF programs)", file=sys.stderr)
        return 2
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")
    try:
        if ns.bulk:
            return bulk(ns.rounds or 5, ns.bulk_size)
        if ns.sustained:
            sustained([float(r) for r in ns.sustained.split(",")], ns.seconds, ns.clients)
            return 0
        churn(kinds, ns.conns, ns.rounds or 2)
        return 0
    finally:
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text("0")


def report(results: dict[str, list[dict[str, Any]]], conns: int, mem: dict[str, float] | None) -> None:
    med = statistics.median
    flows = 2 * conns  # each connection is a flow at both ends
    kinds = list(results)
    sensors = [k for k in kinds if k != "none"]
    base = med(r["wall_s"] for r in results["none"]) if "none" in results else None

    def cpu_us(kind: str) -> float:
        return float(med((r["cpu_user_sys_s"] + r["bpf_ns"] / 1e9) / flows * 1e6 for r in results[kind]))

    def row(label: str, cell: Any, only: list[str] = sensors) -> None:
        print(f"{label:30s}" + "".join(f"{cell(k) if k in only else '-':>12s}" for k in kinds))

    def us(key: str, scale: float = 1.0) -> Any:
        return lambda k: f"{med(r[key] * scale / flows * 1e6 for r in results[k]):.1f}"

    rounds = len(next(iter(results.values())))
    print(f"connections per run: {conns} (flows: {flows}); rounds: {rounds}; medians")
    row("", lambda k: k, kinds)
    row("churn wall s", lambda k: f"{med(r['wall_s'] for r in results[k]):.2f}", kinds)
    if base is not None:
        row("churn wall vs none", lambda k: f"{med(r['wall_s'] for r in results[k]) / base:.3f}", kinds)
    row("CPU us / flow", lambda k: f"{cpu_us(k):.1f}")
    row("  of which BPF", us("bpf_ns", 1e-9))
    row("  of which user", us("cpu_user_s"))
    row("  of which system", us("cpu_sys_s"))
    if "tcplife" in results:
        row("CPU vs tcplife", lambda k: f"{cpu_us(k) / cpu_us('tcplife'):.3f}")
    row("completeness records/opens", lambda k: f"{med(r['records'] / max(r['opens'], 1) for r in results[k]):.4f}")
    row("cold start s", lambda k: f"{med(r['cold_start_s'] for r in results[k]):.2f}")
    row("RSS steady / peak MB", lambda k: f"{med(r['rss_kb'] for r in results[k]) / 1024:.0f} / "
                                          f"{med(r['hwm_kb'] for r in results[k]) / 1024:.0f}")
    row("CPU measured over s", lambda k: f"{med(r['measured_s'] for r in results[k]):.1f}")
    print("cold start: to the first record (tcplife, capture); to the 'listening on' log line (node). node: CPU "
          "from before the churn until its last flow's export period closed, + 2 s")
    for kind in ("capture", "node"):
        for r in results.get(kind, []):
            c = r["completeness"]
            print(f"{kind}: records {r['records']} / opens {r['opens']} = {r['records'] / max(r['opens'], 1):.4f}; "
                  f"lost {c.get('lost_events')}, evicted {c.get('map_evictions')}, "
                  f"overruns {c.get('ringbuf_overruns')}"
                  + (f", store evictions {c.get('store_evictions')}, incomplete periods "
                     f"{c.get('incomplete_periods')}" if kind == "node" else "")
                  + (f"; {r['bad_lines']} unparsable lines" if r.get("bad_lines") else ""))
    for kind in sensors:
        runs = results[kind][-1]["bpf_runs"]
        print(f"{kind}, BPF ns per run: " + ", ".join(f"{k} {ns_ / max(cnt, 1):.0f} ({cnt} runs)"
                                                      for k, (ns_, cnt) in sorted(runs.items())))
    if mem is not None:
        print(f"kernel map memory per tracked TCP flow: preallocated {mem['prealloc_per_slot']:.0f} B "
              f"(per slot, reserved at load); not preallocated (default) {mem['per_live_flow']:.0f} B "
              f"accounted, {mem['per_live_flow_slab']:.0f} B kmalloc class, per live flow "
              f"({mem['live_flows']:.0f} live), + {mem['fixed_per_slot']:.0f} B per slot of buckets")


if __name__ == "__main__":
    sys.exit(main())
