"""Kernel cost per event of the ICMP and closed-port probes: run time per program run from the kernel's BPF
statistics (``kernel.bpf_stats_enabled``, read from each program's fdinfo), over N refused TCP connects, N UDP
datagrams to a closed port (one icmp_send, and the port unreachable received back on loopback runs the ICMP
socket filter) and a sweep of N ports from one source. Needs root.

    .venv/bin/python -m bench.bench_icmp_refused [N]
"""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import time
from pathlib import Path

from meshnode.probes import ProbeConfig, Probes

PROGRAMS = ("tracepoint__tcp__tcp_send_reset", "tracepoint__icmp__icmp_send", "mn_icmp4")


def stats(fd: int) -> tuple[int, int]:
    text = Path(f"/proc/self/fdinfo/{fd}").read_text()
    run_ns = re.search(r"run_time_ns:\s+(\d+)", text)
    cnt = re.search(r"run_cnt:\s+(\d+)", text)
    return (int(run_ns[1]) if run_ns else 0, int(cnt[1]) if cnt else 0)


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    knob = Path("/proc/sys/kernel/bpf_stats_enabled")
    old = knob.read_text().strip()
    knob.write_text("1")
    p = Probes(ProbeConfig())
    try:
        p.open()
        funcs = p._bpf.funcs
        before = {name: stats(funcs[name.encode()].fd) for name in PROGRAMS}
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        t0 = time.perf_counter()
        for i in range(n):
            c = socket.socket()
            c.bind(("127.66.0.2", 0))
            with contextlib.suppress(ConnectionRefusedError):
                c.connect(("127.66.0.1", 20000 + i % 1000))
            c.close()
            u.sendto(b"x", ("127.66.0.1", 9))
        wall = time.perf_counter() - t0
        time.sleep(0.2)
        after = {name: stats(funcs[name.encode()].fd) for name in PROGRAMS}
        refused = [r for r in p.refused() if r.src == "127.66.0.1"]
        print(f"{n} refused TCP connects + {n} UDP datagrams to a closed port, {wall:.2f} s wall")
        for name in PROGRAMS:
            dt, dc = after[name][0] - before[name][0], after[name][1] - before[name][1]
            print(f"  {name:34s} runs {dc:7d}  {dt / dc if dc else 0:7.0f} ns a run")
        print(f"  refused map entries for the source address: {len(refused)} "
              f"({', '.join(f'{r.attempts} attempts / {r.ports} ports' for r in refused)})")
        print(f"  kernel memory: {p.map_memory().get('refused', 0)} B refused, "
              f"{p.map_memory().get('icmp_flows', 0)} B icmp_flows")
    finally:
        p.close()
        knob.write_text(old)


if __name__ == "__main__":
    main()
