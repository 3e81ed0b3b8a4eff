"""``EbpfSensor.poll`` (TCP end records as columns, ``_end_columns``) against the one-record path: every ring
record through ``_handle`` in ring order, as the sensor handled them before columns. Same fake ring records,
same sensor state; the ended flows, the events and what the poll leaves in the sensor must agree.
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from meshnode._batch import FlowBatch
from meshnode._model import FlowRecord
from meshnode.probes import _records as rec
from meshnode.sensor._base import EventRecord, SensorBatch
from meshnode.sensor._ebpf import EbpfSensor
from tests._support.sensor import NAMED_PID, NO_PID, fake_sensor, raw_event

U64 = 2**64 - 1
U32 = 2**32 - 1
U16 = 2**16 - 1
State = Callable[[EbpfSensor], None] | None


def _event_key(ev: EventRecord) -> tuple[Any, ...]:
    # an event on a live flow carries the poll's monotonic now as end_ns: not comparable between two sensors
    flow = ev.flow if ev.flow.kind == "final" else dataclasses.replace(ev.flow, end_ns=0)
    return (ev.type, ev.time_ns, flow, ev.value, ev.detail)


def _leftover(s: EbpfSensor) -> tuple[Any, ...]:
    return (dict(s._drops_by_sk), dict(s._limits), set(s._tcpinfo), set(s._released))


def one_by_one(tmp_path: Path, raws: list[tuple[Any, ...]], state: State) -> tuple[Any, ...]:
    sensor = fake_sensor(tmp_path, raws, state=state)
    batch = SensorBatch()
    for raw in sensor._probes.poll_raw():  # type: ignore[attr-defined]
        sensor._handle(rec.event_from_raw(raw), batch)
    # as SensorBatch.ended holds them: through a batch (a name the model lacks becomes "unknown")
    ended = FlowBatch.from_records(batch.records)
    return FlowBatch(ended.cols, ended.n).records(), [_event_key(e) for e in batch.events], _leftover(sensor)


def columnar(tmp_path: Path, raws: list[tuple[Any, ...]], state: State) -> tuple[Any, ...]:
    sensor = fake_sensor(tmp_path, raws, state=state)
    batch = sensor.poll()
    ended: list[FlowRecord] = batch.ended.records()
    return ended, [_event_key(e) for e in batch.events], _leftover(sensor)


def _state(s: EbpfSensor) -> None:
    s._drops_by_sk[0x10] = Counter({"NETFILTER_DROP": 3, 'od"d': 2})
    s._drops_by_sk[0x40] = Counter()
    s._drops_by_sk[0x99] = Counter({"NO_SOCKET": 1})
    s._limits[2] = "receiver_window"
    s._limits[U64] = "congestion"
    s._limits[77] = "bogus-limit"  # a name the model does not know
    s._tcpinfo[1] = (0, None)  # type: ignore[assignment]
    s._tcpinfo[5] = (0, None)  # type: ignore[assignment]


def _fast_records() -> list[tuple[Any, ...]]:
    out = [
        raw_event(cookie=1, sk=0x10),
        raw_event(cookie=2, sk=0x20, outcome=2, src="2001:db8::", dst="::"),  # v6 ending in zero bytes
        raw_event(cookie=3, src="fe80::", dst="::ffff:0.0.0.0", flags=rec.F_INBOUND, sport=443, dport=40000),
        raw_event(cookie=4, sk=0x40, src="::ffff:192.0.2.7", dst="::1", comm=b"py\xffthon"),
        raw_event(cookie=U64, sk=U64, netns=U64, cgroup_id=U64, bytes_tx=U64, bytes_rx=U64, segs_out=U32,
                  segs_in=U32, pid=U32, start_ns=U64 >> 2, last_ns=U64 >> 2, sport=U16, dport=U16,
                  synack_retrans=255, flags=rec.F_SYNACK | rec.F_INBOUND, outcome=3),
        raw_event(cookie=5, flags=rec.F_SYNACK, synack_retrans=0, segs_out=0),
        raw_event(cookie=77, pid=NAMED_PID, comm=b"worker-xyz"),
        raw_event(cookie=78, pid=os.getpid(), comm=b""),
        raw_event(cookie=79, pid=NO_PID, comm=b"sixteen-chars-xx"),
        raw_event(cookie=1, sk=0x10, dport=80),  # the same cookie and socket again (reuse): nothing left to pop
    ]
    for i, outcome in enumerate((0, 1, 2, 3, 4, 5, 6, 7, 8, 255)):  # the known outcomes and others
        out.append(raw_event(cookie=100 + i, outcome=outcome, dst=f"10.2.0.{i}", sk=0x1000 + i))
    return out


def test_columns_equal_one_record_path_on_end_records(tmp_path: Path) -> None:
    want = one_by_one(tmp_path, _fast_records(), _state)
    got = columnar(tmp_path, _fast_records(), _state)
    assert got[0] == want[0]
    assert got[1] == want[1]
    assert got[2] == want[2]
    outcomes = [r.outcome for r in got[0][-10:]]
    assert outcomes == ["in_progress", "established", "refused", "timeout", "reset", "in_progress",
                        "in_progress", "in_progress", "in_progress", "in_progress"]
    assert got[0][4].packets_tx == U32 + 256 and got[0][4].flow_id == U64 and got[0][4].netns == U64
    assert got[0][4].limited_by == "congestion" and got[0][1].limited_by == "receiver_window"
    assert got[0][5].packets_tx == 1 and got[0][6].limited_by == "unknown"
    assert got[0][0].drops == 5 and got[0][-11].drops == 0
    assert [e[0] for e in got[1]] == ["connect_failed"] * 5


def _interleaved() -> list[tuple[Any, ...]]:
    return [
        raw_event(cookie=11, sk=0x11, outcome=2),  # fast: refused -> connect_failed
        raw_event(rec.EV_RESET_RX, cookie=12, sk=0x12),  # slow: an event on a live flow
        raw_event(cookie=13, sk=0x13, outcome=3),  # fast: timeout -> connect_failed
        raw_event(rec.EV_HALFOPEN_RESET, cookie=0, flags=rec.F_INBOUND, outcome=4, sport=8080),  # slow final
        raw_event(rec.EV_UDP_RELEASE, cookie=14),
        raw_event(cookie=0, sk=0x15, outcome=2),  # slow: a TCP end without a cookie (synthetic id)
        raw_event(cookie=16, sk=0x16),
    ]


def test_interleaved_slow_records_keep_ring_order_of_flows(tmp_path: Path) -> None:
    want = one_by_one(tmp_path, _interleaved(), None)
    got = columnar(tmp_path, _interleaved(), None)
    assert got[0] == want[0]
    assert got[2][:3] == want[2][:3]
    assert sorted(got[1], key=repr) == sorted(want[1], key=repr)  # the same events


def test_interleaved_slow_records_keep_ring_order_of_events(tmp_path: Path) -> None:
    want = one_by_one(tmp_path, _interleaved(), None)
    got = columnar(tmp_path, _interleaved(), None)
    assert got[1] == want[1]


def _shared_socket() -> list[tuple[Any, ...]]:
    return [
        raw_event(cookie=21, sk=0x77, outcome=1),  # fast, first in the ring: its drops
        raw_event(cookie=0, sk=0x77, outcome=2, sport=40001),  # slow (no cookie), same socket address after
    ]


def _drops_on_77(s: EbpfSensor) -> None:
    s._drops_by_sk[0x77] = Counter({"NETFILTER_DROP": 4})


def test_state_is_consumed_in_ring_order(tmp_path: Path) -> None:
    want = one_by_one(tmp_path, _shared_socket(), _drops_on_77)
    got = columnar(tmp_path, _shared_socket(), _drops_on_77)
    assert [(r.flow_id, r.drops) for r in got[0]] == [(r.flow_id, r.drops) for r in want[0]]


def _events_and_ends() -> list[tuple[Any, ...]]:
    return [
        raw_event(rec.EV_RESET_RX, cookie=31, sk=0x31),  # an event on a flow whose end comes later in the poll
        raw_event(cookie=30, sk=0x30, outcome=2),
        raw_event(cookie=31, sk=0x31, outcome=1),
        raw_event(rec.EV_RESET_TX, cookie=32, sk=0x32),
        raw_event(cookie=33, sk=0x33),
    ]


def _state_on_31(s: EbpfSensor) -> None:
    s._drops_by_sk[0x31] = Counter({"NETFILTER_DROP": 2})
    s._limits[31] = "receiver_window"


def test_an_event_before_its_flows_end_sees_the_state_the_end_then_takes(tmp_path: Path) -> None:
    """Other records are handled before the end records (one batch) when none follows an end of its socket:
    the same flows, events and leftover state as ring order."""
    want = one_by_one(tmp_path, _events_and_ends(), _state_on_31)
    got = columnar(tmp_path, _events_and_ends(), _state_on_31)
    assert got == want
    assert [r.flow_id for r in got[0]] == [30, 31, 33]
    ended = got[0][1]
    assert (ended.drops, ended.limited_by) == (2, "receiver_window")


def test_an_event_after_an_end_of_its_socket_keeps_ring_order(tmp_path: Path) -> None:
    raws = [*_events_and_ends(), raw_event(rec.EV_RESET_RX, cookie=34, sk=0x31)]  # the socket address reused
    want = one_by_one(tmp_path, raws, _state_on_31)
    got = columnar(tmp_path, raws, _state_on_31)
    assert got == want


def test_a_poll_of_other_records_only(tmp_path: Path) -> None:
    raws = [raw_event(rec.EV_RESET_RX, cookie=41, sk=0x41), raw_event(rec.EV_UDP_RELEASE, cookie=42),
            raw_event(cookie=0, sk=0x43, outcome=2)]
    got, want = columnar(tmp_path, raws, None), one_by_one(tmp_path, raws, None)
    assert got[:2] == want[:2]
    assert got[2][:3] == want[2][:3]  # (the poll's map scan takes the released UDP sockets)


def test_a_bug_on_some_records_fails_the_poll_not_the_node(tmp_path: Path) -> None:
    """An unexpected error while turning records into flows is a SensorError, which the node counts and
    polls past (bounded), not an exception that ends ``meshnode run``."""
    import pytest

    from meshnode._exceptions import SensorError

    sensor = fake_sensor(tmp_path, _fast_records(), state=None)

    def broken(*_: object) -> FlowBatch:
        raise ValueError("cannot reshape")

    sensor._end_columns = broken  # type: ignore[method-assign, assignment]
    with pytest.raises(SensorError, match="ValueError: cannot reshape"):
        sensor.poll()
