"""The C renderer of final TCP records (``meshnode/sensor/_jsonline.c``) writes exactly what the Python paths
write: every case compares ``poll_json`` rendering in C with ``poll`` + ``json_line`` over the same records
and sensor state (helpers from tests/_support/sensor.py). ``make setup`` builds the library; a test here
fails when it is missing or stale.
"""

from __future__ import annotations

import ctypes as ct
import os
import random
import socket
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from meshnode.probes import _records as rec
from meshnode.sensor import _native
from meshnode.sensor._ebpf import _OUTCOME_TEXT, _TCP_END_LINE, EbpfSensor
from tests._support.sensor import NO_PID, fake_sensor, poll_both_ways, raw_event


def test_the_library_is_built_and_current() -> None:
    assert _native.library_state() == ""
    assert _native.load() is not None


def test_drops_events_half_open_and_udp_in_ring_order(tmp_path: Path) -> None:
    """Drops handed to C and taken once, around records that take poll's path (events, a half-open
    reset that takes drops of its own socket, UDP releases, an unknown kind)."""
    raws = [
        raw_event(cookie=1, sk=0x10),
        raw_event(rec.EV_RTT_SHIFT, cookie=2, sk=0x20, dst="10.9.9.9"),
        raw_event(cookie=2, sk=0x20, outcome=2),
        raw_event(cookie=22, sk=0x10),  # the address reused: the drops went with the first flow
        raw_event(rec.EV_UDP_RELEASE, cookie=3),
        raw_event(rec.EV_HALFOPEN_RESET, cookie=0, flags=rec.F_INBOUND, outcome=4, sport=8080),
        raw_event(rec.EV_RESET_RX, cookie=4),
        raw_event(99, cookie=5),
        raw_event(cookie=4, sk=0x40, src="fd00::9", dst="fd00::10"),
        raw_event(cookie=6, sk=0x60),
    ]

    def state(s: EbpfSensor) -> None:
        s._drops_by_sk[0x10] = Counter({"NETFILTER_DROP": 3, 'od"d': 2})
        s._drops_by_sk[0x40] = Counter()
        s._drops_by_sk[0x99] = Counter({"NO_SOCKET": 1})
        s._released.add(3)

    kw: dict[str, Any] = {"udp": [], "drops": {(0x99, 5): 2, (0, 2): 4}, "state": state}
    old, new, c_old, c_new = poll_both_ways(tmp_path, raws, native=True, **kw)
    assert new == old and c_new == c_old
    a, b = fake_sensor(tmp_path, raws, **kw), fake_sensor(tmp_path, raws, native=True, **kw)
    a.poll()
    b.poll_json()
    assert b._rtt_shift_at == {2: 5_000_000}  # the event was handled (after the lines)
    for name in ("_drops_by_sk", "_limits", "_tcpinfo", "_released", "_udp_sks", "_rtt_shift_at"):
        assert getattr(a, name) == getattr(b, name), name


def test_ipv6_text_is_pythons_for_every_shape_of_zero_runs(tmp_path: Path) -> None:
    """Addresses as ipaddress prints them (the first longest run of 2+ zero hextets compressed,
    v4-mapped as IPv4), not as glibc's inet_ntop (which prints v4-compatible ones as ::a.b.c.d)."""
    rng = random.Random(7)
    addrs = ["::", "::1", "1::", "::a00:1", "0:0:1::1", "1:0:0:2:0:0:3:4", "1:0:2:0:3:0:4:0", "::ffff:10.1.2.3",
             "::ffff:0:0", "fe80::1:0:0:0", "0:1:0:1:0:1:0:1", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"]
    for _ in range(300):
        addrs.append(str(socket.inet_ntop(socket.AF_INET6, bytes(
            rng.choice((0, 0, 0, rng.randrange(256))) for _ in range(16)))))
    raws = [raw_event(cookie=i + 1, src=a, dst=addrs[-1 - i], flags=rec.F_INET6) for i, a in enumerate(addrs)]
    old, new, _, _ = poll_both_ways(tmp_path, raws, native=True)
    assert new == old


def test_more_owners_and_drops_than_its_first_tables_and_more_text_than_its_buffer(tmp_path: Path) -> None:
    """5,000 distinct owners and 3,000 sockets with drops in one poll (its tables start at 4,096 slots and
    grow when half full) and ~4 MB of lines (its 1 MiB buffer is emptied and refilled); every drop is
    taken once and popped."""
    raws = [raw_event(cookie=i + 1, pid=NO_PID - i, comm=b"w%d" % (i % 97), dport=1 + i % 3000, sk=0x100 + i)
            for i in range(5000)]

    def state(s: EbpfSensor) -> None:
        s._drops_by_sk.update({0x100 + 2 * i: Counter({"NETFILTER_DROP": i + 1}) for i in range(3000)})

    old, new, c_old, c_new = poll_both_ways(tmp_path, raws, native=True, state=state)
    assert new == old and c_new == c_old and new.count("\n") == 5000
    s = fake_sensor(tmp_path, raws, native=True, state=state)
    s.poll_json()
    assert s._drops_by_sk == {0x100 + 2 * i: Counter({"NETFILTER_DROP": i + 1}) for i in range(2500, 3000)}
    nat = s._native_json()
    assert nat is not None and nat.events(0) == []


def test_a_line_longer_than_the_buffer_grows_it(tmp_path: Path) -> None:
    """A buffer too small for one line is doubled until the line fits (made small here: real lines are
    ~1 kB against 1 MiB)."""
    s = fake_sensor(tmp_path, [raw_event(cookie=i + 1) for i in range(3)], native=True)
    nat = s._native_json()
    assert nat is not None
    nat._output(ct.create_string_buffer(64))
    old = fake_sensor(tmp_path, [raw_event(cookie=i + 1) for i in range(3)])
    assert s.poll_json().text == "".join(f.to_json_text() + "\n" for f in old.poll().ended)
    assert len(nat._out) >= 512


def test_a_template_it_was_not_written_for_is_refused() -> None:
    lib = _native.load()
    assert lib is not None
    args = (_OUTCOME_TEXT, b'"in_progress"', b'"inbound"', b'"outbound"', b'"unknown"', b"{}")
    for bad in (_TCP_END_LINE.replace(b"%d", b"%s", 1), _TCP_END_LINE + b"%d", _TCP_END_LINE[:-20]):
        with pytest.raises(ValueError, match="template"):
            _native.NativeJson(lib, bad, rec.EVENT_SIZE, *args)
    with pytest.raises(ValueError, match="event layout"):
        _native.NativeJson(lib, _TCP_END_LINE, rec.EVENT_SIZE + 8, *args)
    _native.NativeJson(lib, _TCP_END_LINE, rec.EVENT_SIZE, *args).close()


def test_drain_records_equals_drain_unpacked(tmp_path: Path) -> None:
    """Bulk runs copied as the ring holds them, single records (after a discarded one, across the wrap)
    given a header and padding; a record being written ends the walk."""
    from meshnode.probes._ringbuf import BUSY_BIT, DISCARD_BIT, HDR_SIZE, RingReader
    from tests._support.ring import FakeRing

    ring = FakeRing(tmp_path / "ring", size=4096)
    reader = RingReader(ring.fd, ring.size)
    try:
        records = [rec.EVENT_STRUCT.pack(*raw_event(cookie=i, bytes_tx=i * 1000)) for i in range(40)]
        got: list[tuple[Any, ...]] = []
        for i, payload in enumerate(records):
            ring.put(payload, DISCARD_BIT if i % 7 == 3 else 0)
            if i % 5 == 4:
                data, n, stride = reader.drain_records(rec.EVENT_SIZE)
                got += [rec.EVENT_STRUCT.unpack_from(data, k * stride + HDR_SIZE) for k in range(n)]
        ring.put(b"short record")
        busy_at = ring.prod
        ring.put(records[0], BUSY_BIT)
        data, n, stride = reader.drain_records(rec.EVENT_SIZE)
        got += [rec.EVENT_STRUCT.unpack_from(data, k * stride + HDR_SIZE) for k in range(n)]
        assert got == [rec.EVENT_STRUCT.unpack(p) for i, p in enumerate(records) if i % 7 != 3]
        assert ring.consumer == busy_at and len(data) == n * stride
    finally:
        reader.close()
        os.close(ring.fd)
