"""The API's stream pacer (a token bucket shared by every stream) and Status answered from the node's
snapshot on the event loop. Pure or in-process: no root, no network beyond 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from meshnode.api._pacer import StreamPacer
from meshnode.v1 import observer_pb2
from tests.unit._flows import flow
from tests.unit._node import running_node


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(("rate", "burst", "asks", "step", "delays"), [
    (10.0, 2, 4, 0.0, [0.0, 0.0, 0.1, 0.2]),  # the burst goes at once, then one per 1/rate, in the order asked
    (10.0, 2, 4, 0.1, [0.0, 0.0, 0.0, 0.0]),  # asked no faster than the rate: never waits
    (10.0, 1, 3, 0.05, [0.0, 0.05, 0.1]),  # half the interval between asks: the debt grows by half each time
    (1000.0, 1000, 1001, 0.0, [0.0] * 1000 + [0.001]),
])
def test_the_pacer_sends_the_burst_then_spreads_the_rest_at_its_rate(
    rate: float, burst: int, asks: int, step: float, delays: list[float]
) -> None:
    clock = Clock()
    pacer = StreamPacer(rate, burst, clock)
    got = []
    for _ in range(asks):
        got.append(round(pacer.delay(), 9))
        clock.now += step
    assert got == delays
    assert pacer.waits == sum(1 for d in delays if d > 0)


def test_the_pacer_refills_up_to_its_burst_only() -> None:
    clock = Clock()
    pacer = StreamPacer(10.0, 3, clock)
    clock.now += 60.0  # a minute idle: three tokens, not 600
    assert [pacer.delay() for _ in range(4)] == [0.0, 0.0, 0.0, pytest.approx(0.1)]
    with pytest.raises(ValueError, match="positive rate"):
        StreamPacer(0, 1)


def test_status_is_answered_from_the_nodes_snapshot_without_a_worker(tmp_path: Path) -> None:
    """The store's size and counts come from the last period close (the only time they change), so Status
    needs no hop to a thread and no system call (each lets go of the GIL): with the status executor closed
    and the store's files out of reach it still answers, and its counts follow each close."""
    async def run() -> tuple[observer_pb2.StatusResponse, observer_pb2.StatusResponse]:
        async with running_node(tmp_path) as h:
            h.node.observer.status_executor.close()
            loop_thread, size_on_disk = threading.get_ident(), h.node.store.size_on_disk

            def stat_off_the_loop() -> int:  # a period close stats the files in a worker, as it should
                assert threading.get_ident() != loop_thread, "Status stat()ed the store on the event loop"
                return size_on_disk()

            h.node.store.size_on_disk = stat_off_the_loop  # type: ignore[method-assign]
            before = await h.stub.Status(observer_pb2.StatusRequest(), timeout=5)
            await h.period(flow(1), flow(2))
            after = await h.stub.Status(observer_pb2.StatusRequest(), timeout=5)
            return before, after

    before, after = asyncio.run(run())
    assert (before.store_rows, before.periods) == (0, 0)
    assert (after.store_rows, after.periods) == (2, 1) and after.store_bytes > 0


def test_a_lone_stream_is_not_paced_and_several_share_the_rate(tmp_path: Path) -> None:
    from meshnode.api import ObserverServicer
    from meshnode.api._limits import ApiLimits
    from meshnode.store import Retention, Store

    store = Store.in_dir(tmp_path, Retention(3600.0, 1 << 30))
    servicer = ObserverServicer(store, limits=ApiLimits(stream_responses_per_s=20.0, stream_burst=1))

    async def took(responses: int) -> float:
        loop = asyncio.get_running_loop()
        began = loop.time()
        for _ in range(responses):
            await servicer._paced()
        return loop.time() - began

    try:
        servicer.sending = 1
        alone = asyncio.run(took(50))
        servicer.sending = 2
        shared = asyncio.run(took(5))  # one at once, then one each 1/20 s
    finally:
        servicer.executor.close()
        servicer.status_executor.close()
        store.close()
    assert alone < 0.05 and servicer.pacer.waits == 4
    assert 0.18 <= shared < 0.5
