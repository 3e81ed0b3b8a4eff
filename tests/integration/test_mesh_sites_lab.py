"""Site aggregates in real nodes: 2 sites x 3 ``MeshService`` nodes on 127.0.0.1, one gRPC port each.

Membership stays in the site, the elected aggregators build and sign each site's aggregate each period and
carry it across the region, every member cross-checks, and a lying aggregator is flagged by its site. Fleet
history queries (each node answering from a real store of its own) reach the other site through one relay
of it, whose members' signed answers the asking node checks: a relay that changes a record is caught, one
that hides a member is caught by the site's aggregate, and a node killed while the query waits for it is
reported missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import grpc

from meshnode._model import FlowRecord
from meshnode.api import ApiExecutor, StoreHistory
from meshnode.daemon import NodeConfig
from meshnode.mesh import LocalHistory, MeshService, SiteConfig
from meshnode.mesh._digest import node_id_from_public_key
from meshnode.mesh._sites import REGION, SITE
from meshnode.store import FlowQuery, Retention, Store
from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc
from tests._support import tlsnode
from tests._support.meshfleet import FAST, Fleet, run, until
from tests._support.nodeproc import NodeProcess
from tests._support.tlsnode import Pki

PERIOD = 3.0
DEST = "10.9.0.1:443"


def _labels(i: int) -> dict[str, str]:
    return {"region": "eu", "site": "a" if i < 3 else "b", "host": f"h{i}"}


def _flows(i: int) -> int:
    return 10 + i


def _period_end() -> int:
    p = int(PERIOD * 1e9)
    return time.time_ns() // p * p


class _Source:
    def __init__(self, i: int) -> None:
        self.i = i

    def local_digest(self) -> mesh_pb2.Digest:
        end = _period_end()
        f = _flows(self.i)
        d = mesh_pb2.Digest(period_start_ns=end - int(PERIOD * 1e9), period_end_ns=end, by_destination=[
            flow_pb2.Rollup(key=DEST, flows=f, useful=f - 1, bytes_tx=1000 * f, bytes_rx=10 * f, service="https")])
        if self.i % 2 == 0:  # a flow with the members at 127.0.0.1 (all of them, here): it validates its site
            d.endpoints.add(src="127.0.0.1", sport=40000 + self.i, dst="127.0.0.1", dport=443)
        return d


def _sum(hosts: range) -> tuple[int, int, int]:
    return len(hosts), sum(_flows(i) for i in hosts), sum(1000 * _flows(i) for i in hosts)


WANT = {"eu/a": _sum(range(0, 3)), "eu/b": _sum(range(3, 6)), "eu": _sum(range(0, 6))}


def _row(group: str) -> tuple[int, int, int]:
    """(hosts, attempts, useful) of a fleet query's row for ``group``: each host has one useless flow."""
    hosts, flows, _ = WANT[group]
    return hosts, flows, flows - hosts


async def _publish_round(fleet: Fleet) -> int:
    """Wait for the next period boundary and publish every node's digest of the period that closed."""
    p = int(PERIOD * 1e9)
    await asyncio.sleep((p - time.time_ns() % p) / 1e9 + 0.05)
    for mesh in fleet.meshes:
        await mesh.publish()
    return _period_end()


def _decided(mesh: MeshService, level: str, group: str, end: int) -> tuple[int, int, int] | None:
    assert mesh.sites is not None
    c = mesh.sites.decided.get((level, group, end))
    if c is None:
        return None
    row = next(r for r in c.agg.by_destination if r.key == DEST)
    return c.agg.hosts, row.flows, row.bytes_tx


def _agreed(fleet: Fleet, end: int) -> bool:
    """Every node decided its site's and the region's aggregates of period ``end``, equal to the sums; every
    site aggregator also the other site's (its region pool carries it)."""
    for mesh in fleet.meshes:
        assert mesh.sites is not None
        mine = mesh.sites.site
        if _decided(mesh, SITE, mine, end) != WANT[mine] or _decided(mesh, REGION, "eu", end) != WANT["eu"]:
            return False
        other = "eu/b" if mine == "eu/a" else "eu/a"
        if mesh.sites.is_site_aggregator() and _decided(mesh, SITE, other, end) != WANT[other]:
            return False
    return True


async def _converge(fleet: Fleet, rounds: int = 4) -> int:
    for _ in range(rounds):
        end = await _publish_round(fleet)
        try:
            await until(lambda end=end: _agreed(fleet, end), PERIOD - 0.3)
            return end
        except AssertionError:
            continue
    raise AssertionError("site aggregates not agreed on in time")


def _digest_ids(resp: mesh_pb2.FleetQueryResponse) -> list[mesh_pb2.Digest]:
    return sorted((mesh_pb2.Digest.FromString(sd.payload) for sd in resp.digests), key=lambda d: d.node_id)


def _aggregates(resp: mesh_pb2.FleetQueryResponse) -> list[mesh_pb2.GroupAggregate]:
    return [mesh_pb2.GroupAggregate.FromString(sd.payload) for sd in resp.group_aggregates]


S = 1_000_000_000
NOW = time.time_ns()


def _records(i: int) -> list[FlowRecord]:
    """Node i's stored flows: ends shared across nodes (ties ordered by node id), ports 443 and 80."""
    return [FlowRecord(flow_id=100 * i + j, src=f"10.1.0.{i}", sport=20000 + j, dst="10.2.0.1",
                       dport=443 if j % 3 else 80, proto="tcp", direction="outbound", pid=10 + i, comm=f"app{i}",
                       start_ns=NOW - 100 * S + j, end_ns=NOW - 50 * S + (j // 2) * 1000, outcome="established",
                       kind="final", bytes_tx=1000 + j) for j in range(6 + 2 * i)]


def _store(path: Path, i: int) -> Store:
    store = Store.in_dir(path, Retention(7 * 86400.0, 1 << 30))
    seq = store.open_period(NOW - 120 * S)
    store.close_period(seq, NOW - 40 * S, _records(i), [], "")
    return store


def _held(store: Store, node_id: str) -> list[tuple[int, str, int, int]]:
    """(end_ns, node_id, flow_id, bytes_tx) of the node's own records on port 443, as its store holds them."""
    with store.reader() as conn:
        return [(sf.record.end_ns, node_id, sf.record.flow_id, sf.record.bytes_tx)
                for sf in store.query_flows(FlowQuery(equals={"dport": [443]}), conn)]


def _flows_req(number: int = 1000, deadline_ms: int = 10_000) -> mesh_pb2.FleetFlowsRequest:
    """A fleet flow query of port 443; the deadline long enough for a loaded machine (an answer comes as soon
    as every node answered), except where a test measures it."""
    req = mesh_pb2.FleetFlowsRequest(deadline_ms=deadline_ms)
    req.flows.number = number
    req.flows.whitelist.add(dport=[443])
    return req


Answering = Callable[[mesh_pb2.FleetFlowsRequest], Coroutine[Any, Any, mesh_pb2.FleetFlowsResponse]]
"""``MeshService.fleet_flows``, as the tests wrap it."""


def _got(resp: mesh_pb2.FleetFlowsResponse) -> list[tuple[int, str, int, int]]:
    return [(f.end_ns, f.node_id, f.flow_id, f.bytes_tx) for f in resp.flows]


async def _fleet_flows_across_sites(fleet: Fleet, stores: list[Store]) -> None:
    """``flows --fleet`` over sites: the asking node's own site directly, the other through one relay of it
    (for a member that is not an aggregator, through its site's aggregator, which is in the fleet pool).

    Which b aggregator relays is the lowest-ranked one the fleet pool lists alive, which a loaded machine's
    fast probes may briefly take for dead: the test reads the relay from each answer (``via``) and makes
    every b node ready to be the relay, rather than assuming one.
    """
    ms = fleet.meshes
    ids = [m.node_id for m in ms]
    want = sorted(r for i in range(6) for r in _held(stores[i], ids[i]))
    assert len({r[1] for r in want}) == 6
    site = {m.node_id: m.labels["site"] for m in ms}
    b_ids = set(ids[3:])
    assert ms[0].sites is not None
    a_aggs = ms[0].sites.site_aggregators()
    member = next(m for m in ms[:3] if m.node_id not in a_aggs)
    aggregator = next(m for m in ms[:3] if m.node_id == a_aggs[0])  # the one a member asks first

    def relay_of(resp: mesh_pb2.FleetFlowsResponse, out: frozenset[str] = frozenset()) -> str:
        """The one b node every b node's status names as the relay that asked it (not one of ``out``)."""
        relays = {n.via for n in resp.nodes if site[n.node_id] == "b"}
        assert len(relays) == 1 and relays <= b_ids - out, relays
        return relays.pop()

    for asker in (member, aggregator):
        resp = await asker.fleet_flows(_flows_req())
        assert _got(resp) == want, asker.labels  # exactly each node's own records, in the fleet order
        relay = relay_of(resp)
        got = {n.node_id: (n.host, n.answered, n.via, n.records) for n in resp.nodes}
        assert got == {nid: (f"h{i}", True, relay if site[nid] == "b" else "", sum(r[1] == nid for r in want))
                       for i, nid in enumerate(ids)}, asker.labels
        assert (resp.partial, resp.next_page_token) == (False, ""), asker.labels
    assert aggregator.counters["fleet_flows_queries"] >= 2  # its own query, and the member's other sites
    # page by page over gRPC: every record once, the token carrying the cursor across both sites
    async with grpc.aio.insecure_channel(member.advertise) as ch:
        stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
        req, pages = _flows_req(number=7), []
        while True:
            page = await stub.FleetFlows(req, timeout=10)
            assert 0 < len(page.flows) <= 7 and not page.partial
            pages += _got(page)
            if not page.next_page_token:
                break
            req.flows.page_token = page.next_page_token
    assert pages == want

    # a relay that changes one record of a member it passes on (and drops another member's answer while
    # saying it answered): the asking node checks each member's own signature, so neither is shown, and
    # both are missing, by node id; every other record is as its node holds it
    honest = {i: ms[i].fleet_flows for i in range(3, 6)}
    victims: list[str] = []

    def tampering(i: int) -> Answering:
        async def answer(req: mesh_pb2.FleetFlowsRequest) -> mesh_pb2.FleetFlowsResponse:
            resp = await honest[i](req)
            others = [m for m in resp.members if m.answer.flows and m.answer.flows[0].node_id != ids[i]]
            if others:
                changed, dropped = sorted(others, key=lambda m: m.answer.flows[0].node_id)
                changed.answer.flows[0].bytes_tx += 1
                victims[:] = [ids[i], changed.answer.flows[0].node_id, dropped.answer.flows[0].node_id]
                resp.members.remove(dropped)
            return resp
        return answer

    for i in range(3, 6):
        ms[i].fleet_flows = tampering(i)  # type: ignore[method-assign]
    try:
        for asker in (member, aggregator):
            resp = await asker.fleet_flows(_flows_req())
            assert len(victims) == 3
            relay, changed, dropped = victims
            assert _got(resp) == [r for r in want if r[1] not in (changed, dropped)], asker.labels
            missing = {n.node_id: (n.error, n.via) for n in resp.nodes if not n.answered}
            assert missing == {changed: ("UNTRUSTED_ANSWER", relay),
                               dropped: ("answer not passed on by its relay", relay)}, asker.labels
            assert resp.partial
    finally:
        for i in range(3, 6):
            ms[i].fleet_flows = honest[i]  # type: ignore[method-assign]
    assert aggregator.counters["fleet_flows_answers_untrusted"] == 2  # once a query: it checked for both

    # a relay that leaves a member out of its answers and of its statuses alike: nothing it sends shows that
    # member, but site b's aggregate, which the asking aggregator decided with its region and whose source
    # list it asks of b's aggregators, names it: missing, "not reported by its relay", naming the relay (the
    # member hears it from its aggregator, which checked)
    hidden: list[str] = []

    def hiding(i: int) -> Answering:
        async def answer(req: mesh_pb2.FleetFlowsRequest) -> mesh_pb2.FleetFlowsResponse:
            resp = await honest[i](req)
            others = sorted(n.node_id for n in resp.nodes if n.node_id != ids[i])
            if req.local_only or not others:
                return resp
            gone = others[0]
            hidden[:] = [ids[i], gone]
            kept = [m for m in resp.members if node_id_from_public_key(m.answer.public_key) != gone]
            statuses = [n for n in resp.nodes if n.node_id != gone]
            del resp.members[:], resp.nodes[:]
            resp.members.extend(kept)
            resp.nodes.extend(statuses)
            return resp
        return answer

    for i in range(3, 6):
        ms[i].fleet_flows = hiding(i)  # type: ignore[method-assign]
    try:
        for asker in (aggregator, member):
            resp = await asker.fleet_flows(_flows_req())
            relay, gone = hidden
            assert _got(resp) == [r for r in want if r[1] != gone], asker.labels
            missing = {n.node_id: (n.error, n.via) for n in resp.nodes if not n.answered}
            assert missing == {gone: ("not reported by its relay", relay)}, asker.labels
            assert resp.partial
    finally:
        for i in range(3, 6):
            ms[i].fleet_flows = honest[i]  # type: ignore[method-assign]
    assert aggregator.counters["fleet_flows_members_unreported"] == 2

    # a node of the other site killed while the query waits for its store: missing, by node id, within the
    # deadline; every other node's records are there
    b_aggs = ms[3].sites.site_aggregators() if ms[3].sites is not None else []
    victim = next(i for i in range(3, 6) if ids[i] not in b_aggs)
    asked = asyncio.Event()
    inner = ms[victim].history
    assert inner is not None
    history: LocalHistory = inner

    class Stuck:
        def check(self, flows: object) -> object:
            return history.check(flows)  # type: ignore[arg-type]

        async def local_flows(self, *args: object) -> object:
            asked.set()
            await asyncio.sleep(30)
            raise AssertionError("unreachable: the node is killed first")

    async def kill(i: int) -> None:
        await fleet.servers[i].stop(0)
        await ms[i].stop(leave=False)

    ms[victim].history = Stuck()  # type: ignore[assignment]
    began = time.monotonic()
    query = asyncio.ensure_future(member.fleet_flows(_flows_req(deadline_ms=3000)))
    await asyncio.wait_for(asked.wait(), 3)
    await kill(victim)
    resp = await query
    took = time.monotonic() - began
    assert took < 3.0 + 0.3, took
    assert _got(resp) == [r for r in want if r[1] != ids[victim]]
    relay = relay_of(resp, frozenset({ids[victim]}))
    lost = {n.node_id: (n.answered, n.via) for n in resp.nodes if not n.answered}
    assert lost == {ids[victim]: (False, relay)} and resp.partial
    err = next(n.error for n in resp.nodes if n.node_id == ids[victim])
    assert err in ("UNAVAILABLE", "CANCELLED", "DEADLINE_EXCEEDED"), err

    # the relay itself killed while the query waits for it: the other b aggregator is asked in its place
    # with the time left, and answers for what is left of its site
    held: list[int] = []

    def first_relay_held(i: int) -> Answering:
        async def answer(req: mesh_pb2.FleetFlowsRequest) -> mesh_pb2.FleetFlowsResponse:
            if not req.local_only and not held:  # the first relay asked: killed while it works
                held.append(i)
                asked.set()
                await asyncio.sleep(30)
            return await honest[i](req)
        return answer

    alive = [i for i in range(3, 6) if i != victim]
    for i in alive:
        ms[i].fleet_flows = first_relay_held(i)  # type: ignore[method-assign]
    asked.clear()
    began = time.monotonic()
    query = asyncio.ensure_future(member.fleet_flows(_flows_req(deadline_ms=3000)))
    await asyncio.wait_for(asked.wait(), 3)
    await kill(held[0])
    resp = await query
    took = time.monotonic() - began
    assert took < 3.0 + 0.3, took
    gone = frozenset({ids[victim], ids[held[0]]})
    assert _got(resp) == [r for r in want if r[1] not in gone]
    assert {n.node_id for n in resp.nodes if not n.answered} == gone and resp.partial
    assert relay_of(resp, gone) == next(ids[i] for i in alive if i != held[0])


def test_two_sites_keep_membership_within_the_site_and_agree_on_signed_aggregates(tmp_path: Path) -> None:
    stores = [_store(tmp_path / f"s{i}", i) for i in range(6)]
    executor = ApiExecutor(2)

    async def scenario(fleet: Fleet) -> None:
        for mesh, store in zip(fleet.meshes, stores, strict=True):
            mesh.history = StoreHistory(store, executor)
        # membership per site only (Fleet.start waited for it): a node lists its own site's 3 nodes
        for mesh in fleet.meshes:
            assert sorted(x.labels["host"] for x in mesh.membership.members()) == (
                ["h0", "h1", "h2"] if mesh.labels["site"] == "a" else ["h3", "h4", "h5"])
        await _converge(fleet)
        aggs = [m for m in fleet.meshes if m.sites is not None and m.sites.is_site_aggregator()]
        assert len(aggs) == 4  # k = 2 a site
        for mesh in aggs:  # the fleet pool: every site aggregator, on the same port as the site pool
            assert mesh.sites is not None
            fleet_pool = mesh.sites.pools["fleet"].membership
            assert fleet_pool is not None and fleet_pool.address == mesh.advertise
            assert {x.node_id for x in fleet_pool.members()} == {m.node_id for m in aggs}
        # digests are not gossiped: an aggregator holds its site's (pushed to it), a member those of the
        # members it validates (pulled each period: the other ends of its flows) and its own
        site_ids = {m.node_id: {x.node_id for x in fleet.meshes if x.labels["site"] == m.labels["site"]}
                    for m in fleet.meshes}

        def held_as_designed() -> bool:
            for i, m in enumerate(fleet.meshes):
                want = site_ids[m.node_id] if m in aggs or i % 2 == 0 else {m.node_id}
                if set(m.exchange.held()) != want:
                    return False
            return True

        await until(held_as_designed, PERIOD)
        assert all(len(m.exchange._announces) == 0 and m.exchange.counters["digests_accepted"] > 0
                   for m in fleet.meshes if m in aggs)
        assert any(m.sites is not None and m.sites.counters["validation_pulls"] > 0 for m in fleet.meshes)
        # every node answers for the other site (and its own) with the sums of that site's digests, from
        # the signed aggregates (the other site's digests never reach it)
        for mesh in fleet.meshes:
            got = await mesh.fleet_query(mesh_pb2.FleetQueryRequest(group_by="site", destination=DEST))
            rows = {r.group: (r.hosts, r.attempts, r.useful) for r in got.aggregates}
            assert rows == {"eu/a": _row("eu/a"), "eu/b": _row("eu/b")}, mesh.labels
            other = "eu/b" if mesh.labels["site"] == "a" else "eu/a"
            assert [d.node_id for d in _digest_ids(got)] == sorted(
                m.node_id for m in fleet.meshes if m.labels["site"] == mesh.labels["site"])
            assert [a.group for a in _aggregates(got)] == [other]
            whole = await mesh.fleet_query(mesh_pb2.FleetQueryRequest(destination=DEST))
            assert [(r.group, r.hosts, r.attempts, r.useful) for r in whole.aggregates] == [("fleet", *_row("eu"))]
        # descending into the other site, only when asked: its members' digests, verified here, per host
        # (asked of a member that is not an aggregator: it asks through its site's aggregators)
        asker = next(m for m in fleet.meshes if m.labels["site"] == "a" and m not in aggs)
        async with grpc.aio.insecure_channel(asker.advertise) as ch:
            stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
            got = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(selector={"site": "b"}, group_by="host"))
        assert {r.group: r.attempts for r in got.aggregates} == {f"eu/b/h{i}": _flows(i) for i in range(3, 6)}
        assert (sorted(n.node_id for n in got.nodes if n.answered), got.partial) == (
            sorted(m.node_id for m in fleet.meshes if m.labels["site"] == "b"), False)
        assert asker.counters["fleet_queries_descended"] == 1

        # a pool a node does not run: packets dropped and counted, streams refused UNAVAILABLE
        plain = next(m for m in fleet.meshes if m.sites is not None and not m.sites.is_site_aggregator())
        async with grpc.aio.insecure_channel(plain.advertise) as ch:
            stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
            await stub.Packet(mesh_pb2.PacketRequest(from_addr="127.0.0.1:1", payload=b"", pool="fleet"))
            await stub.Packet(mesh_pb2.PacketRequest(from_addr="127.0.0.1:1", payload=b"", pool="p" * 17))
            try:
                await stub.Stream(mesh_pb2.StreamRequest(from_addr="127.0.0.1:1", payload=b"", pool="fleet"))
                raise AssertionError("a stream to a pool not run here was answered")
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.UNAVAILABLE
        assert (plain.counters["packets_no_pool"], plain.counters["streams_no_pool"],
                plain.counters["packets_oversize"]) == (1, 1, 1)

        # a site b aggregator lies: its site aggregate claims ten times the flows
        liar = next(m for m in aggs if m.labels["site"] == "b")
        assert liar.sites is not None
        honest_build = liar.sites._own_candidate

        def inflate(a: mesh_pb2.GroupAggregate) -> None:
            if a.level == SITE:
                a.by_destination[0].flows *= 10
            honest_build(a)

        liar.sites._own_candidate = inflate  # type: ignore[method-assign]
        site_b = [m for m in fleet.meshes if m.labels["site"] == "b" and m is not liar]

        def caught() -> bool:
            return all(m.sites is not None and liar.node_id in m.sites.flagged for m in site_b)

        for _ in range(3):
            end = await _publish_round(fleet)
            try:
                await until(caught, PERIOD - 0.3)
                break
            except AssertionError:
                continue
        assert caught()
        for m in site_b:
            assert m.sites is not None
            assert m.sites.flagged[liar.node_id].endswith("does not equal the sum of its sources")
            await until(lambda m=m, end=end: _decided(m, SITE, "eu/b", end) is not None, PERIOD)
            c = m.sites.decided[(SITE, "eu/b", end)]
            assert (c.agg.aggregator != liar.node_id, _decided(m, SITE, "eu/b", end)) == (True, WANT["eu/b"])

        await _fleet_flows_across_sites(fleet, stores)

    try:
        run([_Source(i) for i in range(6)], scenario, name="sites", labels=_labels,
            site_config=SiteConfig(aggregators=2, period=PERIOD), config=FAST, timeout=60)
    finally:
        executor.close()
        for store in stores:
            store.close()


def test_meshnode_run_with_site_aggregators_sums_the_other_site_from_its_members_digests(tmp_path: Path) -> None:
    """Four ``meshnode run`` processes (2 sites x 2) with ``MESHNODE_SITE_AGGREGATORS=2``: membership per site,
    and a node's answer for the other site equals the sum of that site's members' signed digests."""
    nodes: list[NodeProcess] = []
    try:
        for i in range(4):
            env = {"MESHNODE_SITE_AGGREGATORS": "2", "MESHNODE_NODE_ID": f"n{i}",
                   "MESHNODE_LABELS": f"region=eu,site={'a' if i < 2 else 'b'}"}
            if nodes:
                env["MESHNODE_JOIN"] = nodes[0].address
            nodes.append(NodeProcess(tmp_path / f"n{i}", flows_per_poll=5, export_period=2.0, env=env).start())
        stubs = [mesh_pb2_grpc.MeshStub(grpc.insecure_channel(n.address))  # type: ignore[no-untyped-call]
                 for n in nodes]
        deadline = time.monotonic() + 25
        while True:
            assert time.monotonic() < deadline, "the other site's aggregate did not match its digests in time"
            time.sleep(0.5)
            peers = [sorted(p.labels["host"] for p in s.Peers(mesh_pb2.PeersRequest()).peers) for s in stubs]
            if peers != [["n0", "n1"], ["n0", "n1"], ["n2", "n3"], ["n2", "n3"]]:
                continue
            got = stubs[0].FleetQuery(mesh_pb2.FleetQueryRequest(group_by="site"))
            other = [a for a in _aggregates(got) if a.group == "eu/b"]
            if not other or other[0].hosts != 2:
                continue
            agg = other[0]
            held = stubs[2].Digests(mesh_pb2.DigestsRequest())
            p = int(2.0 * 1e9)
            digests = [d for d in (mesh_pb2.Digest.FromString(sd.payload) for sd in held.digests)
                       if (d.period_end_ns + p // 2) // p * p == agg.period_end_ns]
            if len(digests) != 2:
                continue  # n2 holds a newer period already: ask again
            want: dict[str, int] = {}
            for d in digests:
                for r in d.by_destination:
                    want[r.key] = want.get(r.key, 0) + r.flows
            rows = {r.destination: (r.hosts, r.attempts) for r in got.aggregates if r.group == "eu/b"}
            assert agg.rollups_truncated == 0 and want
            assert rows == {k: (2, v) for k, v in want.items()}
            assert {r.group for r in got.aggregates} == {"eu/a", "eu/b"}
            break
    finally:
        for n in nodes:
            n.kill()


def test_sites_under_mutual_tls_answer_and_descend_across_sites(tmp_path: Path) -> None:
    """The same 2 x 3 fleet with node certificates (``meshnode run``'s security): pools, locate and the
    signed fleet queries of a member to its aggregator and of an aggregator to another site's work."""

    stores = [_store(tmp_path / f"s{i}", i) for i in range(6)]
    executor = ApiExecutor(2)

    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        async with contextlib.AsyncExitStack() as stack:
            fleet = Fleet("tls", _labels, SiteConfig(aggregators=2, period=PERIOD), FAST)
            for i in range(6):
                cfg = NodeConfig(tls_dir=pki.node(f"n{i}"), data_dir=tmp_path / f"d{i}")
                cfg.data_dir.mkdir()

                def setup(mesh: MeshService, i: int = i) -> None:
                    mesh.labels = _labels(i)
                    mesh.site_config = fleet.site_config
                    mesh.config = FAST
                    mesh.source = _Source(i)
                    mesh.rejoin_interval = 1.0
                    mesh.history = StoreHistory(stores[i], executor)

                seeds = (fleet.meshes[0].advertise,) if fleet.meshes else ()
                _addr, mesh = await stack.enter_async_context(tlsnode.node(cfg, seeds=seeds, before_start=setup))
                fleet.meshes.append(mesh)
            await until(fleet.sites_formed, 15)
            assert all(m.node_certificates_only for m in fleet.meshes)
            await _converge(fleet)
            aggs = [m for m in fleet.meshes if m.sites is not None and m.sites.is_site_aggregator()]
            member = next(m for m in fleet.meshes if m.labels["site"] == "a" and m not in aggs)
            got = await member.fleet_query(mesh_pb2.FleetQueryRequest(group_by="site", destination=DEST))
            assert {r.group: (r.hosts, r.attempts, r.useful) for r in got.aggregates} == {
                "eu/a": _row("eu/a"), "eu/b": _row("eu/b")}
            down = await member.fleet_query(mesh_pb2.FleetQueryRequest(selector={"site": "b"}, group_by="host"))
            assert {r.group: r.attempts for r in down.aggregates} == {f"eu/b/h{i}": _flows(i) for i in range(3, 6)}
            assert not down.partial
            # fleet history across sites: the member asks its own site, its aggregator the other site's relay
            flows = await member.fleet_flows(_flows_req())
            assert _got(flows) == sorted(r for i, m in enumerate(fleet.meshes) for r in _held(stores[i], m.node_id))
            assert len(flows.nodes) == 6 and not flows.partial
            # every fleet query between nodes was signed and authorized: a member by its site's aggregator,
            # an aggregator by the other site's as a fleet-pool member; none refused
            refused = {k: v for m in fleet.meshes for k, v in m.counters.items()
                       if k.startswith("requests_") and k not in ("requests_authorized", "requests_unsigned_allowed")}
            assert refused == {}
            assert sum(m.counters["requests_authorized"] for m in fleet.meshes) >= 3

    try:
        asyncio.run(asyncio.wait_for(main(), 60))
    finally:
        executor.close()
        for store in stores:
            store.close()
