"""A node's low-level events outlive its in-memory ring and a restart: each period's are written to the store
with its flows, and the Events RPC serves the ring and, below it, the store; ``since`` before what the node
holds says so."""

from __future__ import annotations

import asyncio
import collections
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshnode._exceptions import StoreError
from meshnode.daemon import Node, NodeConfig
from meshnode.sensor import EventRecord
from meshnode.sensor._fake import FakeSensor
from meshnode.v1 import flow_pb2, observer_pb2, observer_pb2_grpc
from tests.unit._flows import T0, S, flow


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> int:
        return self.now


def _config(tmp_path: Path) -> NodeConfig:
    return NodeConfig(listen="127.0.0.1:0", metrics="off", watch_addresses=False, data_dir=tmp_path,  # type: ignore[call-arg]
                      node_id="app-1", export_period=2.0, retention_age=0.0)


def _failed(i: int, outcome: str) -> EventRecord:
    return EventRecord("connect_failed", T0 + i * S, flow(i, outcome=outcome, dport=5432), 1.0, outcome)


async def _events(node: Node, **request: Any) -> list[observer_pb2.EventsResponse]:
    async with grpc.aio.insecure_channel(node.api.address) as channel:
        stub = observer_pb2_grpc.ObserverStub(channel)
        return [r async for r in stub.Events(observer_pb2.EventsRequest(**request), timeout=10)]


def _gist(responses: list[observer_pb2.EventsResponse]) -> list[tuple[int, str, int]]:
    return [(r.event.time_ns, r.event.detail, r.event.flow.flow_id) for r in responses if r.HasField("event")]


def test_events_come_from_the_ring_and_the_store_and_survive_a_restart(tmp_path: Path) -> None:
    async def main() -> None:
        clock, sensor = Clock(), FakeSensor("/")
        node = Node(_config(tmp_path), sensor, clock=clock)
        node.events.ring = collections.deque(maxlen=3)  # a small ring: most history is the store's
        await node.start()
        try:
            for i in range(1, 7):
                sensor.push_event(_failed(i, "refused" if i % 2 else "timeout"))
            await node.tick()
            clock.now += 2 * S
            await node.close_period()
            sensor.push_event(_failed(7, "refused"))
            sensor.push_event(_failed(8, "timeout"))
            await node.tick()  # not written yet: the ring has them
            before = await _events(node, number=100)
            newest = await _events(node, number=3)
            timeouts = await _events(node, number=2, since_ns=T0 + 3 * S)
            assert node.status().completeness["events_dropped"] == 0 and node.events.evicted == 5
        finally:
            await node.shutdown()  # writes the last period's events
        want = [(T0 + i * S, "refused" if i % 2 else "timeout", i) for i in range(1, 9)]
        assert _gist(before) == want
        assert _gist(newest) == want[-3:] and _gist(timeouts) == want[-2:]
        assert all(not r.coverage for r in before)

        again = Node(_config(tmp_path), FakeSensor("/"), clock=clock)
        assert again.events.next_id == 9  # numbered on from what the store holds
        await again.start()
        try:
            after = await _events(again, number=100)
            asked_early = await _events(again, number=100, since_ns=T0 - 60 * S)
            asked_within = await _events(again, number=100, since_ns=T0 + 5 * S)
        finally:
            await again.shutdown()
        assert after == before  # the same messages
        assert asked_early[0].held_since_ns == T0 and not asked_early[0].HasField("event")
        assert asked_early[0].coverage == ("asked from 2023-11-14 22:12:20 UTC, but this node holds events from "
                                           "2023-11-14 22:13:20 UTC only (since its store began, or as far as its "
                                           "retention keeps them)")
        assert _gist(asked_early[1:]) == want
        assert [r.coverage for r in asked_within] == [""] * 4 and _gist(asked_within) == want[4:]

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_type_filter_selects_stored_events_before_any_is_decoded(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A whitelist that names event types reads only those types' rows from the store (decoding a stored
    event's flow is what costs); a whitelist that does not name types in every filter reads them all, and
    the answers are the events the filters match either way."""
    from meshnode._model import FlowRecord
    from meshnode.api import Selector

    F = flow_pb2.FlowFilter
    assert Selector.from_request([F(event_type=[flow_pb2.RESET_SENT]), F(event_type=[flow_pb2.DROP])],
                                 []).event_types() == ("drop", "reset_sent")
    assert Selector.from_request([F(event_type=[flow_pb2.RESET_SENT]), F(comm=["curl"])], []).event_types() == ()
    assert Selector.from_request([], [F(event_type=[flow_pb2.RESET_SENT])]).event_types() == ()

    decoded = 0
    real = FlowRecord.from_json

    def counted(doc: dict[str, object]) -> FlowRecord:
        nonlocal decoded
        decoded += 1
        return real(doc)

    async def main() -> None:
        nonlocal decoded
        clock, sensor = Clock(), FakeSensor("/")
        node = Node(_config(tmp_path), sensor, clock=clock)
        node.events.ring = collections.deque(maxlen=1)  # history is the store's
        await node.start()
        try:
            for i in range(1, 9):
                sensor.push_event(_failed(i, "refused"))
            sensor.push_event(EventRecord("reset_sent", T0 + 9 * S, flow(9, outcome="reset"), 1.0, ""))
            await node.tick()
            clock.now += 10 * S
            await node.close_period()
            monkeypatch.setattr(FlowRecord, "from_json", staticmethod(counted))
            resets = await _events(node, number=100, whitelist=[F(event_type=[flow_pb2.RESET_SENT])])
            assert [r.event.flow.flow_id for r in resets] == [9] and decoded == 0  # the ring's one, none stored
            refused = await _events(node, number=100, whitelist=[F(event_type=[flow_pb2.CONNECT_FAILED])])
            assert [r.event.flow.flow_id for r in refused] == list(range(1, 9)) and decoded == 8
            decoded = 0
            by_port = await _events(node, number=100, whitelist=[F(dport=[5432])])
            assert [r.event.flow.flow_id for r in by_port] == list(range(1, 9)) and decoded == 8
        finally:
            await node.shutdown()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_a_period_the_store_could_not_write_keeps_its_events_for_the_next(tmp_path: Path) -> None:
    async def main() -> None:
        clock, sensor = Clock(), FakeSensor("/")
        node = Node(_config(tmp_path), sensor, clock=clock)
        await node.start()
        try:
            sensor.push_event(_failed(1, "refused"))
            await node.tick()
            real = node.store.close_period

            def full(*args: object, **kw: object) -> object:
                raise StoreError("disk full")

            node.store.close_period = full  # type: ignore[method-assign]
            with pytest.raises(StoreError, match="disk full"):
                await node.close_period()
            node.store.close_period = real  # type: ignore[method-assign]
            assert [i for i, _ in node.events.pending] == [1]
            clock.now += 2 * S
            await node.close_period()
            assert [e.id for e in node.store.events()] == [1] and not node.events.pending
        finally:
            await node.shutdown()

    asyncio.run(asyncio.wait_for(main(), 60))


def test_the_ring_counts_events_that_never_reached_the_store() -> None:
    from meshnode.api import EventRing

    ring = EventRing(capacity=2, first_id=5, max_pending=3)
    ring.push([_failed(i, "refused") for i in range(1, 5)])
    assert [i for i, _ in ring.ring] == [7, 8] and ring.floor_id == 7 and ring.evicted == 2
    taken = ring.take_pending()
    assert [i for i, _ in taken] == [6, 7, 8] and ring.unstored == 1  # event 5 waited beyond max_pending
    ring.push([_failed(9, "timeout")])
    ring.restore_pending(taken)  # the write failed: back in front, still bounded
    assert [i for i, _ in ring.pending] == [7, 8, 9] and ring.unstored == 2
