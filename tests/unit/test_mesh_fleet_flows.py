"""Fleet flow queries over 6 real MeshService nodes on grpc.aio servers on 127.0.0.1, each answering from a
real store of its own: the merged pages hold exactly each node's records for the filter, in time order, flat
and per site; a stopped node is reported missing, an untrusted one excluded, oversized filters refused."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from meshnode._model import FlowRecord
from meshnode.api import ApiExecutor, StoreHistory
from meshnode.mesh import MeshService, State
from meshnode.store import FlowQuery, Retention, Store
from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc
from tests._support.meshfleet import Fleet, run, until

N = 6
S = 1_000_000_000
NOW = time.time_ns()


class NoDigest:
    def local_digest(self) -> None:
        return None


def _records(i: int) -> list[FlowRecord]:
    """Node i's flows: ends shared across nodes (ties are ordered by node id), ports 443 and 80."""
    return [FlowRecord(flow_id=1000 * i + j, src=f"10.1.0.{i}", sport=20000 + j, dst="10.2.0.1",
                       dport=443 if j % 3 else 80, proto="tcp", direction="outbound", pid=10 + i, comm=f"app{i}",
                       start_ns=NOW - 100 * S + j, end_ns=NOW - 50 * S + (j // 2) * 1000, outcome="established",
                       kind="final", bytes_tx=j) for j in range(10 + 3 * i)]


def _interims(i: int) -> list[FlowRecord]:
    """Node i's active flows: interim records ending at the same instants as some final ones."""
    return [FlowRecord(flow_id=9000 + 1000 * i + j, src=f"10.1.0.{i}", sport=40000 + j, dst="10.2.0.1", dport=443,
                       proto="tcp", direction="outbound", pid=10 + i, comm=f"app{i}", start_ns=NOW - 100 * S,
                       end_ns=NOW - 50 * S + j * 1000, outcome="established", kind="interim") for j in range(3 + i)]


def _fill(path: Path, i: int) -> Store:
    store = Store.in_dir(path, Retention(7 * 86400.0, 1 << 30))
    seq = store.open_period(NOW - 120 * S)
    store.close_period(seq, NOW - 40 * S, _records(i), _interims(i), "")
    return store


def _own(store: Store, dport: int, interim: bool = False) -> list[tuple[int, int]]:
    """(end_ns, flow_id) of a node's own records on dport, as its store returns them."""
    with store.reader() as conn:
        return [(sf.record.end_ns, sf.record.flow_id) for sf in store.query_flows(
            FlowQuery(equals={"dport": [dport]}, include_interim=interim), conn)]


def _run(tmp: Path, scenario: Callable[[Fleet, list[Store]], Awaitable[None]]) -> None:
    stores = [_fill(tmp / f"n{i}", i) for i in range(N)]
    executor = ApiExecutor(2)

    async def go(fleet: Fleet) -> None:
        for mesh, store in zip(fleet.meshes, stores, strict=True):
            mesh.history = StoreHistory(store, executor)
        await until(lambda: all(sum(x.state == State.ALIVE for x in m.membership.members()) == N
                                for m in fleet.meshes), 15)  # every node may ask every other
        await scenario(fleet, stores)

    try:
        run([NoDigest() for _ in range(N)], go, name="ff")  # type: ignore[misc]
    finally:
        executor.close()
        for s in stores:
            s.close()


def _req(number: int, per_site: bool = False, deadline_ms: int = 5000) -> mesh_pb2.FleetFlowsRequest:
    req = mesh_pb2.FleetFlowsRequest(per_site=per_site, deadline_ms=deadline_ms)
    req.flows.number = number
    req.flows.whitelist.add(dport=[443])
    return req


async def _all_pages(stub: mesh_pb2_grpc.MeshStub, req: mesh_pb2.FleetFlowsRequest
                     ) -> tuple[list[flow_pb2.Flow], list[mesh_pb2.FleetFlowsResponse]]:
    flows: list[flow_pb2.Flow] = []
    pages = []
    while True:
        resp = await stub.FleetFlows(req, timeout=10)
        pages.append(resp)
        assert len(resp.flows) <= req.flows.number
        flows += resp.flows
        if not resp.next_page_token:
            return flows, pages
        req.flows.page_token = resp.next_page_token


@pytest.mark.parametrize(("per_site", "rows", "interim"),
                         [(False, 5000, False), (True, 5000, False), (False, 3, False), (True, 3, False),
                          (False, 3, True), (True, 5000, True)])
def test_pages_hold_exactly_each_nodes_records_in_time_order(tmp_path: Path, per_site: bool, rows: int,
                                                             interim: bool) -> None:
    """With ``rows`` 3 each member (and site relay) sends 3 records a page: pages are cut short, and paging
    still returns every record once, in order; with ``interim`` the interim records (another store table,
    ending at the same instants as final ones) too."""
    async def scenario(fleet: Fleet, stores: list[Store]) -> None:
        for m in fleet.meshes:
            m.max_rows_per_member = rows
        ids = [m.node_id for m in fleet.meshes]
        # each node's own order (finals before interims at the same end_ns), nodes by id at the same end_ns
        want = [(end, ids[i], fid) for i, s in enumerate(stores) for end, fid in _own(s, 443, interim)]
        rank = {r: n for n, r in enumerate(want)}
        want.sort(key=lambda r: (r[0], r[1], rank[r]))
        req = _req(7, per_site)
        req.flows.include_interim = interim
        async with grpc.aio.insecure_channel(fleet.meshes[1].advertise) as ch:
            stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
            flows, pages = await _all_pages(stub, req)
        assert [(f.end_ns, f.node_id, f.flow_id) for f in flows] == want
        assert sum(f.kind == flow_pb2.INTERIM for f in flows) == (sum(3 + i for i in range(N)) if interim else 0)
        assert len(pages) == -(-len(want) // 7) if rows > 7 else len(pages) > -(-len(want) // 7)
        for resp in pages:
            assert not resp.partial and not resp.excluded
            assert [(n.node_id, n.host, n.answered) for n in resp.nodes] == sorted(
                (m.node_id, m.labels["host"], True) for m in fleet.meshes)
            assert sum(n.records for n in resp.nodes) == len(resp.flows)
            vias = {n.via for n in resp.nodes}
            assert (len(vias - {""}) == 2) if per_site else vias == {""}  # 3 sites: its own + two relays

    _run(tmp_path, scenario)


def test_a_site_relay_cannot_change_its_members_records(tmp_path: Path) -> None:
    """Per site, each relay passes on its members' own signed answers: a relay that changes a record of the
    other member of its site gets that member listed as UNTRUSTED_ANSWER (none of its records shown), and
    the relay's own records, signed by itself, still count."""
    async def scenario(fleet: Fleet, stores: list[Store]) -> None:
        ids = [m.node_id for m in fleet.meshes]
        changed: set[str] = set()

        def tampering(mesh: MeshService) -> object:
            honest = mesh.fleet_flows

            async def answer(req: mesh_pb2.FleetFlowsRequest) -> mesh_pb2.FleetFlowsResponse:
                resp = await honest(req)
                for m in resp.members:
                    if m.answer.flows and m.answer.flows[0].node_id != mesh.node_id:
                        m.answer.flows[0].bytes_rx += 1
                        changed.add(m.answer.flows[0].node_id)
                return resp
            return answer

        for mesh in fleet.meshes[1:]:
            mesh.fleet_flows = tampering(mesh)  # type: ignore[method-assign]
        resp = await fleet.meshes[0].fleet_flows(_req(1000, per_site=True))
        # sites s1 and s2 (nodes i % 3): one relay each, whose other member's answer was changed
        assert len(changed) == 2 and not changed & {ids[0], ids[3]}
        want = sorted((end, ids[i], fid) for i in range(N) if ids[i] not in changed
                      for end, fid in _own(stores[i], 443))
        assert [(f.end_ns, f.node_id, f.flow_id) for f in resp.flows] == want
        assert sorted((n.node_id, n.error) for n in resp.nodes if not n.answered) == sorted(
            (nid, "UNTRUSTED_ANSWER") for nid in changed)
        assert fleet.meshes[0].counters["fleet_flows_answers_untrusted"] == 2

    _run(tmp_path, scenario)


def test_a_stopped_node_is_missing_and_an_untrusted_one_excluded(tmp_path: Path) -> None:
    async def scenario(fleet: Fleet, stores: list[Store]) -> None:
        ids = [m.node_id for m in fleet.meshes]
        await fleet.servers[4].stop(0)  # node 4 stops answering; the others still hold it alive
        flagged = ids[5]
        first: MeshService = fleet.meshes[0]
        first.exclude = lambda nodes: {n for n in nodes if n == flagged}
        began = time.monotonic()
        resp = await first.fleet_flows(_req(1000, deadline_ms=1500))
        took = time.monotonic() - began
        assert took < 1.5 + 0.5  # at most one deadline
        want = sorted((end, ids[i], fid) for i in range(4) for end, fid in _own(stores[i], 443))
        assert [(f.end_ns, f.node_id, f.flow_id) for f in resp.flows] == want
        assert resp.partial and list(resp.excluded) == [flagged]
        missing = [(n.node_id, n.error) for n in resp.nodes if not n.answered]
        assert len(missing) == 1 and missing[0][0] == ids[4] and missing[0][1] in ("UNAVAILABLE", "DEADLINE_EXCEEDED")
        assert flagged not in {n.node_id for n in resp.nodes}

    _run(tmp_path, scenario)


def test_oversized_and_malformed_requests_are_refused_before_any_fan_out(tmp_path: Path) -> None:
    async def scenario(fleet: Fleet, stores: list[Store]) -> None:
        async with grpc.aio.insecure_channel(fleet.meshes[0].advertise) as ch:
            stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
            cases = []
            big = _req(10)
            big.flows.whitelist.add(dport=list(range(1, 1100)))
            cases.append((big, grpc.StatusCode.INVALID_ARGUMENT, "whitelist[1].dport"))
            many = _req(10)
            for _ in range(65):
                many.flows.blacklist.add(dport=[1])
            cases.append((many, grpc.StatusCode.INVALID_ARGUMENT, "blacklist"))
            bad = _req(10)
            bad.flows.whitelist.add(dst=["not-an-address"])
            cases.append((bad, grpc.StatusCode.INVALID_ARGUMENT, "whitelist[1].dst[0]"))
            cases.append((_req(5001), grpc.StatusCode.RESOURCE_EXHAUSTED, "flows.number"))
            local = _req(10)
            local.local_only = True
            local.flows.whitelist.add(comm=["x" * 5000])
            cases.append((local, grpc.StatusCode.INVALID_ARGUMENT, "whitelist[1].comm[0]"))
            for req, code, field in cases:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.FleetFlows(req, timeout=10)
                assert err.value.code() == code and field in (err.value.details() or ""), err.value.details()
        asked = sum(m.counters["fleet_flows_local_answers"] for m in fleet.meshes)
        assert asked == 0

    _run(tmp_path, scenario)


def test_members_selected_over_the_maximum_are_refused(tmp_path: Path) -> None:
    async def scenario(fleet: Fleet, stores: list[Store]) -> None:
        first = fleet.meshes[0]
        first.max_members = 5
        with pytest.raises(Exception, match="6 members selected; one query asks at most 5") as err:
            await first.fleet_flows(_req(10))
        assert getattr(err.value, "code", "") == "RESOURCE_EXHAUSTED"
        resp = await first.fleet_flows(_req(10, per_site=True))  # 3 sites: 3 relays asked
        assert len(resp.nodes) == N and not resp.partial

    _run(tmp_path, scenario)


def test_queries_beyond_the_concurrency_bounds_are_refused_and_counted(tmp_path: Path) -> None:
    """Fan-outs at once: the one over the bound is refused (RESOURCE_EXHAUSTED); a member answering as many
    requests as it will is reported missing with RESOURCE_EXHAUSTED (the retries stop within the deadline)."""
    async def scenario(fleet: Fleet, stores: list[Store]) -> None:
        first, busy = fleet.meshes[0], fleet.meshes[2]
        first.max_fan_outs = 2
        busy.max_local_answers = 0
        results = await asyncio.gather(*(first.fleet_flows(_req(10)) for _ in range(3)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, Exception)]
        assert len(refused) == 1 and getattr(refused[0], "code", "") == "RESOURCE_EXHAUSTED"
        assert "2 fleet flow queries at once" in str(refused[0])
        assert first.counters["fleet_flows_refused_busy"] == 1
        for resp in results:
            if isinstance(resp, mesh_pb2.FleetFlowsResponse):
                assert resp.partial
                assert [(n.node_id, n.error) for n in resp.nodes if not n.answered] == [
                    (busy.node_id, "RESOURCE_EXHAUSTED")]
        assert busy.counters["fleet_flows_local_refused_busy"] >= 2

    _run(tmp_path, scenario)


class SlowHistory:
    """A store that takes 5 s to answer (a member stuck on its disk)."""

    def __init__(self, inner: StoreHistory) -> None:
        self.inner = inner

    def check(self, flows: object) -> object:
        return self.inner.check(flows)  # type: ignore[arg-type]

    async def local_flows(self, *args: object) -> object:
        await asyncio.sleep(5)
        return await self.inner.local_flows(*args)  # type: ignore[arg-type]


@pytest.mark.parametrize("slow_is_relay", [False, True])
def test_a_slow_member_behind_a_site_relay_costs_one_deadline(tmp_path: Path, slow_is_relay: bool) -> None:
    """Per site, a member that does not answer in time is reported missing by its relay (or, when it is the
    relay, answers for itself late and is missing while its site's other member answered), within the asking
    node's deadline, and every other node's records are in the page."""
    async def scenario(fleet: Fleet, stores: list[Store]) -> None:
        ids = [m.node_id for m in fleet.meshes]
        site1 = [i for i in range(N) if i % 3 == 1]  # the fleet's labels: site s{i % 3}
        relay = min(site1, key=lambda i: ids[i])
        slow = relay if slow_is_relay else next(i for i in site1 if i != relay)
        slow_history = fleet.meshes[slow].history
        assert isinstance(slow_history, StoreHistory)
        fleet.meshes[slow].history = SlowHistory(slow_history)  # type: ignore[assignment]
        began = time.monotonic()
        resp = await fleet.meshes[0].fleet_flows(_req(1000, per_site=True, deadline_ms=1500))
        took = time.monotonic() - began
        assert took < 1.5 + 0.5, took
        want = sorted((end, ids[i], fid) for i in range(N) if i != slow for end, fid in _own(stores[i], 443))
        assert [(f.end_ns, f.node_id, f.flow_id) for f in resp.flows] == want
        missing = [(n.node_id, n.error, n.via) for n in resp.nodes if not n.answered]
        assert missing == [(ids[slow], "DEADLINE_EXCEEDED", ids[relay])]
        assert resp.partial

    _run(tmp_path, scenario)
