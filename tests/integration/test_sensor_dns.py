"""DNS names on flows and DNS transactions, from the kernel (root, real eBPF, loopback only).

dnsmasq serves names on a loopback address; ``dig`` resolves them (UDP and TCP) and a TCP connect to the
resolved address must carry ``remote_name``, the name resolved before the flow began (a name resolved
to the same address while the flow is open is the next flow's). An NXDOMAIN is a failed DNS record of
the resolver. A hand-made resolver answers with hostile messages (a compression loop, a forward pointer,
an overlong name, a cut message, a reserved label type): each is counted, none names an address, and
the sensor goes on naming flows; a CNAME chain names its final address with the question's name.
"""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests._support import dns as dns_support
from tests._support.env import require_kernel

RESOLVER = "127.0.77.53"  # dnsmasq
HOSTILE = "127.0.78.53"  # the hand-made resolver below
WEB, OTHER, PLAIN, CHAIN, EVIL = "127.0.77.80", "127.0.77.81", "127.0.77.82", "127.0.78.80", "127.0.78.81"




# ---- a resolver that answers with hand-made messages ---------------------------------------------------


def _name(text: str) -> bytes:
    return b"".join(bytes([len(p)]) + p.encode() for p in text.split(".")) + b"\0"


def _rr(owner: bytes, rtype: int, rdata: bytes, ttl: int = 60) -> bytes:
    return owner + struct.pack("!HHIH", rtype, 1, ttl, len(rdata)) + rdata


def hostile_answer(query: bytes) -> bytes:
    """The answer to ``query`` by its first label: what each case makes of the message."""
    qid, qlen = query[:2], len(query)
    label = query[13:13 + query[12]].decode()
    question = query[12:qlen]  # name, type, class
    head = qid + b"\x81\x80" + struct.pack("!HHHH", 1, 1, 0, 0)
    if label == "chain":  # chain.test CNAME edge.cdn.test; edge.cdn.test A CHAIN; evil.test A EVIL (not ours)
        head = qid + b"\x81\x80" + struct.pack("!HHHH", 1, 3, 0, 0)
        cname = _rr(b"\xc0\x0c", 5, _name("edge.cdn.test"))
        edge_at = 12 + len(question) + 12  # the CNAME's rdata: its owner pointer (2) + fixed (10)
        return (head + question + cname + _rr(struct.pack("!H", 0xC000 | edge_at), 1, socket.inet_aton(CHAIN))
                + _rr(_name("evil.test"), 1, socket.inet_aton(EVIL)))
    if label == "six":  # AAAA ::1
        return head + question + _rr(b"\xc0\x0c", 28, socket.inet_pton(socket.AF_INET6, "::1"))
    if label == "loop":  # the answer's owner points at itself
        at = 12 + len(question)
        return head + question + _rr(struct.pack("!H", 0xC000 | at), 1, socket.inet_aton(EVIL))
    if label == "forward":  # the owner points past itself, at a pointer back to it
        at = 12 + len(question)
        return head + question + struct.pack("!HH", 0xC000 | (at + 2), 0xC000 | at) + b"\0" * 14
    if label == "long":  # a question of five 63-byte labels: over 255 bytes
        name = b"".join(b"\x3f" + b"a" * 63 for _ in range(5)) + b"\0"
        return head + name + b"\0\x01\0\x01" + _rr(b"\xc0\x0c", 1, socket.inet_aton(EVIL))
    if label == "reserved":  # a label type nobody uses (0x40)
        return head + question + _rr(b"\x41xyz\0", 1, socket.inet_aton(EVIL))
    if label == "cut":  # the record's data is cut off
        return (head + question + _rr(b"\xc0\x0c", 1, socket.inet_aton(EVIL)))[:-3]
    return qid + b"\x81\x83" + struct.pack("!HHHH", 1, 0, 0, 0) + question  # NXDOMAIN


class HostileResolver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((HOSTILE, 53))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                query, peer = self.sock.recvfrom(4096)
                if not query:  # shut down
                    return
                self.sock.sendto(hostile_answer(query), peer)
            except OSError:
                return

    def ask(self, name: str) -> bytes:
        """A query for ``name`` (type A) from a new socket; the raw answer."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(b"\x12\x34\x01\x00" + struct.pack("!HHHH", 1, 0, 0, 0) + _name(name) + b"\0\x01\0\x01",
                     (HOSTILE, 53))
            return s.recvfrom(4096)[0]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the serving thread, which holds the port until then
        self.thread.join(5)
        self.sock.close()


# ---- fixtures --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sensor() -> Iterator[Any]:
    require_kernel()
    from meshnode.sensor._ebpf import EbpfSensor

    s = EbpfSensor(idle_timeout_s=60.0, udp_scan_interval_s=0.1)  # the whole host: dig runs anywhere
    s.start()
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[None]:
    names = {"web.meshtest": WEB, "other.meshtest": WEB, "plain.meshtest": PLAIN, "nx.meshtest": ""}
    with dns_support.dnsmasq(RESOLVER, names, ("web.meshtest", WEB)):
        yield


@pytest.fixture(scope="module")
def servers() -> Iterator[list[socket.socket]]:
    """TCP listeners on the names' addresses (port 8053), accepting and closing."""
    socks = []
    for addr in (WEB, PLAIN, CHAIN, EVIL):
        s = socket.create_server((addr, 8053))
        socks.append(s)
        threading.Thread(target=_accept_all, args=(s,), daemon=True).start()
    try:
        yield socks
    finally:
        for s in socks:
            s.close()


def _accept_all(s: socket.socket) -> None:
    while True:
        try:
            conn, _ = s.accept()
        except OSError:
            return
        conn.close()


def dig(name: str, *opts: str) -> str:
    return dns_support.dig(RESOLVER, name, *opts)


_DNS_SEEN: list[Any] = []  # every poll's DNS records, whichever helper polled
_FLOWS_SEEN: list[dict[str, Any]] = []  # every poll's flows not yet taken by a test


def flows_to(sensor: Any, addr: str, count: int, json_path: bool = False,
             timeout: float = 10.0) -> list[dict[str, Any]]:
    """The first ``count`` ended TCP flows to ``addr``:8053, polled through ``poll`` or ``poll_json`` (or
    seen by an earlier poll and not taken yet); taken."""
    seen = _FLOWS_SEEN
    deadline = time.monotonic() + timeout
    while True:
        if json_path:
            jb = sensor.poll_json()
            seen += [json.loads(line) for line in jb.text.splitlines()]
            _DNS_SEEN.extend(jb.dns)
        else:
            batch = sensor.poll()
            seen += [f.to_json() for f in batch.ended]
            _DNS_SEEN.extend(batch.dns)
        found = [f for f in seen if f["dst"] == addr and f["dport"] == 8053 and f["proto"] == "tcp"
                 and f["direction"] == "outbound"]
        if len(found) >= count or time.monotonic() > deadline:
            taken = found[:count]
            seen[:] = [f for f in seen if all(f is not t for t in taken)]
            return taken
        time.sleep(0.05)


def dns_records(sensor: Any, pred: Callable[[Any], bool], timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while True:
        _DNS_SEEN.extend(sensor.poll().dns)
        found = [d for d in _DNS_SEEN if pred(d)]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def connect(addr: str) -> socket.socket:
    return socket.create_connection((addr, 8053), timeout=5)


# ---- tests -----------------------------------------------------------------------------------------------


@pytest.mark.kernel
@pytest.mark.parametrize("json_path", [False, True], ids=["poll", "poll_json"])
def test_a_flow_carries_the_name_resolved_before_it_began(sensor: Any, dnsmasq: None, servers: Any,
                                                           json_path: bool) -> None:
    assert dig("web.meshtest") == WEB
    first = connect(WEB)  # begins after web.meshtest was resolved to WEB
    assert dig("other.meshtest") == WEB  # the same address, resolved while the first flow is open
    second = connect(WEB)
    first.close()
    second.close()
    flows = flows_to(sensor, WEB, 2, json_path)
    assert [(f["remote_name"], f["outcome"]) for f in sorted(flows, key=lambda f: f["start_ns"])] == [
        ("web.meshtest", "established"), ("other.meshtest", "established")]


@pytest.mark.kernel
def test_an_address_never_resolved_has_no_name_and_tcp_answers_name_too(sensor: Any, dnsmasq: None,
                                                                        servers: Any) -> None:
    connect(PLAIN).close()
    assert [f["remote_name"] for f in flows_to(sensor, PLAIN, 1)] == [""]
    assert dig("plain.meshtest", "+tcp") == PLAIN  # DNS over TCP names the address as well
    connect(PLAIN).close()
    assert [f["remote_name"] for f in flows_to(sensor, PLAIN, 1)] == ["plain.meshtest"]
    tcp = dns_records(sensor, lambda d: d.query == "plain.meshtest" and d.tcp)
    assert tcp and (tcp[0].rcode, tcp[0].addresses, tcp[0].server, tcp[0].failed) == ("NOERROR", 1, RESOLVER, False)


@pytest.mark.kernel
def test_nxdomain_is_a_failed_dns_record_of_the_resolver(sensor: Any, dnsmasq: None) -> None:
    assert dig("nx.meshtest") == ""
    found = dns_records(sensor, lambda d: d.query == "nx.meshtest")
    assert len(found) == 1, found
    d = found[0]
    assert (d.server, d.qtype, d.rcode, d.failed, d.answers, d.timed, d.addresses, d.tcp) == (
        RESOLVER, "A", "NXDOMAIN", True, 1, 1, 0, False)
    assert 0 < d.latency_us < 2_000_000 and d.latency_max_us >= d.latency_us
    assert d.comm == "dig" and d.pid > 0


@pytest.mark.kernel
def test_hostile_answers_are_counted_and_break_nothing(sensor: Any, dnsmasq: None, servers: Any) -> None:
    resolver = HostileResolver()
    try:
        before = sensor.counters()
        for case in ("loop", "forward", "long", "reserved", "cut"):
            assert resolver.ask(f"{case}.test")
        resolver.ask("chain.test")
        after = sensor.counters()
    finally:
        resolver.close()
    moved = {k: after[k] - before[k] for k in ("dns_answers", "dns_malformed", "dns_truncated")}
    # loop, forward, long and reserved are refused; cut is parsed as far as it goes; chain parses whole
    assert moved["dns_answers"] >= 6 and moved["dns_malformed"] >= 4 and moved["dns_truncated"] >= 1, moved
    for addr in (CHAIN, EVIL):
        connect(addr).close()
    assert [f["remote_name"] for f in flows_to(sensor, CHAIN, 1)] == ["chain.test"]  # the CNAME chain's end
    assert [f["remote_name"] for f in flows_to(sensor, EVIL, 1)] == [""]  # no hostile record named it
    assert dig("web.meshtest") == WEB  # and the sensor goes on
    connect(WEB).close()
    assert [f["remote_name"] for f in flows_to(sensor, WEB, 1)] == ["web.meshtest"]


@pytest.mark.kernel
def test_aaaa_answers_name_ipv6_flows_and_a_records_name_v4_mapped_ones(sensor: Any, servers: Any) -> None:
    resolver = HostileResolver()
    six = socket.create_server(("::1", 8053), family=socket.AF_INET6)
    threading.Thread(target=_accept_all, args=(six,), daemon=True).start()
    try:
        resolver.ask("six.test")  # AAAA ::1 (this sensor's map only: other sensors' flows to ::1 are not named)
        resolver.ask("chain.test")  # A CHAIN, as above
        socket.create_connection(("::1", 8053), timeout=5).close()
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as mapped:  # IPv4 through an IPv6 socket
            mapped.settimeout(5)
            mapped.connect((f"::ffff:{CHAIN}", 8053))
    finally:
        resolver.close()
        six.close()
    assert [f["remote_name"] for f in flows_to(sensor, "::1", 1)] == ["six.test"]
    assert [f["remote_name"] for f in flows_to(sensor, CHAIN, 1)] == ["chain.test"]


def fnv1a(name: str) -> int:
    """The kernel's hash of a name (dns.bpf.c): FNV-1a 64 over its lower-cased labels joined by '.'."""
    h = 0xCBF29CE484222325
    for b in name.lower().encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFF_FFFF_FFFF_FFFF
    return h


@pytest.mark.kernel
def test_a_name_colliding_with_another_takes_its_own_id_and_ids_are_never_reused(
        sensor: Any, dnsmasq: None, servers: Any) -> None:
    """Name ids are 32 bits a flow; a 64-bit hash collision and the end of the id space are counted, and
    neither gives a flow another name. The collision is made by pointing plain.meshtest's hash at
    web.meshtest's id in the kernel's map (a real one needs crafted names); the id space's end by moving
    the kernel's last id to 2^32 - 2."""
    bpf = sensor._probes._bpf  # the kernel maps themselves: what no DNS traffic can set up on demand
    ids, last = bpf["dns_ids"], bpf["dns_last_id"]
    assert dig("web.meshtest") == WEB
    web_id = ids[ids.Key(fnv1a("web.meshtest"))].value
    ids[ids.Key(fnv1a("plain.meshtest"))] = ids.Leaf(web_id)
    before = sensor.counters()
    assert dig("plain.meshtest") == PLAIN
    connect(PLAIN).close()
    connect(WEB).close()
    assert [f["remote_name"] for f in flows_to(sensor, PLAIN, 1)] == ["plain.meshtest"]
    assert [f["remote_name"] for f in flows_to(sensor, WEB, 1)] == ["web.meshtest"]
    plain_id = ids[ids.Key(fnv1a("plain.meshtest"))].value
    assert plain_id != web_id
    assert sensor.counters()["dns_name_collisions"] - before["dns_name_collisions"] == 1

    saved = last[last.Key(0)].value
    try:
        last[last.Key(0)] = last.Leaf(0xFFFF_FFFE)
        for name in ("other.meshtest", "web.meshtest"):  # both take a new id at their next answer
            del ids[ids.Key(fnv1a(name))]
        assert dig("other.meshtest") == WEB  # the last id there is
        connect(WEB).close()
        assert [f["remote_name"] for f in flows_to(sensor, WEB, 1)] == ["other.meshtest"]
        assert ids[ids.Key(fnv1a("other.meshtest"))].value == 0xFFFF_FFFF
        assert dig("web.meshtest") == WEB  # none left: WEB is now an address of an unnamed question
        connect(WEB).close()
        assert [f["remote_name"] for f in flows_to(sensor, WEB, 1)] == [""]
        assert sensor.counters()["dns_ids_spent"] - before["dns_ids_spent"] == 1
        assert dns_records(sensor, lambda d: d.query == "" and d.server == RESOLVER and d.addresses == 1)
    finally:
        last[last.Key(0)] = last.Leaf(saved)  # ids above it were never handed out
    assert dig("web.meshtest") == WEB
    connect(WEB).close()
    assert [f["remote_name"] for f in flows_to(sensor, WEB, 1)] == ["web.meshtest"]
