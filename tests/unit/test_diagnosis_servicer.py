"""``meshnode.v1.Diagnosis`` on a real grpc.aio server on 127.0.0.1, backed by an in-memory source."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

import grpc
import pytest
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from meshnode._exceptions import StoreError
from meshnode.diagnosis import (
    DIAGNOSIS_SERVICE,
    DiagnosisServicer,
    MemorySource,
    PeerSample,
    Transaction,
    add_to_server,
)
from meshnode.v1 import diagnosis_pb2, diagnosis_pb2_grpc, flow_pb2
from tests._support.blamefleet import blackholed_db, dead_address, fleet

S = 1_000_000_000
NOW = 1_700_000_000 * S
LABELS = {"host": "app-1", "site": "s1", "region": "eu"}
DB = "10.0.2.3:5432"


def _samples() -> list[PeerSample]:
    peers = [PeerSample(f"p{i}", {"site": "s1"}, DB, 200, 1, 500, 1000 + 20 * i, 0) for i in range(19)]
    return [*peers, PeerSample("app-1", {"site": "s1"}, DB, 200, 1, 4000, 12_300, 0),
            PeerSample("far", {"site": "s2"}, DB, 200, 1, 4000, 90_000, 0)]


def _source() -> MemorySource:
    src = MemorySource(LABELS)
    src.add(NOW - 20 * 60 * S, fleet(dead_address, 1, billing=True))  # outside the default 15 minutes
    src.add(NOW - 60 * S, fleet(blackholed_db, 2), _samples())
    return src


class FailingSource:
    def transactions(self, since_ns: int, until_ns: int) -> list[Transaction]:
        raise StoreError("store closed")

    def samples(self, since_ns: int, until_ns: int) -> list[PeerSample]:
        raise StoreError("store closed")

    def labels(self) -> Mapping[str, str]:
        return {}


async def _serve(source: object) -> AsyncIterator[tuple[diagnosis_pb2_grpc.DiagnosisStub, grpc.aio.Channel]]:
    server = grpc.aio.server()
    name = add_to_server(DiagnosisServicer(source, clock=lambda: NOW), server)  # type: ignore[arg-type]
    reflection.enable_server_reflection((name, reflection.SERVICE_NAME), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield diagnosis_pb2_grpc.DiagnosisStub(channel), channel
    finally:
        await channel.close(None)
        await server.stop(0)


def run(source: object, body: Callable[[diagnosis_pb2_grpc.DiagnosisStub, grpc.aio.Channel], Awaitable[None]]) -> None:
    async def main() -> None:
        async for stub, channel in _serve(source):
            await body(stub, channel)

    asyncio.run(asyncio.wait_for(main(), 30))


def test_blame_ranks_the_blackholed_host_over_the_default_range() -> None:
    async def body(stub: diagnosis_pb2_grpc.DiagnosisStub, _: grpc.aio.Channel) -> None:
        resp = await stub.Blame(diagnosis_pb2.BlameRequest(), timeout=10)
        assert (resp.since_ns, resp.until_ns) == (NOW - 15 * 60 * S, NOW)
        assert len(resp.suspects) == 1
        top = resp.suspects[0]
        assert (top.rank, top.kind, top.name, top.level, top.shared) == (
            1, diagnosis_pb2.ENTITY_KIND_DST_HOST, "db-1", 2, True)
        assert top.problem_fraction == 1.0 and top.problems == top.transactions > 200
        assert list(top.hosts) == ["app-1", "app-2", "app-3", "cache-1", "web-1"]
        assert list(top.sites) == ["eu/s1", "eu/s2"]
        assert dict(top.problem_kinds) == {"timeout": top.problems}
        assert len(top.examples) == 3 and top.examples[0].dst == "10.0.2.3"
        assert top.examples[0].proto == flow_pb2.TCP
        assert top.verdict.startswith("destination host db-1 (10.0.2.3) is failing: 100% of ")
        assert resp.verdict == top.verdict
        assert resp.hosts == 6 and resp.threshold == 0.2
        assert resp.transactions > resp.problems > 0

    run(_source(), body)


def test_blame_over_a_longer_range_with_a_target() -> None:
    async def body(stub: diagnosis_pb2_grpc.DiagnosisStub, _: grpc.aio.Channel) -> None:
        since = NOW - 30 * 60 * S
        # by default, the current regime only: db-1's failures began with the newer period
        now = await stub.Blame(diagnosis_pb2.BlameRequest(since_ns=since), timeout=10)
        assert [(s.kind, s.name) for s in now.suspects] == [(diagnosis_pb2.ENTITY_KIND_DST_HOST, "db-1")]
        assert now.regime_since_ns == NOW - 20 * 60 * S
        assert now.change == "destination host db-1 rose to 100% problems"
        both = await stub.Blame(diagnosis_pb2.BlameRequest(since_ns=since, whole_range=True), timeout=10)
        assert {(s.kind, s.name) for s in both.suspects} >= {
            (diagnosis_pb2.ENTITY_KIND_DST_HOST, "db-1"), (diagnosis_pb2.ENTITY_KIND_PROCESS, "app-2/billing")}
        assert (both.regime_since_ns, both.change) == (since, "")
        only = await stub.Blame(diagnosis_pb2.BlameRequest(since_ns=since, target="10.0.9.9:5432",
                                                           whole_range=True), timeout=10)
        assert [s.name for s in only.suspects] == ["app-2/billing"]
        assert not only.suspects[0].shared
        one = await stub.Blame(diagnosis_pb2.BlameRequest(since_ns=since, max_suspects=1, whole_range=True),
                               timeout=10)
        assert len(one.suspects) == 1
        older = await stub.Blame(diagnosis_pb2.BlameRequest(threshold=1.0, until_ns=NOW - 10 * 60 * S),
                                 timeout=10)
        assert older.threshold == 1.0 and older.until_ns == NOW - 10 * 60 * S
        assert [s.name for s in older.suspects] == ["app-2/billing"]  # the older period only, and 100 % failing

    run(_source(), body)


def test_healthy_range_has_no_suspect() -> None:
    async def body(stub: diagnosis_pb2_grpc.DiagnosisStub, _: grpc.aio.Channel) -> None:
        resp = await stub.Blame(diagnosis_pb2.BlameRequest(), timeout=10)
        assert list(resp.suspects) == [] and resp.verdict == "no problem above 20%"

    src = MemorySource(LABELS)
    src.add(NOW - S, fleet(lambda *a: "ok", 3))
    run(src, body)


def test_compare_places_this_host_in_its_site() -> None:
    async def body(stub: diagnosis_pb2_grpc.DiagnosisStub, _: grpc.aio.Channel) -> None:
        resp = await stub.Compare(diagnosis_pb2.CompareRequest(destination=DB), timeout=10)
        assert (resp.host, resp.group) == ("app-1", "site s1")
        [d] = resp.destinations
        assert d.outlier and d.destination == DB
        p95 = d.metrics[0]
        assert (p95.metric, p95.value, p95.peers, p95.worst_fraction, p95.outlier) == (
            "rtt_p95", 12_300, 20, 0.05, True)
        assert resp.verdict == d.verdict == (
            f"this host is in the worst 5 % of site s1 for {DB} by p95 RTT (12.3 ms vs site median 1.2 ms)")
        fleetwide = await stub.Compare(diagnosis_pb2.CompareRequest(group_by=["region"]), timeout=10)
        assert fleetwide.group == "region eu"
        assert list(fleetwide.destinations) == []
        assert fleetwide.verdict == "no peers in region eu to compare with"

    run(_source(), body)


@pytest.mark.parametrize(("request_", "code", "words"), [
    (diagnosis_pb2.BlameRequest(since_ns=NOW, until_ns=NOW - 1), grpc.StatusCode.INVALID_ARGUMENT, "since_ns"),
    (diagnosis_pb2.BlameRequest(threshold=1.5), grpc.StatusCode.INVALID_ARGUMENT, "threshold"),
    (diagnosis_pb2.BlameRequest(max_suspects=5000), grpc.StatusCode.INVALID_ARGUMENT, "max_suspects"),
    (diagnosis_pb2.CompareRequest(group_by=[""]), grpc.StatusCode.INVALID_ARGUMENT, "group_by"),
])
def test_bad_requests_name_the_field(request_: object, code: grpc.StatusCode, words: str) -> None:
    async def body(stub: diagnosis_pb2_grpc.DiagnosisStub, _: grpc.aio.Channel) -> None:
        call = stub.Blame if isinstance(request_, diagnosis_pb2.BlameRequest) else stub.Compare
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call(request_, timeout=10)
        assert err.value.code() == code and words in (err.value.details() or "")

    run(_source(), body)


def test_source_errors_are_unavailable_and_a_hostless_node_cannot_compare() -> None:
    async def body(stub: diagnosis_pb2_grpc.DiagnosisStub, _: grpc.aio.Channel) -> None:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Blame(diagnosis_pb2.BlameRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
        assert err.value.details() == "diagnosis source: store closed"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.Compare(diagnosis_pb2.CompareRequest(), timeout=10)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION

    run(FailingSource(), body)


def test_reflection_lists_the_service_meshctl_looks_for() -> None:
    async def body(_: diagnosis_pb2_grpc.DiagnosisStub, channel: grpc.aio.Channel) -> None:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)

        async def one() -> AsyncIterator[reflection_pb2.ServerReflectionRequest]:
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        names = set()
        async for resp in stub.ServerReflectionInfo(one()):
            names |= {s.name for s in resp.list_services_response.service}
        assert DIAGNOSIS_SERVICE == "meshnode.v1.Diagnosis"
        assert DIAGNOSIS_SERVICE in names

    run(_source(), body)


def test_memory_source_bounds_and_keeps_the_newest_sample() -> None:
    src = MemorySource(LABELS, max_periods=2)
    for i in range(4):
        src.add(i, [], [PeerSample("h", {}, DB, rtt_p95_us=float(i))])
    assert src.dropped == 2
    assert [s.rtt_p95_us for s in src.samples(0, 10)] == [3.0]
    assert src.samples(0, 1) == []
    assert src.labels() == LABELS


def test_every_entity_kind_has_a_wire_kind() -> None:
    from meshnode.diagnosis import ENTITY_KINDS
    from meshnode.diagnosis._servicer import _KINDS

    assert set(_KINDS) == set(ENTITY_KINDS)
    assert len(set(_KINDS.values())) == len(ENTITY_KINDS)
    assert diagnosis_pb2.ENTITY_KIND_UNKNOWN not in _KINDS.values()


def test_a_range_beyond_what_is_held_says_so() -> None:
    async def body(stub: diagnosis_pb2_grpc.DiagnosisStub, _: grpc.aio.Channel) -> None:
        far = await stub.Blame(diagnosis_pb2.BlameRequest(since_ns=NOW - 3 * 3600 * S), timeout=10)
        assert far.held_since_ns == NOW - 20 * 60 * S
        assert far.coverage == ("asked from 2023-11-14 19:13:20 UTC, but this node holds periods from "
                                "2023-11-14 21:53:20 UTC only (it holds 1 hour, or since its store began)")
        held = await stub.Blame(diagnosis_pb2.BlameRequest(since_ns=NOW - 20 * 60 * S), timeout=10)
        assert held.coverage == "" and held.held_since_ns == NOW - 20 * 60 * S
        default = await stub.Blame(diagnosis_pb2.BlameRequest(), timeout=10)  # 15 minutes, not asked for
        assert default.coverage == ""

    run(_source(), body)


def test_coverage_of_an_empty_source() -> None:
    async def body(stub: diagnosis_pb2_grpc.DiagnosisStub, _: grpc.aio.Channel) -> None:
        resp = await stub.Blame(diagnosis_pb2.BlameRequest(since_ns=NOW - 60 * S), timeout=10)
        assert resp.coverage == "asked from 2023-11-14 22:12:20 UTC, but this node holds no period yet"
        assert resp.held_since_ns == 0 and resp.suspects == []

    run(MemorySource(LABELS), body)
