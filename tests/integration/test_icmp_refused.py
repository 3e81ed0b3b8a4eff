"""ICMP errors joined to flows and inbound attempts to closed ports, with the real eBPF sensor.

Loopback: a TCP connect and a UDP datagram to closed ports become inbound ``refused`` flows aggregated per
source in the kernel, and a sweep of 500 closed ports from one source is one map entry that names the
scanner. Lab: an ``unreachable`` route on a site router and a low-MTU uplink give the flows of a host behind
it ICMP host-unreachable and fragmentation-needed errors, the MTU with them.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from meshnode import health as health_mod
from meshnode._model import FlowRecord
from tests._support.env import require_kernel

CLOSED = "127.77.0.1"   # nothing listens on this loopback address
SCANNER = "127.77.0.9"  # the sweep's source address


class Collector:
    """A sensor plus every flow and event it reported."""

    def __init__(self, sensor: Any) -> None:
        self.sensor = sensor
        self.flows: list[FlowRecord] = []
        self.events: list[Any] = []

    def wait_for(self, pred: Callable[[FlowRecord], bool], timeout: float = 8.0) -> list[FlowRecord]:
        deadline = time.monotonic() + timeout
        while True:
            batch = self.sensor.poll()
            self.flows.extend(batch.ended)
            self.events.extend(batch.events)
            found = [f for f in self.flows if pred(f)]
            if found or time.monotonic() > deadline:
                return found
            time.sleep(0.1)


@pytest.fixture(scope="module")
def host_sensor() -> Iterator[Collector]:
    require_kernel()
    from meshnode.sensor._ebpf import EbpfSensor

    s = EbpfSensor(scope="/", udp_scan_interval_s=0.2)
    s.start()
    try:
        yield Collector(s)
    finally:
        s.close()


def test_closed_ports_on_loopback_are_inbound_refused_per_source(host_sensor: Collector) -> None:
    c = socket.socket()
    c.bind(("127.77.0.2", 0))
    with pytest.raises(ConnectionRefusedError):
        c.connect((CLOSED, 7))
    tcp_port = c.getsockname()[1]
    c.close()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.77.0.3", 0))
    u.sendto(b"x", (CLOSED, 9))
    udp_port = u.getsockname()[1]

    tcp = host_sensor.wait_for(lambda f: f.src == CLOSED and f.dst == "127.77.0.2" and f.direction == "inbound")
    udp = host_sensor.wait_for(lambda f: f.src == CLOSED and f.dst == "127.77.0.3" and f.direction == "inbound")
    assert [(f.proto, f.sport, f.dport, f.outcome, f.attempts, f.ports_probed, f.service) for f in tcp] == [
        ("tcp", 7, tcp_port, "refused", 1, 1, "echo")]
    assert [(f.proto, f.sport, f.dport, f.outcome, f.attempts, f.ports_probed) for f in udp] == [
        ("udp", 9, udp_port, "refused", 1, 1)]
    # the sender's own flow got the port unreachable that answered it, and an event said so
    sent = host_sensor.wait_for(lambda f: f.proto == "udp" and f.src == "127.77.0.3" and f.direction == "outbound",
                                timeout=0.5)
    u.close()
    sent = sent or host_sensor.wait_for(lambda f: f.proto == "udp" and f.src == "127.77.0.3"
                                        and f.direction == "outbound")
    assert [(f.dst, f.dport, f.icmp_unreachable, f.icmp_unreachable_code) for f in sent] == [(CLOSED, 9, 1, 3)]
    events = [(e.type, e.detail) for e in host_sensor.events if e.flow.src == "127.77.0.3"]
    assert events == [("icmp_unreachable", "port")]


def test_ipv6_closed_tcp_port_and_udp_port_unreachable(host_sensor: Collector) -> None:
    c = socket.socket(socket.AF_INET6)
    with pytest.raises(ConnectionRefusedError):
        c.connect(("::1", 13))
    tcp_port = c.getsockname()[1]
    c.close()
    u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    u.sendto(b"x", ("::1", 17))
    udp_port = u.getsockname()[1]
    time.sleep(0.1)
    u.close()  # its flow ends now, with the ICMPv6 port unreachable it got (code 4, given as ICMPv4's 3)
    refused = host_sensor.wait_for(lambda f: f.direction == "inbound" and f.dport == tcp_port and f.dst == "::1")
    assert [(f.proto, f.sport, f.outcome, f.attempts) for f in refused] == [("tcp", 13, "refused", 1)]
    sent = host_sensor.wait_for(lambda f: f.proto == "udp" and f.sport == udp_port and f.dst == "::1")
    assert [(f.dport, f.outcome, f.icmp_unreachable, f.icmp_unreachable_code) for f in sent] == [
        (17, "udp_unanswered", 1, 3)]


def test_a_sweep_of_500_closed_ports_is_one_entry_and_names_the_scanner(host_sensor: Collector) -> None:
    for port in range(20000, 20500):
        c = socket.socket()
        c.bind((SCANNER, 0))
        with contextlib.suppress(ConnectionRefusedError):
            c.connect((CLOSED, port))
        c.close()
    entries = [r for r in host_sensor.sensor._probes.refused() if r.dst == SCANNER]
    assert [(r.src, r.attempts, r.ports) for r in entries] == [(CLOSED, 500, 500)]
    found = host_sensor.wait_for(lambda f: f.dst == SCANNER and f.direction == "inbound")
    assert [(f.outcome, f.attempts, f.ports_probed, f.sport) for f in found] == [("refused", 500, 500, 20499)]
    scans = health_mod.scan_patterns(host_sensor.flows)
    assert [(s.src, s.ports, s.failures) for s in scans if s.src == SCANNER] == [(SCANNER, 500, 500)]
    host = health_mod.host_health(found)
    for outcome, n in health_mod.scan_flow_outcomes(found, scans).items():
        host.remove_count(outcome, n)
    assert (host.attempts, host.failures) == (0, {})


# ---- lab: ICMP from a router -----------------------------------------------------------------------------

CLONE_NEWNET = 0x40000000


def _in_netns(name: str, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with this thread in network namespace ``name`` (what it opens there stays there)."""
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    back = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns")
        try:
            return fn()
        finally:
            libc.setns(back, CLONE_NEWNET)
    finally:
        os.close(back)
        os.close(there)


@pytest.fixture(scope="module")
def sites() -> Iterator[tuple[Any, Collector]]:
    require_kernel()
    from meshnode.lab import Lab
    from meshnode.sensor._ebpf import EbpfSensor

    with Lab(sites={"east": ["a"], "west": ["b"]}) as lab:
        s = EbpfSensor(scope=lab["a"].cgroup_rel, udp_scan_interval_s=0.2)
        _in_netns(lab["a"].netns, s.start)  # its raw ICMP sockets belong to host a's namespace
        try:
            yield lab, Collector(s)
        finally:
            s.close()


def _ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)


def test_icmp_host_unreachable_from_a_router_is_joined_to_the_flow(sites: tuple[Any, Collector]) -> None:
    lab, col = sites
    b = lab["b"].addresses()[0]
    router = lab.sites["east"].netns
    _ip(router, "route", "add", "unreachable", f"{b}/32")
    try:
        client = lab["a"].python(
            "import socket, sys\ns = socket.socket()\ns.settimeout(5)\n"
            "try:\n    s.connect((sys.argv[1], 8081))\nexcept OSError as e:\n    print(e.errno)\n", b,
            stdout=subprocess.PIPE, text=True)
        out, _ = client.communicate(timeout=10)
    finally:
        _ip(router, "route", "del", "unreachable", f"{b}/32")
    assert out.strip() == "113"  # EHOSTUNREACH
    flows = col.wait_for(lambda f: f.dst == b and f.dport == 8081)
    assert [(f.proto, f.outcome, f.icmp_unreachable, f.icmp_unreachable_code) for f in flows] == [
        ("tcp", "timeout", 1, 1)]
    assert [(e.type, e.detail) for e in col.events if e.flow.dst == b and e.flow.dport == 8081] == [
        ("icmp_unreachable", "host"), ("connect_failed", "timeout")]


def test_fragmentation_needed_on_a_narrow_uplink_shows_the_mtu(sites: tuple[Any, Collector]) -> None:
    from meshnode.lab._names import UPLINK_IFACE

    lab, col = sites
    b4, b6 = lab["b"].addresses()
    sink = lab["b"].python(  # one dual-stack listener: IPv4 (fragmentation needed), IPv6 (packet too big)
        "import socket\ns = socket.socket(socket.AF_INET6)\ns.bind(('::', 8082))\ns.listen(8)\n"
        "while True:\n    c, _ = s.accept()\n    while c.recv(1 << 20): pass\n    c.close()\n")
    lab["b"].wait_listening(8082)
    router = lab.sites["east"].netns
    _ip(router, "link", "set", "dev", UPLINK_IFACE, "mtu", "1280")
    try:
        client = lab["a"].python(
            "import socket, sys\nfor dst in sys.argv[1:]:\n"
            "    s = socket.create_connection((dst, 8082), timeout=10)\n    s.sendall(b'x' * 200000)\n"
            "    s.close()\n", b4, b6)
        assert client.wait(timeout=20) == 0
    finally:
        _ip(router, "link", "set", "dev", UPLINK_IFACE, "mtu", "1500")
        sink.kill()
        sink.wait()
    flows = col.wait_for(lambda f: f.dst == b6 and f.dport == 8082)
    flows = sorted((f for f in col.flows if f.dport == 8082), key=lambda f: f.dst != b4)
    # IPv4: the router's next-hop MTU; IPv6: packet too big with 1280, the IPv6 minimum
    assert [(f.dst, f.outcome, f.bytes_tx, f.path_mtu) for f in flows] == [
        (b4, "established", 200000, 1280), (b6, "established", 200000, 1280)]
    assert all(f.icmp_frag_needed >= 1 for f in flows)
    assert [(p.destination, p.mtu) for p in health_mod.path_mtu_problems(flows)] == [
        (f"{b4}:8082", 1280), (f"[{b6}]:8082", 1280)]
    assert {("frag_needed", "mtu 1280", dst) for dst in (b4, b6)} <= {
        (e.type, e.detail, e.flow.dst) for e in col.events}


def test_capture_json_lines_carry_a_flows_icmp_errors(sites: tuple[Any, Collector]) -> None:
    """``meshnode capture --json``'s poll (``poll_json``): an established flow that met fragmentation-needed
    errors shows them and the MTU in its line (its C fast path writes zeros there; such a flow leaves it)."""
    import json

    from meshnode.lab._names import UPLINK_IFACE

    lab, col = sites
    b4 = lab["b"].addresses()[0]
    sink = lab["b"].python(
        "import socket\ns = socket.create_server(('0.0.0.0', 8083))\n"
        "while True:\n    c, _ = s.accept()\n    while c.recv(1 << 20): pass\n    c.close()\n")
    lab["b"].wait_listening(8083)
    router = lab.sites["east"].netns
    _ip(lab["a"].netns, "route", "flush", "cache")  # a path MTU learnt before would spare the router's errors
    _ip(router, "link", "set", "dev", UPLINK_IFACE, "mtu", "1280")
    try:
        client = lab["a"].python(
            "import socket, sys\ns = socket.create_connection((sys.argv[1], 8083), timeout=10)\n"
            "s.sendall(b'x' * 200000)\ns.close()\n", b4)
        assert client.wait(timeout=20) == 0
    finally:
        _ip(router, "link", "set", "dev", UPLINK_IFACE, "mtu", "1500")
        sink.kill()
        sink.wait()
    lines: list[dict[str, Any]] = []
    deadline = time.monotonic() + 8
    while not [ln for ln in lines if ln["dport"] == 8083] and time.monotonic() < deadline:
        lines += [json.loads(ln) for ln in col.sensor.poll_json().text.splitlines()]
        time.sleep(0.1)
    flows = [ln for ln in lines if ln["dport"] == 8083]
    assert [(f["dst"], f["outcome"], f["bytes_tx"], f["path_mtu"]) for f in flows] == [
        (b4, "established", 200000, 1280)]
    assert flows[0]["icmp_frag_needed"] >= 1


def test_a_scoped_sensor_keeps_scans_of_its_own_address_only(sites: tuple[Any, Collector]) -> None:
    lab, col = sites
    a, b = lab["a"].addresses()[0], lab["b"].addresses()[0]
    sweep = lab["b"].python(
        "import contextlib, socket, sys\n"
        "for p in range(3000, 3040):\n"
        "    with socket.socket() as c, contextlib.suppress(OSError):\n"
        "        c.settimeout(2)\n        c.connect((sys.argv[1], p))\n", a)
    assert sweep.wait(timeout=20) == 0
    with socket.socket() as c, contextlib.suppress(ConnectionRefusedError):  # this namespace's: not a's
        c.connect(("127.77.0.1", 3000))
    found = col.wait_for(lambda f: f.direction == "inbound" and f.outcome == "refused")
    assert [(f.src, f.dst, f.attempts, f.ports_probed, f.sport) for f in found] == [(a, b, 40, 40, 3039)]
    assert [(s.src, s.ports) for s in health_mod.scan_patterns(found)] == [(b, 40)]
