"""The eBPF sensor against real traffic between lab hosts: exact bytes, outcomes, owners, retransmits,
scoping. Each lab host has its own sensor scoped to the host's cgroup, as a node on that host would."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshnode._model import FlowRecord
from tests._support import traffic as t
from tests._support.env import require_kernel

N_UP = 1_234_567
N_DOWN = 7_654_321


class Collector:
    """A sensor plus every flow and event it reported, polled on demand."""

    def __init__(self, sensor: Any) -> None:
        self.sensor = sensor
        self.flows: list[FlowRecord] = []
        self.events: list[Any] = []

    def poll(self) -> None:
        batch = self.sensor.poll()
        self.flows.extend(batch.ended)
        self.events.extend(batch.events)

    def wait_for(self, pred: Callable[[FlowRecord], bool], count: int = 1, timeout: float = 10.0) -> list[FlowRecord]:
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            found = [f for f in self.flows if pred(f)]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    require_kernel()
    from meshnode.lab import Lab

    with Lab(3) as lab:
        yield lab


@pytest.fixture(scope="module")
def sensors(lab: Any) -> Iterator[dict[str, Collector]]:
    from meshnode.sensor._ebpf import EbpfSensor

    out = {}
    try:
        for name in ("a", "b", "c"):
            s = EbpfSensor(scope=lab[name].cgroup_rel, idle_timeout_s=2.0, halfopen_timeout_s=3.0)
            s.start()
            out[name] = Collector(s)
        yield out
    finally:
        for c in out.values():
            c.sensor.close()


def _port() -> Iterator[int]:
    n = 20000
    while True:
        n += 1
        yield n


PORTS = _port()


@pytest.mark.parametrize("family", ["4", "6"])
def test_exact_bytes_both_ends(lab: Any, sensors: dict[str, Collector], family: str) -> None:
    a, b = lab["a"], lab["b"]
    port = next(PORTS)
    dst = b.ip if family == "4" else b.ip6
    server = t.start(b, t.TCP_SERVER, family, port, N_UP, N_DOWN)
    t.wait_ready(server)
    client = t.start(a, t.TCP_CLIENT, dst, port, N_UP)
    cres, sres = t.result(client), t.result(server)
    assert (cres["sent"], cres["received"], sres["received"]) == (N_UP, N_DOWN, N_UP)

    out = sensors["a"].wait_for(lambda f: f.proto == "tcp" and f.dport == port)
    inn = sensors["b"].wait_for(lambda f: f.proto == "tcp" and f.sport == port)
    assert len(out) == 1 and len(inn) == 1, (out, inn)
    o, i = out[0], inn[0]
    assert (o.direction, o.outcome, o.bytes_tx, o.bytes_rx) == ("outbound", "established", N_UP, N_DOWN)
    assert (i.direction, i.outcome, i.bytes_tx, i.bytes_rx) == ("inbound", "established", N_DOWN, N_UP)
    assert (o.src, o.sport, o.dst, o.dport) == (i.dst, i.dport, i.src, i.sport)
    assert o.dst == dst
    # the two ends agree on packets too: what one sent, the other received (no loss on the lab bridge)
    assert o.packets_tx == i.packets_rx and o.packets_rx == i.packets_tx, (o, i)
    # owner: the child process that made the connection, and the host's cgroup
    assert o.pid == cres["pid"] and o.comm == cres["comm"]
    assert o.cgroup == a.cgroup_rel and i.cgroup == b.cgroup_rel
    assert i.pid == server.pid
    assert o.srtt_us > 0 and o.min_rtt_us > 0 and o.cwnd > 0 and o.connect_us > 0
    assert o.start_ns <= o.end_ns and abs(o.end_ns - time.time_ns()) < 30e9


def test_refused(lab: Any, sensors: dict[str, Collector]) -> None:
    a, b = lab["a"], lab["b"]
    port = next(PORTS)  # nothing listens there
    res = t.result(t.start(a, t.TCP_CONNECT, b.ip, port, 2))
    assert res["result"] == "ECONNREFUSED"
    (f,) = sensors["a"].wait_for(lambda f: f.dport == port)
    assert (f.outcome, f.direction, f.pid, f.resets_rx, f.bytes_tx) == ("refused", "outbound", res["pid"], 1, 0)
    assert any(e.type == "connect_failed" and e.flow.dport == port for e in sensors["a"].events)


def test_a_socket_connecting_again_after_a_refusal_is_two_flows(lab: Any, sensors: dict[str, Collector]) -> None:
    """Linux lets a socket whose connect failed connect again: the refused attempt and the established one
    are two flows (one socket cookie), each with its own outcome and bytes, and no map is reported full."""
    a, b = lab["a"], lab["b"]
    closed, port = next(PORTS), next(PORTS)
    sink = t.start(b, t.TCP_SINK, port)
    t.wait_ready(sink)
    full_before = sensors["a"].sensor.counters()["tcp_map_full"]
    try:
        res = t.result(t.start(a, t.TCP_RECONNECT, b.ip, closed, port, 4321))
    finally:
        sink.kill()
    (refused,) = sensors["a"].wait_for(lambda f: f.proto == "tcp" and f.dport == closed)
    (ok,) = sensors["a"].wait_for(lambda f: f.proto == "tcp" and f.dport == port)
    assert (refused.outcome, refused.bytes_tx, refused.bytes_rx, refused.pid) == ("refused", 0, 0, res["pid"])
    assert (ok.outcome, ok.bytes_tx, ok.bytes_rx, ok.pid) == ("established", 4321, 0, res["pid"])
    assert sensors["a"].sensor.counters()["tcp_map_full"] == full_before


def test_timeout_when_syn_dropped(lab: Any, sensors: dict[str, Collector]) -> None:
    a, b = lab["a"], lab["b"]
    port = next(PORTS)
    server = t.start(b, t.TCP_SERVER, "4", port, 1, 1)
    t.wait_ready(server)
    with b.drop(peer=a):
        res = t.result(t.start(a, t.TCP_CONNECT, b.ip, port, 1.5))
    server.kill()
    assert res["result"] == "timeout"
    (f,) = sensors["a"].wait_for(lambda f: f.dport == port)
    assert (f.outcome, f.bytes_tx, f.bytes_rx, f.resets_rx) == ("timeout", 0, 0, 0)
    assert f.retransmits >= 1  # the SYN was retransmitted within 1.5 s
    assert not sensors["b"].wait_for(lambda f: f.sport == port, timeout=0.5)


def test_inbound_half_open_reset(lab: Any, sensors: dict[str, Collector]) -> None:
    """a's SYN reaches b's listener; b's SYN-ACK is answered with a RST by a's firewall: b saw a
    handshake cut by a reset (Zeek RSTRH), a saw its SYN go unanswered."""
    a, b = lab["a"], lab["b"]
    port = next(PORTS)
    server = t.start(b, t.TCP_SERVER, "4", port, 1, 1)
    t.wait_ready(server)
    with a.reject(peer=b, direction="in"):
        res = t.result(t.start(a, t.TCP_CONNECT, b.ip, port, 1.5))
    server.kill()
    assert res["result"] == "timeout"
    (inb,) = sensors["b"].wait_for(lambda f: f.sport == port, timeout=3)  # SYN retransmits: still one
    assert (inb.direction, inb.outcome, inb.dst, inb.cgroup) == ("inbound", "reset", a.ip, b.cgroup_rel)
    (outb,) = sensors["a"].wait_for(lambda f: f.dport == port)
    assert outb.outcome == "timeout"


def test_udp_answered_and_unanswered(lab: Any, sensors: dict[str, Collector]) -> None:
    a, b = lab["a"], lab["b"]
    port = next(PORTS)
    echo = t.start(b, t.UDP_ECHO, "4", port)
    t.wait_ready(echo)
    ok = t.result(t.start(a, t.UDP_QUERY, b.ip, port, 100, 2))
    lost = t.result(t.start(a, t.UDP_QUERY, b.ip, port + 1000, 50, 0.5))  # nobody there
    assert ok["received"] == 300 and lost["received"] == 0
    (q,) = sensors["a"].wait_for(lambda f: f.proto == "udp" and f.dport == port)
    assert (q.outcome, q.direction, q.bytes_tx, q.bytes_rx, q.packets_tx, q.packets_rx, q.pid) == (
        "udp_answered", "outbound", 100, 300, 1, 1, ok["pid"])
    assert q.connect_us > 0  # first request to first answer
    (u,) = sensors["a"].wait_for(lambda f: f.proto == "udp" and f.dport == port + 1000)
    assert (u.outcome, u.bytes_tx, u.bytes_rx, u.pid) == ("udp_unanswered", 50, 0, lost["pid"])
    echo.kill()
    echo.wait()
    (srv,) = sensors["b"].wait_for(lambda f: f.proto == "udp" and f.sport == port)
    assert (srv.direction, srv.outcome, srv.bytes_rx, srv.bytes_tx, srv.pid) == (
        "inbound", "udp_answered", 100, 300, echo.pid)


def _retrans_segs(host: Any) -> int:
    snmp = host.run(["cat", "/proc/net/snmp"]).stdout
    tcp = [ln.split() for ln in snmp.splitlines() if ln.startswith("Tcp:")]
    return int(tcp[1][tcp[0].index("RetransSegs")])


def test_retransmits_match_kernel_counter(lab: Any, sensors: dict[str, Collector]) -> None:
    """20 % random loss on a bulk upload: the flow's retransmits equal the netns' TcpRetransSegs delta.

    The loss sits on the receiver's input: a drop in the sender's own output hook is reported back to TCP,
    which keeps the segment queued and sends it later without counting a retransmission."""
    a, c = lab["a"], lab["c"]
    port = next(PORTS)
    sink = t.start(c, t.TCP_SINK, port)
    t.wait_ready(sink)
    before = _retrans_segs(a)
    with c.loss(20, peer=a, direction="in"):
        res = t.result(t.start(a, t.TCP_BULK, c.ip, port, 2_000_000), timeout=120)
    after = _retrans_segs(a)
    sink.kill()
    flows = sensors["a"].wait_for(lambda f: f.dport == port and f.pid == res["pid"])
    assert len(flows) == 1
    assert flows[0].bytes_tx == 2_000_000
    assert flows[0].retransmits > 0
    assert sum(f.retransmits for f in sensors["a"].flows if f.start_ns and f.dport == port) == after - before
    assert any(e.type == "retransmit_burst" and e.flow.dport == port for e in sensors["a"].events)


def test_scoped_sensors_are_disjoint(lab: Any, sensors: dict[str, Collector]) -> None:
    """Traffic b→c and c→a: each sensor reports only its own host's sockets."""
    a, b, c = lab["a"], lab["b"], lab["c"]
    p1, p2 = next(PORTS), next(PORTS)
    s1 = t.start(c, t.TCP_SERVER, "4", p1, 1000, 2000)
    s2 = t.start(a, t.TCP_SERVER, "4", p2, 3000, 4000)
    t.wait_ready(s1)
    t.wait_ready(s2)
    t.result(t.start(b, t.TCP_CLIENT, c.ip, p1, 1000))
    t.result(t.start(c, t.TCP_CLIENT, a.ip, p2, 3000))
    t.result(s1)
    t.result(s2)
    for name in ("a", "b", "c"):
        sensors[name].wait_for(lambda f: f.dport in (p1, p2) or f.sport in (p1, p2), count=1, timeout=3)
    seen = {name: {(f.src, f.sport, f.dst, f.dport) for f in col.flows} for name, col in sensors.items()}
    assert not (seen["a"] & seen["b"]) and not (seen["b"] & seen["c"]) and not (seen["a"] & seen["c"])
    for name, col in sensors.items():
        host_ips = {lab[name].ip, lab[name].ip6}
        assert all(f.src in host_ips for f in col.flows), [f for f in col.flows if f.src not in host_ips]
        assert all(f.cgroup == lab[name].cgroup_rel for f in col.flows if f.cgroup)
    assert [f.bytes_tx for f in sensors["b"].flows if f.dport == p1] == [1000]
    assert [f.bytes_rx for f in sensors["c"].flows if f.sport == p1] == [1000]
    assert [f.bytes_tx for f in sensors["c"].flows if f.dport == p2] == [3000]


def test_completeness_nothing_lost(sensors: dict[str, Collector]) -> None:
    for col in sensors.values():
        counters = col.sensor.counters()
        assert counters["ringbuf_full"] == 0
        assert all(counters[k] == 0 for k in counters if k.endswith("_full")), counters


def test_capture_cli_json_and_diag_fallback(lab: Any) -> None:
    """`meshnode capture` on a lab host: eBPF JSON lines with exact bytes; the diag sensor on the same
    scenario reports the long-lived flow with fidelity "polled"."""
    import json

    a, b = lab["a"], lab["b"]
    port = next(PORTS)
    meshnode = [".venv/bin/meshnode"]
    sink = t.start(b, t.TCP_SINK, port)
    t.wait_ready(sink)
    cap = a.popen([*meshnode, "capture", "--json", "--duration", "5", "--cgroup", a.cgroup_rel],
                  stdout=-1, stderr=-1, text=True)
    assert cap.stderr is not None
    assert "sensor" in cap.stderr.readline()  # attached (compiling takes seconds: diag's 5 s start after it)
    diag = a.popen([*meshnode, "capture", "--json", "--duration", "5", "--sensor", "diag", "--cgroup",
                    a.cgroup_rel, "--interval", "0.2"], stdout=-1, stderr=-1, text=True)
    assert diag.stderr is not None
    assert "sensor" in diag.stderr.readline()
    slow = a.python(
        "import socket, sys, time\n"
        f"c = socket.create_connection(('{b.ip}', {port}))\n"
        "for _ in range(10):\n    c.sendall(b'w' * 1000); time.sleep(0.1)\n"
        "time.sleep(30)\n", stdout=-1, stderr=-1)
    time.sleep(2)
    out, err = cap.communicate(timeout=30)
    dout, derr = diag.communicate(timeout=30)
    slow.kill()
    sink.kill()
    assert cap.returncode == 0, err
    lines = [json.loads(ln) for ln in out.splitlines()]
    assert "completeness" in lines[-1] and lines[-1]["completeness"]["lost_events"] == 0
    mine = [ln for ln in lines[:-1] if ln.get("dport") == port]
    assert mine and mine[0]["bytes_tx"] == 10_000 and mine[0]["kind"] == "interim"
    assert set(mine[0]) >= {"src", "sport", "dst", "dport", "proto", "direction", "pid", "comm", "cgroup",
                            "netns", "start_ns", "end_ns", "bytes_tx", "bytes_rx", "packets_tx",
                            "packets_rx", "outcome", "retransmits", "srtt_us", "min_rtt_us", "cwnd",
                            "limited_by"}
    assert re.search(r"flows; lost 0", err) or err == "", err
    assert diag.returncode == 0, derr
    dlines = [json.loads(ln) for ln in dout.splitlines()]
    dmine = [ln for ln in dlines[:-1] if ln.get("dport") == port]
    assert dmine and all(ln["fidelity"] == "polled" for ln in dmine), dlines
    assert dmine[0]["bytes_tx"] == 10_000 and dmine[0]["pid"] == slow.pid


UDP_DEAF = r"""
import json, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048); s.bind(("0.0.0.0", int(sys.argv[1])))
print(json.dumps({"ready": True}), flush=True)
time.sleep(30)
"""

UDP_BLAST = r"""
import json, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for _ in range(300): s.sendto(b"b" * 1000, (sys.argv[1], int(sys.argv[2])))
s.close(); print(json.dumps({"sent": 300}), flush=True)
"""


def test_drops_attributed_to_the_socket_with_the_kernels_reason(lab: Any, sensors: dict[str, Collector]) -> None:
    """A UDP receiver that never reads, with a 2 KiB buffer: the kernel drops at the socket, and the
    receiving flow carries the drops under the reason name read from the running kernel."""
    a, b = lab["a"], lab["b"]
    port = next(PORTS)
    deaf = t.start(b, UDP_DEAF, port)
    t.wait_ready(deaf)
    t.result(t.start(a, UDP_BLAST, b.ip, port))
    deadline = time.monotonic() + 5
    drops: list[Any] = []
    while not drops and time.monotonic() < deadline:
        sensors["b"].poll()
        drops = [e for e in sensors["b"].events if e.type == "drop" and e.flow.sport == port]
        time.sleep(0.1)
    deaf.kill()
    deaf.wait()
    assert drops, "no drop event for the deaf socket"
    assert all(e.detail == "SOCKET_RCVBUFF" and e.value >= 1 for e in drops), drops
    (flow,) = sensors["b"].wait_for(lambda f: f.proto == "udp" and f.sport == port)
    assert flow.packets_rx == 300  # the cgroup-skb hook counts each datagram before the socket drops it
    assert flow.drops >= 250 and flow.drop_reasons.get("SOCKET_RCVBUFF") == flow.drops
    assert sum(e.value for e in drops) <= flow.drops


def test_rtt_shift_under_a_rate_limit(lab: Any, sensors: dict[str, Collector]) -> None:
    """A bulk upload through a 4 Mbit/s tbf queue: the smoothed RTT climbs from microseconds to
    milliseconds, and the sensor reports the shift as an event on that flow."""
    a, c = lab["a"], lab["c"]
    port = next(PORTS)
    sink = t.start(c, t.TCP_SINK, port)
    t.wait_ready(sink)
    with a.rate("4mbit", peer=c):
        res = t.result(t.start(a, t.TCP_BULK, c.ip, port, 1_500_000), timeout=60)
    sink.kill()
    (flow,) = sensors["a"].wait_for(lambda f: f.dport == port and f.pid == res["pid"])
    assert flow.max_rtt_us >= 2000 and flow.max_rtt_us >= 4 * flow.min_rtt_us, flow
    shifts = [e for e in sensors["a"].events if e.type == "rtt_shift" and e.flow.dport == port]
    assert shifts and shifts[0].value >= 2000 and "->" in shifts[0].detail


RESET_SERVER = r"""
import json, socket, struct, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(1)
print(json.dumps({"ready": True}), flush=True)
c, _ = s.accept()
c.sendall(b"d" * int(sys.argv[2]))
got = 0
while got < int(sys.argv[3]):
    got += len(c.recv(min(1 << 16, int(sys.argv[3]) - got)))
c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
c.close()  # a RST while the client is still sending
print(json.dumps({"received": got}), flush=True)
"""

RESET_CLIENT = r"""
import json, os, socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=30)
got = 0
while got < int(sys.argv[3]):
    got += len(c.recv(1 << 16))
sent = 0
try:
    while True:  # until the server's RST: what send() took is what the application wrote
        sent += c.send(b"u" * 65536)
except OSError as exc:
    err = exc.errno
c.close()
print(json.dumps({"pid": os.getpid(), "sent": sent, "received": got, "errno": err}), flush=True)
"""


def test_exact_bytes_when_a_reset_cuts_the_transfer(lab: Any, sensors: dict[str, Collector]) -> None:
    """A download, then an upload that the server cuts with a RST (SO_LINGER 0) after 3 MB while the
    client keeps writing: each end's bytes are exactly what its application wrote and read, and the RST
    is counted at both ends."""
    a, b = lab["a"], lab["b"]
    port = next(PORTS)
    down, cut = 2_345_678, 3_000_000
    server = t.start(b, RESET_SERVER, port, down, cut)
    t.wait_ready(server)
    cres, sres = t.result(t.start(a, RESET_CLIENT, b.ip, port, down)), t.result(server)
    assert cres["received"] == down and sres["received"] == cut and cres["sent"] >= cut, (cres, sres)
    (o,) = sensors["a"].wait_for(lambda f: f.proto == "tcp" and f.dport == port)
    (i,) = sensors["b"].wait_for(lambda f: f.proto == "tcp" and f.sport == port)
    assert (o.outcome, o.bytes_tx, o.bytes_rx, o.pid) == ("established", cres["sent"], down, cres["pid"]), o
    assert (i.outcome, i.bytes_tx, i.bytes_rx) == ("established", down, cut), i
    assert o.resets_rx >= 1 and i.resets_tx >= 1, (o, i)
