"""A flow's final eBPF record carries its last tcp_info sample (``lost``, ``rttvar_us``, ``reordering``,
``delivery_rate``), whichever path renders it: the columnar one, the one record at a time one (a poll with
other records after an end record of the same socket), and ``poll_json``."""

from __future__ import annotations

import json
from pathlib import Path

from meshnode.probes import _records as rec
from meshnode.probes._sockdiag import TcpInfo
from meshnode.sensor._ebpf import EbpfSensor
from tests._support.sensor import fake_sensor, poll_both_ways, raw_event


def _samples(s: EbpfSensor) -> None:
    s._tcpinfo[1] = (0, TcpInfo(rttvar=17, delivery_rate=1_250_000, lost=2, reordering=3, min_rtt=5))
    s._tcpinfo[3] = (0, TcpInfo(rttvar=9, delivery_rate=42, lost=0, reordering=4))


SAMPLED = ("rttvar_us", "delivery_rate", "lost", "reordering")


def test_columnar_finals_carry_the_last_sample(tmp_path: Path) -> None:
    s = fake_sensor(tmp_path, [raw_event(cookie=1), raw_event(cookie=2), raw_event(cookie=3)], state=_samples)
    got = {f.flow_id: f for f in s.poll().ended}
    assert [tuple(getattr(got[c], n) for n in SAMPLED) for c in (1, 2, 3)] == [
        (17, 1_250_000, 2, 3), (0, 0, 0, 0), (9, 42, 0, 4)]
    assert got[1].min_rtt_us == 30  # the kernel's minimum over the flow, not the sample's
    assert s._tcpinfo == {}  # popped: a reused cookie does not inherit it


def test_one_at_a_time_and_json_lines_carry_it_too(tmp_path: Path) -> None:
    # an event of socket 1 after its end record: the poll handles the records one by one, in ring order
    raws = [raw_event(cookie=1, sk=0x10), raw_event(rec.EV_RESET_RX, cookie=1, sk=0x10), raw_event(cookie=3)]
    s = fake_sensor(tmp_path, raws, state=_samples)
    got = {f.flow_id: f for f in s.poll().ended}
    assert (got[1].lost, got[1].delivery_rate, got[3].reordering) == (2, 1_250_000, 4)
    old, new, _, _ = poll_both_ways(tmp_path, [raw_event(cookie=1), raw_event(cookie=2), raw_event(cookie=3)],
                                    state=_samples)
    assert new == old
    lines = [json.loads(ln) for ln in new.splitlines()]
    assert [(ln["flow_id"], ln["lost"], ln["rttvar_us"]) for ln in lines] == [(1, 2, 17), (2, 0, 0), (3, 0, 9)]
