"""Challenge (seed 003): the pure watch over a suspect's digests (table-driven), the score it moves, and a whole
challenge over real MeshService nodes on 127.0.0.1 gRPC: the prober really connects, an honest suspect that
publishes the connections passes, one that hides them fails and is flagged, served by Trust.Challenge."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable

import grpc
import pytest

from meshnode._model import FlowRecord
from meshnode.mesh import MEMBER_CALLER, MeshConfig, MeshService, NodeKey, State
from meshnode.summary import PeriodSummary
from meshnode.trust import ChallengeWatch, Lie, MeshTrust, ScoreConfig, TrustState
from meshnode.trust._challenge import ChallengeRefused, tolerance
from meshnode.v1 import flow_pb2, mesh_pb2, trust_pb2, trust_pb2_grpc

S = 10**9
T0 = 1_700_000_000 * S
P = 2 * S
SKEW = 2 * S
SUSPECT, PROBER = "sus", "pro"
SUS_IP, PRO_IP, OTHER_IP = "10.30.0.2", "10.30.0.3", "10.30.0.9"
PORT = 7400


def inbound(dport: int, *, src_ip: str = PRO_IP, start: int = T0 + S, sport: int = PORT, proto: int = 6,
            direction: int = flow_pb2.INBOUND) -> flow_pb2.Flow:
    return flow_pb2.Flow(src=SUS_IP, sport=sport, dst=src_ip, dport=dport, proto=proto,  # type: ignore[arg-type]
                         direction=direction, start_ns=start, end_ns=start + 1000, outcome=flow_pb2.ESTABLISHED,
                         kind=flow_pb2.FINAL)


def digest(k: int, *flows: flow_pb2.Flow, node: str = SUSPECT, truncated: int = 0) -> mesh_pb2.Digest:
    return mesh_pb2.Digest(node_id=node, period_start_ns=T0 + k * P, period_end_ns=T0 + (k + 1) * P,
                           endpoints=list(flows), endpoints_truncated=truncated)


def watch(finished: int = T0 + S + S // 2) -> ChallengeWatch:
    w = ChallengeWatch(SUSPECT, frozenset({PRO_IP}), PORT, T0 + S, SKEW)
    w.finished_ns = finished
    return w


TEN = [inbound(50000 + i) for i in range(10)]
SETTLE = SKEW

CASES = [
    # (digests held, connected, expected verdict)
    ([digest(0, *TEN)], 10, "passed"),
    ([digest(0, *TEN[:8])], 10, "passed"),                        # a fifth may be left out
    ([digest(0, *TEN[:7])], 10, "pending"),                       # not settled: more may come
    ([digest(0, *TEN[:7]), digest(1), digest(2)], 10, "failed"),
    ([digest(0), digest(1), digest(2)], 10, "failed"),            # the lie: hidden
    ([digest(0), digest(2)], 10, "inconclusive"),                 # period 1 skipped by gossip
    ([digest(1), digest(2)], 10, "inconclusive"),                 # the test's own period never seen
    ([digest(0, truncated=3), digest(1), digest(2)], 10, "inconclusive"),
    ([digest(0), digest(1), digest(2)], 0, "inconclusive"),       # the prober could not connect
    # only inbound TCP from the prober to the port, started during the test, counts; each flow once
    ([digest(0, *[inbound(1 + i, src_ip=OTHER_IP) for i in range(10)]), digest(1), digest(2)], 10, "failed"),
    ([digest(0, *[inbound(1 + i, sport=PORT + 1) for i in range(10)]), digest(1), digest(2)], 10, "failed"),
    ([digest(0, *[inbound(1 + i, proto=17) for i in range(10)]), digest(1), digest(2)], 10, "failed"),
    ([digest(0, *[inbound(1 + i, direction=flow_pb2.OUTBOUND) for i in range(10)]), digest(1), digest(2)], 10,
     "failed"),
    ([digest(0, *[inbound(1 + i, start=T0 - 5 * S) for i in range(10)]), digest(1), digest(2)], 10, "failed"),
    ([digest(0, *TEN[:5]), digest(1, *TEN), digest(2)], 10, "passed"),  # interim, then final: counted once
]


@pytest.mark.parametrize(("held", "connected", "expected"), CASES)
def test_watch_verdicts(held: list[mesh_pb2.Digest], connected: int, expected: str) -> None:
    w = watch()
    w.add_all(held)
    verdict, detail = w.verdict(connected, SETTLE)
    assert verdict == expected, detail
    if expected == "passed":
        assert w.reported >= connected - tolerance(connected)


def test_watch_ignores_other_nodes_and_old_periods_and_counts_digests_once() -> None:
    w = watch()
    w.add(digest(0, *TEN, node="someone-else"))
    w.add(digest(-3, *TEN))  # ended long before the test
    assert w.reported == 0 and w.digests == 0
    w.add(digest(0, *TEN[:3]))
    w.add(digest(0, *TEN))  # the same period again (gossip and the direct poll)
    assert (w.reported, w.digests) == (3, 1)


def test_evidence_of_a_failed_challenge_names_both_counts() -> None:
    w = watch()
    w.add_all([digest(0, *TEN[:2]), digest(1), digest(2)])
    e = w.evidence(PROBER, SUS_IP, 10, T0 + 9 * S)
    assert (e.reporter, e.witness, e.field, e.claimed, e.witnessed, e.severity) == (
        SUSPECT, PROBER, "challenge", 2, 10, "contradiction")
    assert (e.src, e.sport, e.dst, e.reason) == (SUS_IP, PORT, PRO_IP, "challenge_connections_unreported")


def test_a_failed_challenge_flags_and_passed_ones_restore() -> None:
    state = TrustState("me", ScoreConfig(), T0)
    w = watch()
    blame = state.challenged(SUSPECT, False, T0, w.evidence(PROBER, SUS_IP, 10, T0))
    assert blame is not None and blame.attribution == "challenge" and blame.node_id == SUSPECT
    assert state.is_flagged(SUSPECT) and state.score(SUSPECT) == pytest.approx(0.4)
    assert state.challenged(SUSPECT, True, T0) is None
    assert state.score(SUSPECT) == pytest.approx(0.7) and state.is_flagged(SUSPECT)  # hysteresis: < 0.8
    state.challenged(SUSPECT, True, T0)
    assert state.score(SUSPECT) == pytest.approx(0.85) and not state.is_flagged(SUSPECT)


# ---------------------------------------------------------------------------------------------- real meshes

FAST = MeshConfig(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, push_pull_interval=1.0,
                  suspicion_mult=3, stream_timeout=1.0, reconnect_interval=0)
IPS = ["10.40.0.1", "10.40.0.2", "10.40.0.3"]
PERIOD = 0.4


async def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    start = time.monotonic()
    while not pred():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class FakeSuspectSensor:
    """A TCP listener on 127.0.0.1 standing in for the suspect's service: each accepted connection becomes the
    inbound flow record its sensor would make, from the prober's lab address, published every PERIOD."""

    def __init__(self, prober_ip: str, my_ip: str) -> None:
        self.prober_ip, self.my_ip = prober_ip, my_ip
        self.accepted: list[FlowRecord] = []
        self.port = 0

    async def start(self) -> asyncio.Server:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            now = time.time_ns()
            _, peer_port = writer.get_extra_info("peername")[:2]
            self.accepted.append(FlowRecord(flow_id=peer_port, src=self.my_ip, sport=self.port, dst=self.prober_ip,
                                            dport=peer_port, proto="tcp", direction="inbound", start_ns=now,
                                            end_ns=now + 1000, outcome="established", kind="final"))
            writer.close()

        server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        return server


async def _publisher(mesh: MeshService, trust: MeshTrust, sensor: FakeSuspectSensor, stop: asyncio.Event) -> None:
    start = time.time_ns()
    while not stop.is_set():
        await asyncio.sleep(PERIOD)
        end = time.time_ns()
        records, sensor.accepted = sensor.accepted, []
        summary = PeriodSummary(node_id="x", seq=1, period_start_ns=start, period_end_ns=end)
        mesh.on_period(summary, records)
        trust.on_period(summary, records)
        start = end


@pytest.mark.parametrize("lying", [False, True])
def test_challenge_over_real_meshes(lying: bool) -> None:
    async def run() -> None:
        servers: list[grpc.aio.Server] = []
        meshes: list[MeshService] = []
        trusts: list[MeshTrust] = []
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        listener: asyncio.Server | None = None
        try:
            for i in range(3):
                server = grpc.aio.server()
                port = server.add_insecure_port("127.0.0.1:0")
                mesh = MeshService(advertise=f"127.0.0.1:{port}", key=NodeKey.from_seed(f"chal-{i}".encode()),
                                   labels={"host": f"h{i}"}, seeds=[meshes[0].advertise] if meshes else [],
                                   config=FAST, export_period=0, rng=random.Random(i))
                mesh.addresses = (lambda ip: lambda: [ip])(IPS[i])
                # node 2, the suspect, hides what it gets from node 1, the prober, on the challenge port
                trust = MeshTrust(mesh, export_period=PERIOD, lie=Lie("hide", IPS[1]) if lying and i == 2 else None)
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
            sensor = FakeSuspectSensor(IPS[1], IPS[2])
            listener = await sensor.start()
            quiet = [FakeSuspectSensor(IPS[0], IPS[i]) for i in range(2)]  # nodes 0 and 1 publish empty periods
            for i, m in enumerate(meshes):
                tasks.append(asyncio.create_task(_publisher(m, trusts[i], sensor if i == 2 else quiet[i], stop)))
            await _until(lambda: all(len(m.exchange.held()) == 3 for m in meshes))
            me, prober, suspect = meshes
            req = trust_pb2.ChallengeRequest(suspect=suspect.node_id, port=sensor.port, count=6, deadline_ms=15000)
            async with grpc.aio.insecure_channel(me.advertise) as ch:
                t0 = time.monotonic()
                resp = await trust_pb2_grpc.TrustStub(ch).Challenge(req, timeout=20)
                took = time.monotonic() - t0
                validate = await trust_pb2_grpc.TrustStub(ch).Validate(trust_pb2.ValidateRequest(), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await trust_pb2_grpc.TrustStub(ch).Challenge(
                        trust_pb2.ChallengeRequest(suspect="0000000000000000"), timeout=5)
            assert refused.value.code() == grpc.StatusCode.NOT_FOUND
            assert (resp.suspect, resp.prober) == (suspect.node_id, prober.node_id)  # the only third member
            assert resp.target == f"127.0.0.1:{sensor.port}"
            assert (resp.attempts, resp.connected, resp.tolerance) == (6, 6, 1)
            if lying:
                assert resp.verdict == trust_pb2.CHALLENGE_FAILED, resp.detail
                assert resp.reported == 0 and resp.flagged and resp.score < 0.5
                [e] = [e for e in validate.evidence if e.field == "challenge"]
                assert (e.reporter, e.witness, e.blamed, e.claimed, e.witnessed) == (
                    suspect.node_id, prober.node_id, suspect.node_id, "0", "6")
                assert validate.counters["challenges_failed"] == 1
            else:
                assert resp.verdict == trust_pb2.CHALLENGE_PASSED, resp.detail
                assert resp.reported >= 5 and not resp.flagged and resp.score == 1.0  # passes as soon as 6 - 1 are in
                assert took < 5 and validate.counters["challenges_passed"] == 1
                # signed by a member's node key: no challenge of itself; a prober it names is not scored
                token = MEMBER_CALLER.set(suspect.node_id)
                try:
                    with pytest.raises(ChallengeRefused, match="itself"):
                        await trusts[0].challenge(req)
                finally:
                    MEMBER_CALLER.reset(token)
                token = MEMBER_CALLER.set(prober.node_id)
                try:
                    named = await trusts[0].challenge(trust_pb2.ChallengeRequest(
                        suspect=suspect.node_id, port=sensor.port, count=6, deadline_ms=15000,
                        prober=prober.node_id))
                finally:
                    MEMBER_CALLER.reset(token)
                assert named.verdict == trust_pb2.CHALLENGE_PASSED and "not scored" in named.detail, named.detail
                counters = trusts[0].monitor.counters
                assert (counters["challenges_passed"], counters["challenges_not_scored"]) == (1, 1)
            assert resp.digests >= 1 and resp.finished_ns > resp.started_ns
        finally:
            stop.set()
            for t in tasks:
                t.cancel()
            if listener is not None:
                listener.close()
            for m in meshes:
                await m.stop(leave_timeout=0.2)
            for s in servers:
                await s.stop(0)

    asyncio.run(run())
