"""The kernel's cost of DNS: per answer parsed, per query noted, per connect that looks its name up.

Root, real eBPF. The sensor is scoped to a cgroup of its own that holds only the client (a python3 that the
bench moves there before it sends anything), so the programs' ``run_time_ns`` / ``run_cnt``
(``kernel.bpf_stats_enabled``, read with bpftool) count the client's packets alone. dnsmasq answers on a
loopback address. Each case sends N requests one after the other and reads the programs' totals before
and after:

* ``udp``: datagrams to a UDP echo on a port that is not 53 (the packet programs' cost without DNS);
* ``dns-a``: queries answered by one A record; ``dns-cname``: a CNAME and its A record; ``dns-nx``: NXDOMAIN;
* ``tcp-named`` / ``tcp-plain``: TCP connects to an address a name was resolved to, and to one without:
  ``mn_sockops`` per connect, the difference being the name lookup at connect.

The parser (``mn_dns_answer``) runs as a tail call of the ingress program, so its time is in the ingress
program's ``run_time_ns`` (the kernel accounts tail calls to the program that was entered). Prints ns per
packet (or per connect) for each case and the DNS cases' excess over ``udp``.

    python -m bench.bench_dns [--n 20000]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from bench.bench_sensor import bpf_prog_stats
from meshnode.probes import CGROUP_ROOT
from meshnode.probes._loader import ProbeConfig, Probes
from tests._support.env import scoped_cgroup

RESOLVER, ECHO, NAMED, PLAIN = "127.0.79.53", "127.0.79.54", "127.0.79.80", "127.0.79.81"

CLIENT = r"""
import socket, struct, sys
case, n, resolver, echo, named, plain = sys.argv[1], int(sys.argv[2]), *sys.argv[3:7]
sys.stdin.readline()  # moved into the cgroup: go
def q(name, i):
    return struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + b"".join(
        bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0\0\1\0\1"
if case.startswith("tcp"):
    addr = named if case == "tcp-named" else plain
    for i in range(n):
        socket.create_connection((addr, 8079)).close()
else:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.settimeout(2)
    name = {"dns-a": "bench.meshtest", "dns-cname": "alias.meshtest", "dns-nx": "nx.meshtest"}.get(case, "")
    dest = (echo, 5399) if case == "udp" else (resolver, 53)
    for i in range(n):
        u.sendto(q(name or "x", i), dest)
        u.recvfrom(4096)
print("done", flush=True)
"""


def serve_forever(sock: socket.socket, handle: str) -> None:
    while True:
        try:
            if handle == "echo":
                data, peer = sock.recvfrom(4096)
                sock.sendto(data, peer)
            else:
                sock.accept()[0].close()
        except OSError:
            return


def run_case(case: str, n: int, cg: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", CLIENT, case, str(n), RESOLVER, ECHO, NAMED, PLAIN],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    (cg / "cgroup.procs").write_text(str(proc.pid))
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()
    out = proc.stdout.readline()
    proc.wait(60)
    assert out.strip() == "done" and proc.returncode == 0, (case, out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="requests per case")
    args = ap.parse_args()
    dnsmasq = shutil.which("dnsmasq", path="/usr/sbin:/usr/bin")
    if os.geteuid() != 0 or dnsmasq is None:
        print("bench_dns needs root and dnsmasq (make setup)", file=sys.stderr)
        return 2
    stats_file = Path("/proc/sys/kernel/bpf_stats_enabled")
    was = stats_file.read_text().strip()
    resolver = subprocess.Popen(
        [dnsmasq, "--keep-in-foreground", "--conf-file=/dev/null", f"--listen-address={RESOLVER}", "--bind-interfaces",
         "--port=53", "--no-resolv", "--no-hosts", "--user=root", f"--host-record=bench.meshtest,{NAMED}",
         "--cname=alias.meshtest,bench.meshtest", "--address=/nx.meshtest/", "--cache-size=1000"],
        stderr=subprocess.DEVNULL)
    echo = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    echo.bind((ECHO, 5399))
    listeners = [socket.create_server((a, 8079), backlog=1024) for a in (NAMED, PLAIN)]
    for s, kind in ((echo, "echo"), *((lst, "accept") for lst in listeners)):
        threading.Thread(target=serve_forever, args=(s, kind), daemon=True).start()
    time.sleep(0.5)
    try:
        stats_file.write_text("1")
        with scoped_cgroup("bench-dns") as cg:
            probes = Probes(ProbeConfig(cgroup="/" + cg.name, cgroup_root=CGROUP_ROOT))
            probes.open()
            try:
                run_case("dns-a", 10, cg)  # names NAMED for tcp-named, warms the resolver's cache
                rows = []
                for case in ("udp", "dns-a", "dns-cname", "dns-nx", "tcp-named", "tcp-plain"):
                    before = bpf_prog_stats(os.getpid())
                    t0 = time.monotonic()
                    run_case(case, args.n, cg)
                    wall = time.monotonic() - t0
                    after = bpf_prog_stats(os.getpid())
                    delta = {k: (after[k][0] - before.get(k, (0, 0))[0], after[k][1] - before.get(k, (0, 0))[1])
                             for k in after}
                    rows.append((case, wall, delta))
                    probes.drain_dns()
                counters = probes.counters()
            finally:
                probes.close()
    finally:
        stats_file.write_text(was)
        resolver.terminate()
        resolver.wait(5)
        echo.close()
        for lst in listeners:
            lst.close()
    print(f"kernel {os.uname().release}, {args.n} requests per case, one after the other; ns per program run "
          "(run_time_ns / run_cnt) and per request")
    base_in = 0.0
    for case, wall, delta in rows:
        ing_t, ing_n = delta.get("mn_skb_ingress", (0, 0))
        eg_t, eg_n = delta.get("mn_skb_egress", (0, 0))
        so_t, so_n = delta.get("mn_sockops", (0, 0))
        if case == "udp":
            base_in = ing_t / max(1, ing_n)
        line = (f"{case:10} ingress {ing_t / max(1, ing_n):7.0f} ns x {ing_n:6}  "
                f"egress {eg_t / max(1, eg_n):6.0f} ns x {eg_n:6}  "
                f"sockops/request {so_t / args.n:6.0f} ns ({so_n} runs)  wall {wall:5.2f} s")
        if case.startswith("dns"):
            line += f"  parser: +{ing_t / max(1, ing_n) - base_in:.0f} ns an answer over udp"
        print(line)
    print("counters:", {k: v for k, v in counters.items() if k.startswith("dns")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
