"""Three MeshService nodes on real grpc.aio servers on 127.0.0.1: join, converge, digests, fleet queries."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import grpc
import pytest

from meshnode.mesh import (
    DIGEST_VERSION,
    RETRYABLE_CODES,
    MeshService,
    NodeKey,
    State,
    sign_digest,
    with_retries,
)
from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc
from tests._support.meshfleet import FAST

DB = "10.9.0.5:5432"


class Source:
    """A node's local digest: node i sees DB with i failures out of 10."""

    def __init__(self, i: int) -> None:
        self.i = i

    def local_digest(self) -> mesh_pb2.Digest:
        now = time.time_ns()
        return mesh_pb2.Digest(period_start_ns=now - 60 * 10**9, period_end_ns=now, by_destination=[
            flow_pb2.Rollup(key=DB, flows=10, useful=10 - self.i, failures={"timeout": self.i} if self.i else {},
                            rtt_p50_us=1000 * (self.i + 1), rtt_p95_us=5000)])


async def _until(pred: Callable[[], bool], timeout: float = 5.0) -> float:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)
    return time.monotonic() - start


async def _node(i: int, seeds: list[str]) -> tuple[grpc.aio.Server, MeshService]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    mesh = MeshService(
        # node 1 learns its address late, as a daemon does when its API server binds port 0
        advertise="not-yet:0" if i == 1 else f"127.0.0.1:{port}", key=NodeKey.from_seed(f"grpc-{i}".encode()),
        labels={"region": "eu", "site": f"s{i % 2}", "host": f"h{i}"}, seeds=seeds, source=Source(i),
        config=FAST, export_period=0, rng=random.Random(i),
    )
    mesh.register(server)
    await server.start()
    mesh.advertise = f"127.0.0.1:{port}"
    await mesh.start()
    return server, mesh


def _alive(mesh: MeshService) -> set[str]:
    return {m.node_id for m in mesh.membership.members() if m.state == State.ALIVE}


async def _scenario() -> None:
    nodes = [await _node(0, [])]
    for i in (1, 2):
        nodes.append(await _node(i, [nodes[0][1].advertise]))
    meshes = [m for _, m in nodes]
    ids = {m.node_id for m in meshes}
    assert [m.joined for m in meshes] == [0, 1, 1]
    try:
        took = await _until(lambda: all(_alive(m) == ids for m in meshes))
        assert took < 5.0
        for m in meshes:
            assert (await m.publish()) is not None
        await _until(lambda: all(len(m.exchange.held()) == 3 for m in meshes))

        channel = grpc.aio.insecure_channel(meshes[0].advertise)
        stub = mesh_pb2_grpc.MeshStub(channel)
        peers = await stub.Peers(mesh_pb2.PeersRequest(), timeout=2)
        assert [p.is_self for p in peers.peers] == [True, False, False]
        assert {p.node_id for p in peers.peers} == ids
        assert all(p.state == mesh_pb2.ALIVE and p.digest_seq > 0 and p.digest_age_ms >= 0 for p in peers.peers)
        assert {p.labels["host"] for p in peers.peers} == {"h0", "h1", "h2"}
        assert peers.counters["digests_accepted"] == 2

        digests = await stub.Digests(mesh_pb2.DigestsRequest(), timeout=2)
        assert len(digests.digests) == 3

        # a key that never joined signs a valid digest: the node drops it as unknown, and counts it
        outsider = NodeKey.from_seed(b"grpc-outsider")
        forged = Source(9).local_digest()
        forged.MergeFrom(mesh_pb2.Digest(version=DIGEST_VERSION, node_id=outsider.node_id, seq=1))
        assert not meshes[0].exchange.ingest(sign_digest(outsider, forged), "test")
        peers = await stub.Peers(mesh_pb2.PeersRequest(), timeout=2)
        assert (peers.counters["digests_unknown_key"], len(peers.peers)) == (1, 3)

        q = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(destination=DB, deadline_ms=2000), timeout=5)
        assert not q.partial
        assert sorted(n.node_id for n in q.nodes if n.answered) == sorted(ids)
        (fleet,) = q.aggregates
        assert (fleet.group, fleet.hosts, fleet.attempts, fleet.useful) == ("fleet", 3, 30, 27)
        assert fleet.useful_fraction_median == pytest.approx(0.9)
        assert dict(fleet.failures) == {"timeout": 3}
        assert fleet.rtt_p50_us_median == 2000

        by_site = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(group_by="site", deadline_ms=2000), timeout=5)
        assert [(a.group, a.hosts) for a in by_site.aggregates] == [("eu/s0", 2), ("eu/s1", 1)]

        other = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(service="ssh", deadline_ms=2000), timeout=5)
        assert (list(other.aggregates), other.partial, len(other.digests)) == ([], False, 3)

        selected = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(selector={"site": "s1"}), timeout=5)
        assert [n.node_id for n in selected.nodes] == [meshes[1].node_id]

        # node 2 stops without a word: the query says it is missing, and why
        await nodes[2][0].stop(0)
        q = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(destination=DB, deadline_ms=500), timeout=5)
        assert q.partial
        missing = [n for n in q.nodes if not n.answered]
        assert [n.node_id for n in missing] == [meshes[2].node_id]
        assert missing[0].error in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert q.aggregates[0].hosts == 2
        await nodes[2][1].stop(leave=False)

        # and it is declared dead soon; then node 1 leaves gracefully and is seen as left
        await _until(lambda: meshes[0].membership.state_of(meshes[2].node_id) == State.DEAD, timeout=10.0)
        await nodes[1][1].stop(leave_timeout=1.0)
        await _until(lambda: meshes[0].membership.state_of(meshes[1].node_id) == State.LEFT)
        q = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(deadline_ms=500), timeout=5)
        errors = {n.node_id: n.error for n in q.nodes if not n.answered}
        assert errors == {meshes[1].node_id: "not alive: LEFT", meshes[2].node_id: "not alive: DEAD"}
        await channel.close()
    finally:
        for server, mesh in nodes:
            await mesh.stop(leave_timeout=0.1)
            await server.stop(0)


def test_three_nodes_join_converge_and_answer_fleet_queries():
    asyncio.run(asyncio.wait_for(_scenario(), 60))


def test_bad_stream_request_is_refused_with_invalid_argument():
    async def run() -> None:
        server, mesh = await _node(7, [])
        try:
            async with grpc.aio.insecure_channel(mesh.advertise) as channel:
                stub = mesh_pb2_grpc.MeshStub(channel)
                with pytest.raises(grpc.aio.AioRpcError) as info:
                    await stub.Stream(mesh_pb2.StreamRequest(from_addr="evil:1", payload=b"\xff\xff"), timeout=2)
                assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                await stub.Packet(mesh_pb2.PacketRequest(from_addr="evil:1", payload=b"\xff\xff"), timeout=2)
                assert mesh.membership.counters["packets_malformed"] == 1
                await stub.Packet(mesh_pb2.PacketRequest(from_addr="evil:1", payload=b"\0" * 10_000), timeout=2)
                peers = await stub.Peers(mesh_pb2.PeersRequest(), timeout=2)
                assert peers.counters["packets_oversize"] == 1
                assert peers.counters["packets_malformed"] == 1
        finally:
            await mesh.stop(leave_timeout=0.1)
            await server.stop(0)

    asyncio.run(asyncio.wait_for(run(), 30))


class _Flaky(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="test")


@pytest.mark.parametrize(
    ("codes", "calls", "outcome"),
    [
        ([grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE], 3, "ok"),
        ([grpc.StatusCode.UNAVAILABLE] * 3, 3, "UNAVAILABLE"),
        ([grpc.StatusCode.INVALID_ARGUMENT], 1, "INVALID_ARGUMENT"),
        ([grpc.StatusCode.DEADLINE_EXCEEDED], 1, "DEADLINE_EXCEEDED"),
    ],
)
def test_retries_only_retryable_codes(codes, calls, outcome):
    seen: list[int] = []

    async def call() -> str:
        seen.append(1)
        if len(seen) <= len(codes):
            raise _Flaky(codes[len(seen) - 1])
        return "ok"

    async def run() -> str:
        try:
            return await with_retries(call, attempts=3, budget=5.0)
        except grpc.aio.AioRpcError as exc:
            return exc.code().name

    assert asyncio.run(run()) == outcome
    assert len(seen) == calls
    assert grpc.StatusCode.UNAVAILABLE in RETRYABLE_CODES
    assert grpc.StatusCode.INVALID_ARGUMENT not in RETRYABLE_CODES


def test_own_server_mode_and_period_listener():
    from meshnode.summary import PeriodSummary, Rollup

    async def run() -> None:
        meshes: list[MeshService] = []
        try:
            for i in range(2):
                mesh = MeshService(
                    advertise="127.0.0.1:0", listen="127.0.0.1:0", key=NodeKey.from_seed(f"own-{i}".encode()),
                    labels={"region": "eu", "host": f"o{i}"}, seeds=[meshes[0].advertise] if meshes else [],
                    config=FAST, rng=random.Random(i),
                )
                await mesh.start()
                assert not mesh.advertise.endswith(":0")
                meshes.append(mesh)
            a, b = meshes
            assert a.name == "mesh" and b.joined == 1
            await _until(lambda: _alive(a) == _alive(b) == {a.node_id, b.node_id})
            seen_a: list[tuple[str, bool]] = []
            seen_b: list[tuple[str, bool]] = []
            a.digest_listeners.append(lambda d, _s, own: seen_a.append((d.node_id, own)))
            b.digest_listeners.append(lambda d, _s, own: seen_b.append((d.node_id, own)))
            a.addresses = lambda: ["10.9.0.1", "10.9.0.1", "fd00::1"]

            def decorate(d: mesh_pb2.Digest, period: object, records: object) -> None:
                d.rollups_truncated = len(list(records))  # type: ignore[call-overload]

            def broken(d: mesh_pb2.Digest, period: object, records: object) -> None:
                raise RuntimeError("a decorator's bug")

            def period(seq: int) -> PeriodSummary:
                now = time.time_ns()
                return PeriodSummary(node_id="ignored", seq=seq, period_start_ns=now - 10**10, period_end_ns=now,
                                     by_destination=[Rollup(key=DB, flows=4, useful=3, failures={"refused": 1})])

            # a broken decorator (a privacy filter, say): the digest goes out with nothing naming an address
            a.digest_decorators.extend([broken, decorate])
            a.on_period(period(1), ["r1", "r2"])  # type: ignore[list-item]
            await _until(lambda: b.exchange.latest(a.node_id) is not None)
            got = b.exchange.latest(a.node_id)
            assert got is not None
            assert (len(got.digest.by_destination), len(got.digest.addresses), got.digest.rollups_truncated) == (
                0, 0, 0)
            assert dict(got.digest.labels) == {"region": "eu", "host": "o0"}
            assert a.counters["digest_decorator_failures"] == 1
            a.digest_decorators.remove(broken)
            first = got.digest.seq
            a.on_period(period(2), ["r1", "r2"])  # type: ignore[list-item]
            await _until(lambda: (h := b.exchange.latest(a.node_id)) is not None and h.digest.seq > first)
            got = b.exchange.latest(a.node_id)
            assert got is not None
            (r,) = got.digest.by_destination
            assert (r.key, r.flows, r.useful, dict(r.failures)) == (DB, 4, 3, {"refused": 1})
            assert dict(got.digest.labels) == {"region": "eu", "host": "o0"}
            assert list(got.digest.addresses) == ["10.9.0.1", "fd00::1"]  # deduplicated, sorted
            assert got.digest.rollups_truncated == 2  # the decorator ran on the records
            assert seen_a == [(a.node_id, True)] * 2 and seen_b == [(a.node_id, False)] * 2
            assert a.member_ips() == {"127.0.0.1"}
        finally:
            for m in meshes:
                await m.stop(leave_timeout=0.2)

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_node_whose_seed_was_not_up_yet_joins_within_seconds_of_it():
    """Nodes started together: b's seed a is not listening yet when b starts, so b's join fails. b retries
    soon, then less often (up to every rejoin_interval, 10 s): it joins within about a second of a."""
    import socket

    async def run() -> float:
        with socket.socket() as s:  # a free port for a, taken only later
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        seed = f"127.0.0.1:{port}"
        b = MeshService(advertise="127.0.0.1:0", listen="127.0.0.1:0", key=NodeKey.from_seed(b"late-b"),
                        seeds=[seed], config=FAST, rng=random.Random(1))
        a = MeshService(advertise=seed, listen=seed, key=NodeKey.from_seed(b"late-a"), config=FAST,
                        rng=random.Random(2))
        try:
            await b.start()
            assert b.joined == 0
            await asyncio.sleep(0.3)
            await a.start()
            took = await _until(lambda: _alive(a) == _alive(b) == {a.node_id, b.node_id}, timeout=9.0)
            assert b.counters["rejoins"] >= 1 and b.joined == 1
            return took
        finally:
            await b.stop(leave=False)
            await a.stop(leave=False)

    assert asyncio.run(asyncio.wait_for(run(), 30)) < 3.0

