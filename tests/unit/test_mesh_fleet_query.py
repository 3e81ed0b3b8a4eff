"""Fleet queries over 30 real MeshService nodes on grpc.aio servers on 127.0.0.1 (issue 6): every query is
answered by every live node, over one cached channel per peer, within the query's deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from meshnode.mesh import State
from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc
from tests._support.meshfleet import Fleet, run

N = 30


class Source:
    def __init__(self, i: int) -> None:
        self.i = i

    def local_digest(self) -> mesh_pb2.Digest:
        now = time.time_ns()
        return mesh_pb2.Digest(period_start_ns=now - 10 * 10**9, period_end_ns=now, by_destination=[
            flow_pb2.Rollup(key=f"10.9.0.{d}:5432", flows=10, useful=10 - (self.i + d) % 3, rtt_p50_us=900 + d,
                            rtt_p95_us=4000) for d in range(5)])


def _run(scenario: Callable[[Fleet], Awaitable[None]]) -> None:
    """Start N nodes, run ``scenario`` on them, and stop them all whatever happens."""
    run([Source(i) for i in range(N)], scenario)


async def _ten_complete(fleet: Fleet) -> None:
    first = fleet.meshes[0]
    want = sorted(m.node_id for m in fleet.meshes)
    async with grpc.aio.insecure_channel(first.advertise) as ch:
        stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
        for q in range(10):
            resp = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(deadline_ms=5000, group_by="region"),
                                         timeout=10)
            missing = {n.node_id: n.error for n in resp.nodes if not n.answered}
            assert not missing, f"query {q}: {len(missing)} of {N} missing: {missing}"
            assert not resp.partial
            assert sorted(n.node_id for n in resp.nodes) == want
            assert len(resp.digests) == N
            assert {a.hosts for a in resp.aggregates} == {N}
            assert sorted(a.destination for a in resp.aggregates) == sorted(f"10.9.0.{d}:5432" for d in range(5))
    # one channel per peer, reused by all ten fan-outs; none closed and reopened
    assert len(first.transport._channels) == N - 1
    assert first.transport.counters["channels_evicted"] == 0


def test_ten_queries_over_thirty_nodes_are_all_complete() -> None:
    _run(_ten_complete)


async def _bounded(fleet: Fleet) -> None:
    first = fleet.meshes[0]
    first.query_concurrency = 4
    first.transport._max_channels = 4  # as if configured too small: the fan-out sizes it to the membership
    resp = await first.fleet_query(mesh_pb2.FleetQueryRequest(deadline_ms=5000))
    assert [n.node_id for n in resp.nodes if not n.answered] == []
    assert len(resp.digests) == N
    assert first.transport.counters["channels_evicted"] == 0


def test_bounded_fan_out_still_complete_and_cache_sized_to_membership() -> None:
    _run(_bounded)


async def _slot_deadline(fleet: Fleet) -> None:
    first = fleet.meshes[0]
    first.query_concurrency = 1
    gate = asyncio.Event()
    hung = fleet.meshes[5]
    real = hung.fleet_query

    async def slow(req: mesh_pb2.FleetQueryRequest) -> mesh_pb2.FleetQueryResponse:
        await gate.wait()  # node 5 hangs: every node behind it in line waits for the one slot
        return await real(req)

    hung.fleet_query = slow  # type: ignore[method-assign]
    t = time.monotonic()
    try:
        resp = await first.fleet_query(mesh_pb2.FleetQueryRequest(deadline_ms=800))
    finally:
        gate.set()
    took = time.monotonic() - t
    unanswered = {n.node_id: n.error for n in resp.nodes if not n.answered}
    assert resp.partial and len(resp.nodes) == N
    assert hung.node_id in unanswered
    assert set(unanswered.values()) == {"DEADLINE_EXCEEDED"}
    assert took < 3.0, took


def test_the_deadline_covers_waiting_for_a_slot() -> None:
    """One call at a time and a node that hangs: the query still ends near its deadline, and the nodes it
    never reached are named with DEADLINE_EXCEEDED rather than left out."""
    _run(_slot_deadline)


async def _dead_but_serving(fleet: Fleet) -> None:
    first = fleet.meshes[0]
    serving, gone = fleet.meshes[7], fleet.meshes[8]
    await fleet.servers[8].stop(0)
    m = first.membership
    for x in (serving, gone):  # as an overloaded node's membership does: both declared dead here only
        m._set_state(m._members[x.node_id], State.DEAD)
    t = time.monotonic()
    resp = await first.fleet_query(mesh_pb2.FleetQueryRequest(deadline_ms=5000))
    took = time.monotonic() - t
    unanswered = {n.node_id: n.error for n in resp.nodes if not n.answered}
    assert unanswered == {gone.node_id: "not alive: DEAD"}
    assert len(resp.digests) == N - 1
    assert first.counters["query_answers_from_dead"] == 1
    assert took < 3.0, took  # a dead member costs at most DEAD_MEMBER_BUDGET, not the query's deadline


def test_a_member_held_dead_that_still_serves_answers_and_a_gone_one_is_named() -> None:
    _run(_dead_but_serving)
