"""A server slow to answer and a path slow to carry, in the lab, told apart by blame from the flows the eBPF
sensor timed.

Clients on hosts a and c (two processes each, ``api`` and ``worker``) call two services on host b, six
calls per process and service. First, b's service on one port sleeps 200 ms before each answer: blame
names that service, slow to answer. Then what b receives is rate-limited with tbf (on the bridge's side of
its link, so the queue is on the path, not in a sender's own qdisc) while b answers at once and the clients
upload 32 KiB a call: blame names host b, slow to carry, and no flow reads as a slow server, though each
exchange takes hundreds of ms (the kernel splits it at the request's last ACK). One sensor, scoped to the
lab's cgroup, sees every host's flows.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from tests._support import traffic as t
from tests._support.env import require_kernel

CALLS = 5

SERVER = r"""
import json, socket, struct, sys, threading, time
ports = [int(p) for p in sys.argv[1].split(",")]
delays = [float(d) for d in sys.argv[2].split(",")]

def exactly(c, n):
    buf = bytearray()
    while len(buf) < n:
        d = c.recv(min(1 << 16, n - len(buf)))
        if not d:
            return None
        buf += d
    return buf

def serve(c, delay):
    with c:
        while True:
            head = exactly(c, 4)
            if head is None or exactly(c, struct.unpack("!I", head)[0]) is None:
                return
            time.sleep(delay)
            c.sendall(b"a" * 1000)

def accept(s, delay):
    while True:
        c, _ = s.accept()
        threading.Thread(target=serve, args=(c, delay), daemon=True).start()

for port, delay in zip(ports, delays):
    s = socket.create_server(("0.0.0.0", port), backlog=64)
    threading.Thread(target=accept, args=(s, delay), daemon=True).start()
print(json.dumps({"ready": True}), flush=True)
time.sleep(600)
"""

# argv: address, ports, calls per port, request bytes, process name. One thread per port, calls in turn.
CLIENT = r"""
import json, os, socket, struct, sys, threading
addr, ports, calls, size, name = sys.argv[1], [int(p) for p in sys.argv[2].split(",")], int(sys.argv[3]), \
    int(sys.argv[4]), sys.argv[5]
with open("/proc/self/comm", "w") as f:
    f.write(name)

def work(port):
    for _ in range(calls):
        with socket.create_connection((addr, port), timeout=30) as c:
            c.sendall(struct.pack("!I", size) + b"q" * size)
            got = 0
            while got < 1000:
                d = c.recv(1 << 16)
                if not d:
                    raise SystemExit("answer cut short")
                got += len(d)

threads = [threading.Thread(target=work, args=(p,)) for p in ports]
for th in threads:
    th.start()
for th in threads:
    th.join()
print(json.dumps({"pid": os.getpid(), "comm": name}), flush=True)
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    require_kernel()
    from meshnode.lab import Lab

    with Lab(3) as lab:
        yield lab


@pytest.fixture(scope="module")
def sensor(lab: Any) -> Iterator[Any]:
    from meshnode.sensor._ebpf import EbpfSensor

    s = EbpfSensor(scope=lab.cgroup_rel)
    s.start()
    try:
        yield s
    finally:
        s.close()


def _run(lab: Any, sensor: Any, ports: tuple[int, int], delays: tuple[float, float], size: int) -> Any:
    """Serve ``ports`` on b, run the four client processes, and blame their outbound flows."""
    from meshnode.diagnosis import Place, blame, transactions_from_flows

    a, b, c = lab["a"], lab["b"], lab["c"]
    server = t.start(b, SERVER, ",".join(map(str, ports)), ",".join(map(str, delays)))
    try:
        t.wait_ready(server)
        clients = [t.start(h, CLIENT, b.ip, ",".join(map(str, ports)), CALLS, size, name)
                   for h in (a, c) for name in ("api", "worker")]
        for proc in clients:
            t.result(proc, timeout=60)
    finally:
        server.kill()
        server.communicate()
    want = 2 * 2 * 2 * CALLS
    flows: list[Any] = []
    deadline = time.monotonic() + 10
    while len(flows) < want and time.monotonic() < deadline:
        flows += [f for f in sensor.poll().ended
                  if f.direction == "outbound" and f.dst == b.ip and f.dport in ports]
        time.sleep(0.05)
    assert len(flows) == want
    members = {b.ip: Place("b", "", "")}
    txns = []
    for host in (a, c):
        mine = [f for f in flows if f.src == host.ip]
        assert len(mine) == want // 2 and all(f.responses == 1 for f in mine), mine
        txns += transactions_from_flows(mine, labels={"host": host.name}, members=members)
    return flows, txns, blame(txns)


def test_a_server_that_sleeps_is_slow_to_answer(lab: Any, sensor: Any) -> None:
    b = lab["b"]
    flows, txns, report = _run(lab, sensor, (28080, 28081), (0.0, 0.2), 100)
    slow = [f for f in flows if f.dport == 28081]
    assert all(200_000 <= f.answer_us_sum <= f.response_us_sum < 400_000 and f.max_rtt_us < 20_000
               for f in slow), slow
    assert {x.kind for x in txns if x.dport == 28081} == {"slow_server"}
    # the other service answers at once: a stray slow answer at most (a Python server thread kept off the
    # CPU for 100 ms on a busy machine answered late, truly)
    fast = Counter(x.kind for x in txns if x.dport == 28080)
    assert fast["ok"] >= 18 and set(fast) <= {"ok", "slow_server"}, fast
    top = report.suspects[0]
    assert (top.kind, top.name, top.shared) == ("service", f"{b.ip}:28081", True)
    assert top.verdict.startswith(f"service b:28081 ({b.ip}) is slow to answer: 100% of 20 transactions "
                                  "from 2 hosts"), top.verdict
    assert len(report.suspects) == 1


def test_a_rate_limited_path_is_slow_to_carry(lab: Any, sensor: Any) -> None:
    b = lab["b"]
    with b.rate("4mbit", direction="in"):
        flows, txns, report = _run(lab, sensor, (28090, 28091), (0.0, 0.0), 32 * 1024)
    kinds = Counter(x.kind for x in txns)
    # slow exchanges, but not slow answers: at most a stray one (a Python server thread starved of the CPU
    # on a busy machine for 100 ms is a slow answer, truly)
    assert max(f.response_us_sum for f in flows) >= 200_000
    assert kinds["slow_server"] <= 2 and set(kinds) <= {"ok", "retransmits", "slow_path", "slow_connect",
                                                        "slow_server"}, (kinds, flows)
    top = report.suspects[0]
    assert (top.kind, top.name, top.shared) == ("dst_host", "b", True), report
    assert top.verdict.startswith(f"destination host b ({b.ip}) is slow to carry: "), top.verdict
    assert top.stats.problem_kinds.get("slow_server", 0) <= 2, top.stats
