"""Sensor benchmark (issue 3): the same connection churn with no sensor, tcplife-bpfcc, and meshnode's.

Run as root: ``.venv/bin/python -m bench.bench_sensor [--conns 20000] [--rounds 2]``.

Each round runs the three configurations back to back and the report prints ratios measured side by side,
so machine noise hits all three alike. Per configuration:

* workload wall time (20,000 loopback TCP connections: 100 B request, 5 KB reply), relative to no sensor;
* sensor CPU seconds per 10,000 flows: the sensor process's user+system time plus the kernel time of its
  BPF programs (``kernel.bpf_stats_enabled``), over the workload;
* completeness of ours: records ÷ (TcpActiveOpens + TcpPassiveOpens delta), and lost/evicted counts;
* BPF ns per program run, kernel map memory per tracked flow (preallocated, and per live flow when not),
  cold start (process start to first record), peak and steady RSS of the sensor process.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PY = str(ROOT / ".venv" / "bin" / "python")

SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0)); s.listen(512)
print(s.getsockname()[1], flush=True)
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


def snmp_opens() -> int:
    lines = [ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Tcp:")]
    hdr, val = lines[0], lines[1]
    return int(val[hdr.index("ActiveOpens")]) + int(val[hdr.index("PassiveOpens")])


def proc_user_sys(pid: int) -> tuple[float, float]:
    """A process's user and system CPU seconds so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tck = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tck, int(fields[12]) / tck


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


def run_workload(port: int, n: int) -> float:
    out = subprocess.run([PY, "-c", CLIENT, str(port), str(n)], capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


class Drain:
    """Reads a sensor's output on a thread so a full pipe never stalls the sensor being measured."""

    def __init__(self, stream: Any) -> None:
        import queue
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
        argv = [str(ROOT / ".venv" / "bin" / "meshnode"), "capture", "--sensor", "ebpf", "--json", "--interval", "0.1"]
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


def measure(kind: str, port: int, n: int) -> dict[str, Any]:
    res: dict[str, Any] = {"kind": kind}
    proc = None
    if kind != "none":
        proc, drain, ready = start_sensor(kind)
        res["cold_start_s"] = ready + first_record_latency(drain, port)
        time.sleep(0.5)
        (user0, sys0), bpf0 = proc_user_sys(proc.pid), bpf_prog_stats(proc.pid)
    opens0 = snmp_opens()
    res["wall_s"] = run_workload(port, n)
    res["opens"] = snmp_opens() - opens0
    if proc is not None:
        time.sleep(1.0)  # let the sensor drain the tail
        bpf1 = bpf_prog_stats(proc.pid)
        res["rss_kb"], res["hwm_kb"] = proc_rss_kb(proc.pid)
        user1, sys1 = proc_user_sys(proc.pid)
        res["cpu_user_s"], res["cpu_sys_s"] = user1 - user0, sys1 - sys0
        res["cpu_user_sys_s"] = res["cpu_user_s"] + res["cpu_sys_s"]
        runs = {k: (bpf1[k][0] - bpf0.get(k, (0, 0))[0], bpf1[k][1] - bpf0.get(k, (0, 0))[1]) for k in bpf1}
        res["bpf_ns"] = sum(v[0] for v in runs.values())
        res["bpf_runs"] = {k: v for k, v in runs.items() if v[1]}
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        lines = drain.join()
        if kind == "ours":
            recs, bad = [], []
            for ln in lines:
                if ln.startswith("{"):
                    try:
                        recs.append(json.loads(ln))
                    except ValueError:
                        bad.append(ln)
            if bad:  # counted and shown, not fatal: one such line voided a whole run once
                print(f"ours: {len(bad)} unparsable output lines, first: {bad[0][:300]!r}", file=sys.stderr)
            res["bad_lines"] = len(bad)
            res["completeness"] = recs[-1].get("completeness", {}) if recs else {}
            res["records"] = sum(1 for r in recs if r.get("proto") == "tcp" and r.get("kind") == "final"
                                 and port in (r.get("dport"), r.get("sport")))
        else:
            res["records"] = sum(1 for ln in lines if f" {port} " in ln)
    return res


# kmalloc size classes (bytes) that objects of up to 512 B are rounded up to.
_KMALLOC_CLASSES = (8, 16, 32, 64, 96, 128, 192, 256, 512)


def map_memory_per_flow(live_conns: int = 2000) -> dict[str, float]:
    """Kernel memory of the per-flow TCP map, preallocated and not, with ``live_conns`` loopback
    connections held open (both ends tracked: 2 flows each).

    Preallocated, the map holds its whole capacity from load: bytes / capacity. Not preallocated, it holds
    the bucket array (fixed) and one element per live flow: (bytes with the flows - bytes empty) / flows,
    as the kernel accounts it (memlock); the element itself comes from kmalloc, rounded up to a size class.
    """
    import socket

    sys.path.insert(0, str(ROOT))
    from probes._loader import ProbeConfig, Probes

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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=20000)
    ap.add_argument("--rounds", type=int, default=2)
    ns = ap.parse_args()
    if os.geteuid() != 0:
        print("bench_sensor: run as root (it loads BPF programs)", file=sys.stderr)
        return 2
    Path("/proc/sys/kernel/bpf_stats_enabled").write_text("1")
    server = subprocess.Popen([PY, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        run_workload(port, 500)  # warm up
        results: dict[str, list[dict[str, Any]]] = {"none": [], "tcplife": [], "ours": []}
        for rnd in range(ns.rounds):
            for kind in ("none", "tcplife", "ours"):
                r = measure(kind, port, ns.conns)
                results[kind].append(r)
                print(f"round {rnd + 1} {kind:8s} wall {r['wall_s']:.2f}s", file=sys.stderr)
    finally:
        server.kill()
        Path("/proc/sys/kernel/bpf_stats_enabled").write_text("0")
    report(results, ns.conns, map_memory_per_flow())
    return 0


def report(results: dict[str, list[dict[str, Any]]], conns: int, mem: dict[str, float]) -> None:
    med = statistics.median
    base = med(r["wall_s"] for r in results["none"])
    flows = 2 * conns  # each connection is a flow at both ends

    def cpu(kind: str) -> float:
        return med((r["cpu_user_sys_s"] + r["bpf_ns"] / 1e9) / flows * 10_000 for r in results[kind])

    ours, tl = results["ours"], results["tcplife"]
    print(f"connections per run: {conns} (flows: {flows}); rounds: {len(ours)}; medians")
    print(f"{'':28s}{'tcplife-bpfcc':>16s}{'meshnode':>16s}")
    print(f"{'workload wall vs none':28s}{med(r['wall_s'] for r in tl) / base:>16.3f}"
          f"{med(r['wall_s'] for r in ours) / base:>16.3f}")
    print(f"{'sensor CPU s / 10k flows':28s}{cpu('tcplife'):>16.3f}{cpu('ours'):>16.3f}")
    print(f"{'  of which BPF s / 10k':28s}{med(r['bpf_ns'] / 1e9 / flows * 10_000 for r in tl):>16.3f}"
          f"{med(r['bpf_ns'] / 1e9 / flows * 10_000 for r in ours):>16.3f}")
    print(f"{'  of which user s / 10k':28s}{med(r['cpu_user_s'] / flows * 10_000 for r in tl):>16.3f}"
          f"{med(r['cpu_user_s'] / flows * 10_000 for r in ours):>16.3f}")
    print(f"{'  of which system s / 10k':28s}{med(r['cpu_sys_s'] / flows * 10_000 for r in tl):>16.3f}"
          f"{med(r['cpu_sys_s'] / flows * 10_000 for r in ours):>16.3f}")
    print(f"{'ours / tcplife CPU':28s}{'':>16s}{cpu('ours') / cpu('tcplife'):>16.3f}")
    print(f"{'cold start to 1st record s':28s}{med(r['cold_start_s'] for r in tl):>16.2f}"
          f"{med(r['cold_start_s'] for r in ours):>16.2f}")
    def rss(kind: str) -> str:
        rows = results[kind]
        return f"{med(r['rss_kb'] for r in rows) / 1024:.0f} / {med(r['hwm_kb'] for r in rows) / 1024:.0f}"

    print(f"{'RSS steady / peak MB':28s}{rss('tcplife'):>16s}{rss('ours'):>16s}")
    for r in ours:
        c = r["completeness"]
        print(f"ours: records {r['records']} / opens {r['opens']} = {r['records'] / max(r['opens'], 1):.4f}; "
              f"lost {c.get('lost_events')}, evicted {c.get('map_evictions')}, overruns {c.get('ringbuf_overruns')}"
              + (f"; {r['bad_lines']} unparsable lines" if r.get("bad_lines") else ""))
    runs = ours[-1]["bpf_runs"]
    print("ours, BPF ns per run: " + ", ".join(f"{k} {ns_ / max(cnt, 1):.0f} ({cnt} runs)"
                                               for k, (ns_, cnt) in sorted(runs.items())))
    runs = tl[-1]["bpf_runs"]
    print("tcplife, BPF ns per run: " + ", ".join(f"{k} {ns_ / max(cnt, 1):.0f} ({cnt} runs)"
                                                  for k, (ns_, cnt) in sorted(runs.items())))
    print(f"kernel map memory per tracked TCP flow: preallocated {mem['prealloc_per_slot']:.0f} B "
          f"(per slot, reserved at load); not preallocated (default) {mem['per_live_flow']:.0f} B "
          f"accounted, {mem['per_live_flow_slab']:.0f} B kmalloc class, per live flow "
          f"({mem['live_flows']:.0f} live), + {mem['fixed_per_slot']:.0f} B per slot of buckets")


if __name__ == "__main__":
    sys.exit(main())
