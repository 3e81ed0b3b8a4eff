"""MeshTrust, cross-validation wired into the node's mesh: the digest decorator (endpoint records of flows with
members, kinds, privacy, the test-only lie), and the monitor fed by real MeshService nodes on 127.0.0.1 gRPC
(a liar flagged, left out of fleet aggregates with the count, served by Trust.Validate)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest

from meshnode._exceptions import ConfigError
from meshnode._model import FlowRecord
from meshnode.mesh import MeshConfig, MeshService, NodeKey, State, endpoint_records
from meshnode.summary import PeriodSummary, Rollup
from meshnode.trust import (
    HASH_PREFIX,
    CrossValidator,
    Lie,
    MeshTrust,
    PrivacyPolicy,
    ValidationConfig,
    claims_from_digest,
)
from meshnode.trust._wiring import CONTACT_PERIODS, apply_lie
from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc, trust_pb2, trust_pb2_grpc

S = 10**9
FAST = MeshConfig(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, push_pull_interval=1.0,
                  suspicion_mult=3, stream_timeout=1.0, reconnect_interval=0)
IPS = ["10.20.0.1", "10.20.0.2", "10.20.0.3"]
EXTERNAL = "203.0.113.77"
NEWCOMER = "10.20.0.4"
SEED = "10.20.0.9"
DB = "10.9.0.5:5432"


def rec(src: str, sport: int, dst: str, dport: int, direction: str, tx: int, rx: int, *, kind: str = "final",
        outcome: str = "established", start: int = 0) -> FlowRecord:
    start = start or time.time_ns() - 5 * S
    return FlowRecord(flow_id=sport, src=src, sport=sport, dst=dst, dport=dport, proto="tcp", direction=direction,
                      start_ns=start, end_ns=start + S, bytes_tx=tx, bytes_rx=rx, packets_tx=9, packets_rx=9,
                      outcome=outcome, srtt_us=900, kind=kind)


# ---------------------------------------------------------------------------------------------- the lie


def test_lie_is_refused_without_the_test_guard_and_parsed_with_it():
    assert Lie.from_env({}) is None
    with pytest.raises(ConfigError, match="MESHNODE_ALLOW_FAKE_SENSOR=1"):
        Lie.from_env({"MESHNODE_TEST_LIE": "double_tx:10.0.0.2"})
    ok = {"MESHNODE_ALLOW_FAKE_SENSOR": "1"}
    assert Lie.from_env({**ok, "MESHNODE_TEST_LIE": "double_tx:10.0.0.2"}) == Lie("double_tx", "10.0.0.2")
    assert Lie.from_env({**ok, "MESHNODE_TEST_LIE": "hide:10.0.0.2:8080"}) == Lie("hide", "10.0.0.2", 8080)
    assert Lie.from_env({**ok, "MESHNODE_TEST_LIE": "hide:fd00::2"}) == Lie("hide", "fd00::2")
    assert Lie.from_env({**ok, "MESHNODE_TEST_LIE": "double_tx:10.0.0.2:31000"}) == Lie("double_tx", "10.0.0.2", 31000)
    assert Lie.from_env({**ok, "MESHNODE_TEST_LIE": "double_tx:10.0.0.2:31000, hide:10.0.0.3:31001"}) == Lie(
        "double_tx", "10.0.0.2", 31000, also=(Lie("hide", "10.0.0.3", 31001),))
    with pytest.raises(ConfigError, match="expected"):
        Lie.from_env({**ok, "MESHNODE_TEST_LIE": "triple:10.0.0.2"})


def test_each_lie_misreports_the_digest_as_its_class_says():
    def digest() -> mesh_pb2.Digest:
        return mesh_pb2.Digest(period_start_ns=10 * 10**9, period_end_ns=12 * 10**9, addresses=["10.0.0.1", "fd00::1"],
                               endpoints=[flow_pb2.Flow(src="10.0.0.1", sport=40000, dst="10.0.0.2", dport=80,
                                                        direction=flow_pb2.OUTBOUND, bytes_tx=1000)])
    d = digest()
    assert apply_lie(Lie("halve_tx", "10.0.0.2", 80), d) == 1 and d.endpoints[0].bytes_tx == 500
    d = digest()
    assert apply_lie(Lie("claim", "10.0.0.3"), d) == 1 and list(d.addresses) == ["10.0.0.1", "fd00::1", "10.0.0.3"]
    d = digest()
    assert apply_lie(Lie("invent", "10.0.0.4", 9000), d) == 1
    made = d.endpoints[1]
    assert (made.src, made.dst, made.dport, made.outcome, made.kind) == (
        "10.0.0.1", "10.0.0.4", 9000, flow_pb2.ESTABLISHED, flow_pb2.FINAL)
    assert d.period_start_ns < made.start_ns < made.end_ns < d.period_end_ns


# ---------------------------------------------------------------------------------------------- decorator


@dataclass
class _Held:
    digest: mesh_pb2.Digest


@dataclass
class _Member:
    node_id: str
    addr: str


@dataclass
class _Exchange:
    digests: dict[str, _Held] = field(default_factory=dict)

    def held(self) -> dict[str, _Held]:
        return dict(self.digests)


class FakeMesh:
    """The seams MeshTrust uses, without sockets: node "me" at IPS[0]; a peer known by its digest's addresses
    (IPS[1]) and one known only by its mesh address (IPS[2])."""

    def __init__(self) -> None:
        self.node_id = "me"
        self.advertise = f"{IPS[0]}:7400"
        self.seeds = [f"{SEED}:7400"]
        self.running = True
        self.addresses: Callable[[], list[str]] | None = lambda: [IPS[0]]
        self.exchange = _Exchange({"peer1": _Held(mesh_pb2.Digest(node_id="peer1", addresses=[IPS[1]]))})
        self._members = [_Member("me", f"{IPS[0]}:7400"), _Member("peer2", f"{IPS[2]}:7400")]
        self.digest_decorators: list[Any] = []
        self.digest_listeners: list[Any] = []
        self.forget_listeners: list[Any] = []
        self.exclude: Any = None

    @property
    def membership(self) -> FakeMesh:
        return self

    def members(self) -> list[_Member]:
        return self._members


def _decorated(trust: MeshTrust, records: list[FlowRecord]) -> mesh_pb2.Digest:
    now = time.time_ns()
    period = PeriodSummary(node_id="me", seq=1, period_start_ns=now - 10 * S, period_end_ns=now,
                           by_destination=[Rollup(key=f"{EXTERNAL}:443", flows=1, useful=1)])
    d = mesh_pb2.Digest(period_start_ns=period.period_start_ns, period_end_ns=now, addresses=[IPS[0]],
                        by_destination=[flow_pb2.Rollup(key=f"{EXTERNAL}:443", flows=1, useful=1)],
                        measurements=[mesh_pb2.MeasureResponse(target=f"{EXTERNAL}:443")])
    trust.decorate(d, period, records)
    return d


RECORDS = [
    rec(IPS[0], 40000, IPS[1], 7400, "outbound", 5000, 700),                    # peer1, closed
    rec(IPS[0], 40001, IPS[2], 7400, "outbound", 800, 90, kind="interim"),      # peer2, still open
    rec(IPS[0], 7400, IPS[1], 41000, "inbound", 300, 200),                      # peer1 connected to us
    rec(IPS[0], 40002, EXTERNAL, 443, "outbound", 10, 10),                      # not a member
    rec(IPS[0], 40003, IPS[0], 7400, "outbound", 10, 10),                       # ourselves (meshctl)
]


def test_decorator_puts_flows_with_other_members_in_the_digest_with_their_kind():
    mesh = FakeMesh()
    trust = MeshTrust(mesh, export_period=10)  # type: ignore[arg-type]
    trust.attach()
    assert mesh.digest_decorators == [trust.decorate] and mesh.digest_listeners == [trust.on_digest]
    assert mesh.exclude == trust.excluded and mesh.forget_listeners == [trust.monitor.forget]
    d = _decorated(trust, RECORDS)
    got = [(e.dst, e.sport, e.dport, e.bytes_tx, e.bytes_rx, e.kind, e.direction) for e in d.endpoints]
    assert got == [
        (IPS[1], 40000, 7400, 5000, 700, flow_pb2.FINAL, flow_pb2.OUTBOUND),
        (IPS[2], 40001, 7400, 800, 90, flow_pb2.INTERIM, flow_pb2.OUTBOUND),
        (IPS[1], 7400, 41000, 300, 200, flow_pb2.FINAL, flow_pb2.INBOUND),
    ]
    assert trust.owners() == {IPS[0]: "me", IPS[1]: "peer1", IPS[2]: "peer2"}


def _mirror(r: FlowRecord) -> FlowRecord:
    """The other end's record of the same flow."""
    return FlowRecord(flow_id=r.flow_id, src=r.dst, sport=r.dport, dst=r.src, dport=r.sport, proto=r.proto,
                      direction="outbound" if r.direction == "inbound" else "inbound", start_ns=r.start_ns,
                      end_ns=r.end_ns, bytes_tx=r.bytes_rx, bytes_rx=r.bytes_tx, packets_tx=r.packets_rx,
                      packets_rx=r.packets_tx, outcome=r.outcome, srtt_us=r.srtt_us, kind=r.kind)


def test_a_joining_peer_s_flows_are_published_before_membership_knows_it_and_match_its_claims():
    """A node that joined late knows this one (the seed told it) before this one's membership has heard of it, and
    its mesh connection here is open meanwhile: this node publishes that connection, and its other flows with the
    newcomer, so that the newcomer's claims about them match instead of being missing here; and the outbound
    connection to a seed that is not a member yet, which the seed (that heard of this node) claims."""
    mesh = FakeMesh()
    trust = MeshTrust(mesh, export_period=10)  # type: ignore[arg-type]
    here = [
        rec(IPS[0], 7400, NEWCOMER, 39328, "inbound", 1500, 2100, kind="interim"),  # its mesh connection, open
        rec(IPS[0], 5432, NEWCOMER, 40100, "inbound", 9000, 300),                  # its query to our database
        rec(IPS[0], 41000, SEED, 7400, "outbound", 700, 800, kind="interim"),      # our seed's channel
        rec(IPS[0], 40002, EXTERNAL, 443, "outbound", 10, 10),                     # not a member, nor a contact
    ]
    d = _decorated(trust, here)
    d.node_id = "me"
    assert [(e.dst, e.dport, e.kind) for e in d.endpoints] == [
        (NEWCOMER, 39328, flow_pb2.INTERIM), (NEWCOMER, 40100, flow_pb2.FINAL), (SEED, 7400, flow_pb2.INTERIM)]
    assert trust.monitor.counters["endpoint_records_for_contacts"] == 3

    # the newcomer's and the seed's digests claim their ends of the same flows; a validator that knows all three
    # (as every member does soon) matches each claim with this node's record instead of calling it missing
    v = CrossValidator(ValidationConfig(period_s=10), owners={IPS[0]: "me", NEWCOMER: "new", SEED: "seed"})
    v.add(claims_from_digest(d)[0])
    for node, peer in (("new", NEWCOMER), ("seed", SEED)):
        theirs = [_mirror(r) for r in here if r.dst == peer]
        claim = mesh_pb2.Digest(node_id=node, period_start_ns=d.period_start_ns, period_end_ns=d.period_end_ns,
                                endpoints=endpoint_records(theirs, [IPS[0]]))
        v.add(claims_from_digest(claim)[0])
    report = v.evaluate(d.period_end_ns + 30 * S)
    assert report.evidence == []
    assert (report.checked, report.matched) == (6, 6)

    # a contact stays one while it talks on a mesh port (or for CONTACT_PERIODS after): its flows in a later period
    # are published with no mesh connection in that period; once it has been silent that long, they are not
    later = rec(IPS[0], 5432, NEWCOMER, 40200, "inbound", 9000, 300)
    assert [e.sport for e in trust_decorated_at(trust, [later], d.period_end_ns + 3 * 10 * S).endpoints] == [5432]
    gone = trust_decorated_at(trust, [later], d.period_end_ns + (CONTACT_PERIODS + 1) * 10 * S)
    assert list(gone.endpoints) == []


def test_a_witness_that_leaves_out_a_contact_s_flow_is_still_missing_it():
    """No exemption for not having known the reporter: a liar that hides its flows with a newcomer (by membership
    or not) is called missing them, as with any member."""
    trust = MeshTrust(FakeMesh(), export_period=10)  # type: ignore[arg-type]
    here = [rec(IPS[0], 7400, NEWCOMER, 39328, "inbound", 1500, 2100, kind="interim"),
            rec(IPS[0], 5432, NEWCOMER, 40100, "inbound", 9000, 300)]
    d = _decorated(trust, here)
    d.node_id = "me"
    assert apply_lie(Lie("hide", NEWCOMER, 5432), d) == 1
    v = CrossValidator(ValidationConfig(period_s=10), owners={IPS[0]: "me", NEWCOMER: "new"})
    v.add(claims_from_digest(d)[0])
    v.add(claims_from_digest(mesh_pb2.Digest(node_id="new", period_start_ns=d.period_start_ns,
                                             period_end_ns=d.period_end_ns,
                                             endpoints=endpoint_records([_mirror(r) for r in here], [IPS[0]])))[0])
    report = v.evaluate(d.period_end_ns + 30 * S)
    assert [(e.reporter, e.witness, e.sport, e.dport, e.reason) for e in report.evidence] == [
        ("new", "me", 40100, 5432, "missing_at_witness")]


def trust_decorated_at(trust: MeshTrust, records: list[FlowRecord], end_ns: int) -> mesh_pb2.Digest:
    period = PeriodSummary(node_id="me", seq=2, period_start_ns=end_ns - 10 * S, period_end_ns=end_ns)
    d = mesh_pb2.Digest(period_start_ns=period.period_start_ns, period_end_ns=end_ns, addresses=[IPS[0]])
    trust.decorate(d, period, records)
    return d


def test_privacy_policy_hashes_external_addresses_in_everything_the_digest_carries():
    policy = PrivacyPolicy.from_config({"keep": ["10.20.0.0/24"], "outside": "hash", "secret": "k" * 20})
    trust = MeshTrust(FakeMesh(), export_period=10, policy=policy)  # type: ignore[arg-type]
    ext = [rec(IPS[0], 40004, EXTERNAL, 7400, "outbound", 1, 1)]
    mesh = trust.mesh
    mesh.exchange.digests["peer3"] = _Held(mesh_pb2.Digest(node_id="peer3", addresses=[EXTERNAL]))  # type: ignore[attr-defined]
    d = _decorated(trust, RECORDS + ext)
    raw = d.SerializeToString()
    assert EXTERNAL.encode() not in raw
    token = policy.hash_address(EXTERNAL)
    assert token.startswith(HASH_PREFIX)
    assert [r.key for r in d.by_destination] == [f"{token}:443"]
    assert d.measurements[0].target == f"{token}:443"
    assert {e.dst for e in d.endpoints} == {IPS[1], IPS[2], token}  # members inside keep stay readable
    # the monitor matches members by the same tokens
    trust.monitor.set_members(trust.owners())
    assert trust.monitor.validator._owners[token] == "peer3"


@pytest.mark.parametrize(("lie", "expect"), [
    (Lie("double_tx", IPS[1]), [(40000, 10000), (40001, 800), (7400, 600)]),
    # the port is the service port: the remote one of an outbound flow, the local one of an inbound flow
    (Lie("double_tx", IPS[1], 7400), [(40000, 10000), (40001, 800), (7400, 600)]),
    (Lie("double_tx", IPS[1], 41000), [(40000, 5000), (40001, 800), (7400, 300)]),
    (Lie("hide", IPS[1], 7400), [(40001, 800)]),
    (Lie("hide", IPS[1]), [(40001, 800)]),
    (Lie("hide", IPS[2], 7400, also=(Lie("double_tx", IPS[1], 7400),)), [(40000, 10000), (7400, 600)]),
])
def test_lie_misreports_only_the_flows_to_its_peer(lie: Lie, expect: list[tuple[int, int]]):
    trust = MeshTrust(FakeMesh(), export_period=10, lie=lie)  # type: ignore[arg-type]
    d = _decorated(trust, RECORDS)
    assert [(e.sport, e.bytes_tx) for e in d.endpoints] == expect


# ---------------------------------------------------------------------------------------------- real meshes


async def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _period(i: int, now: int) -> PeriodSummary:
    bad = 9 if i == 1 else 0  # the liar also says the database fails
    return PeriodSummary(node_id=f"n{i}", seq=1, period_start_ns=now - 2 * S, period_end_ns=now,
                         by_destination=[Rollup(key=DB, flows=10, useful=10 - bad,
                                                failures={"timeout": bad} if bad else {}, rtt_p50_us=1000)])


def test_a_liar_is_flagged_left_out_of_fleet_queries_and_shown_by_trust_validate():
    async def run() -> None:
        servers: list[grpc.aio.Server] = []
        meshes: list[MeshService] = []
        trusts: list[MeshTrust] = []
        try:
            for i in range(3):
                server = grpc.aio.server()
                port = server.add_insecure_port("127.0.0.1:0")
                mesh = MeshService(advertise=f"127.0.0.1:{port}", key=NodeKey.from_seed(f"wire-{i}".encode()),
                                   labels={"region": "eu", "host": f"h{i}"},
                                   seeds=[meshes[0].advertise] if meshes else [], config=FAST, export_period=0,
                                   rng=random.Random(i))
                mesh.addresses = (lambda ip: lambda: [ip])(IPS[i])
                trust = MeshTrust(mesh, export_period=2, lie=Lie("double_tx", IPS[0]) if i == 1 else None)
                trust.attach()
                mesh.register(server)
                trust.register(server)
                await server.start()
                await mesh.start()
                servers.append(server)
                meshes.append(mesh)
                trusts.append(trust)
            ids = {m.node_id for m in meshes}
            await _until(lambda: all({x.node_id for x in m.membership.members() if x.state == State.ALIVE} == ids
                                     for m in meshes))
            # period 1: nothing but addresses, so that everyone learns who owns which address
            now = time.time_ns()
            for i, m in enumerate(meshes):
                m.on_period(_period(i, now), [])
            await _until(lambda: all(len(m.exchange.held()) == 3 for m in meshes))
            # period 2: n0 <-> n1 and n0 <-> n2, closed; n1 doubles what it says it sent to n0
            await asyncio.sleep(0.01)
            now = time.time_ns()
            flows = {
                0: [rec(IPS[0], 40000, IPS[1], 7400, "outbound", 5000, 700, start=now - S),
                    rec(IPS[0], 40001, IPS[2], 7400, "outbound", 800, 90, start=now - S)],
                1: [rec(IPS[1], 7400, IPS[0], 40000, "inbound", 700, 5000, start=now - S)],
                2: [rec(IPS[2], 7400, IPS[0], 40001, "inbound", 90, 800, start=now - S)],
            }
            seqs = {}
            for i, m in enumerate(meshes):
                m.on_period(_period(i, now), flows[i])
                held = m.exchange.latest(m.node_id)
                assert held is not None
                seqs[m.node_id] = held.digest.seq
            await _until(lambda: all(m.exchange.seqs() == seqs for m in meshes))
            for i, t in enumerate(trusts):
                t.on_period(_period(i, now), flows[i])
            a, liar, c = meshes
            assert trusts[0].excluded(ids) == {liar.node_id}  # n0 witnessed the lie itself
            assert trusts[2].excluded(ids) == set()  # a third party cannot tell who lied from one dispute

            q = await a.fleet_query(mesh_pb2.FleetQueryRequest(destination=DB))
            assert (q.hosts_excluded, list(q.excluded)) == (1, [liar.node_id])
            [row] = q.aggregates
            assert (row.hosts, row.hosts_excluded, row.useful, row.useful_fraction_median) == (2, 1, 20, 1.0)
            q = await c.fleet_query(mesh_pb2.FleetQueryRequest(destination=DB))
            assert q.hosts_excluded == 0 and q.aggregates[0].hosts == 3

            async with grpc.aio.insecure_channel(a.advertise) as ch:
                resp = await trust_pb2_grpc.TrustStub(ch).Validate(trust_pb2.ValidateRequest(), timeout=5)
                peers = await mesh_pb2_grpc.MeshStub(ch).Peers(mesh_pb2.PeersRequest(), timeout=5)
            assert len(peers.peers) == 3
            [score] = resp.scores
            assert score.node_id == liar.node_id and score.flagged and score.score < resp.threshold
            # each pair of final records is compared once, from whichever end is judged first: here n0's claim
            # (it received 700) against the liar's record (sent 1400), held against the liar
            [e] = resp.evidence
            assert (e.reporter, e.witness, e.blamed) == (a.node_id, liar.node_id, liar.node_id)
            assert (e.proto, e.src, e.sport, e.dst, e.dport) == ("tcp", IPS[0], 40000, IPS[1], 7400)
            assert (e.field, e.claimed, e.witnessed, e.reason) == ("bytes_rx", "700", "1400",
                                                                   "acked_more_than_received")
        finally:
            for m in meshes:
                await m.stop(leave_timeout=0.2)
            for s in servers:
                await s.stop(0)

    asyncio.run(run())
