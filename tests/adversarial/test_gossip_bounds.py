"""Hostile gossip against real mesh services on 127.0.0.1 (real grpc.aio servers, real calls).

Each test is one attack of issue 13's first item, sent as an attacker would send it (one Packet or Stream
call to the node's gossip service), then checks what the node kept, what it counted, what it dialled, and
that it still answers ``Peers`` (served on the same event loop as the gossip) within a generous bound.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable

import grpc
import pytest

from meshnode.mesh import MeshConfig, MeshService, NodeKey, State
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc

FAST = MeshConfig(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, push_pull_interval=1.0,
                  suspicion_mult=3, stream_timeout=1.0, reconnect_interval=0)
U64_MAX = 2**64 - 1
BOUND = 2**63
ANSWER_WITHIN = 1.0
"""Seconds a node has to answer Peers after an attack (its goal is far below; the machine is shared)."""

pytestmark = pytest.mark.timeout(120)


async def _node(name: str, seeds: Iterable[str] = (), config: MeshConfig = FAST) -> MeshService:
    mesh = MeshService(advertise="127.0.0.1:0", listen="127.0.0.1:0", key=NodeKey.from_seed(name.encode()),
                       labels={"host": name}, seeds=list(seeds), config=config, export_period=0,
                       rng=random.Random(name), rejoin_interval=0)
    await mesh.start()
    return mesh


async def _until(pred: Callable[[], bool], timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _view(mesh: MeshService, node_id: str) -> tuple[State | None, int]:
    m = mesh.membership.member(node_id)
    return (None, -1) if m is None else (m.state, m.incarnation)


class Attacker:
    """A gRPC client that speaks the mesh's wire format to one node."""

    def __init__(self, addr: str) -> None:
        self.channel = grpc.aio.insecure_channel(addr, options=[("grpc.max_send_message_length", 64 << 20)])
        self.stub = mesh_pb2_grpc.MeshStub(self.channel)  # type: ignore[no-untyped-call]

    async def packet(self, pkt: mesh_pb2.MeshPacket, from_addr: str = "127.0.0.1:9") -> None:
        await self.stub.Packet(mesh_pb2.PacketRequest(from_addr=from_addr, payload=pkt.SerializeToString()),
                               timeout=2)

    async def gossip(self, *items: mesh_pb2.Gossip, source: str = "evil", source_addr: str = "127.0.0.1:9"
                     ) -> None:
        await self.packet(mesh_pb2.MeshPacket(source=source, source_addr=source_addr, gossip=list(items)))

    async def stream(self, msg: mesh_pb2.StreamMessage | bytes, from_addr: str = "127.0.0.1:9",
                     timeout: float = 30) -> grpc.StatusCode:
        payload = msg if isinstance(msg, bytes) else msg.SerializeToString()
        try:
            await self.stub.Stream(mesh_pb2.StreamRequest(from_addr=from_addr, payload=payload), timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            return exc.code()
        return grpc.StatusCode.OK

    async def peers(self) -> tuple[mesh_pb2.PeersResponse, float]:
        """Peers, and how long it took; fails the test beyond ``ANSWER_WITHIN``."""
        start = time.monotonic()
        resp = await self.stub.Peers(mesh_pb2.PeersRequest(), timeout=5)
        took = time.monotonic() - start
        assert took < ANSWER_WITHIN, f"Peers took {took:.3f} s"
        return resp, took

    async def close(self) -> None:
        await self.channel.close()


class Listener:
    """A TCP port that counts who connects to it: the address an attacker wants the node to dial."""

    def __init__(self) -> None:
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> Listener:
        async def on_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            writer.close()

        self.server = await asyncio.start_server(on_conn, "127.0.0.1", 0)
        return self

    @property
    def addr(self) -> str:
        assert self.server is not None
        return f"127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def _alive(node: str, incarnation: int, addr: str) -> mesh_pb2.Gossip:
    return mesh_pb2.Gossip(alive=mesh_pb2.Alive(node=node, incarnation=incarnation, addr=addr, labels={"host": "x"}))


def _suspect(node: str, incarnation: int) -> mesh_pb2.Gossip:
    return mesh_pb2.Gossip(suspect=mesh_pb2.Suspect(node=node, incarnation=incarnation, **{"from": "evil"}))


def _dead(node: str, incarnation: int) -> mesh_pb2.Gossip:
    return mesh_pb2.Gossip(dead=mesh_pb2.Dead(node=node, incarnation=incarnation, **{"from": "evil"}))


async def _pair() -> tuple[MeshService, MeshService]:
    a = await _node("adv-a")
    b = await _node("adv-b", [a.advertise])
    ids = {a.node_id, b.node_id}
    await _until(lambda: all({m.node_id for m in x.membership.members() if m.state == State.ALIVE} == ids
                             for x in (a, b)))
    return a, b


def test_incarnation_past_the_bound_is_refused_and_an_accusation_at_the_bound_is_refuted():
    """One Alive at 2**64-1 about a member used to overflow its refutation (Value out of range from then on).

    Now claims above 2**63 are refused and counted at both ends, the member keeps answering, and an
    accusation exactly at the bound is still refuted (the refutation, one above it, is accepted).
    """

    async def run() -> None:
        a, b = await _pair()
        evil_a, evil_b = Attacker(a.advertise), Attacker(b.advertise)
        try:
            await evil_a.gossip(_alive(b.node_id, U64_MAX, b.advertise), _suspect(b.node_id, U64_MAX))
            await evil_b.gossip(_alive(b.node_id, U64_MAX, b.advertise), _dead(b.node_id, U64_MAX))
            await asyncio.sleep(1.0)  # five gossip rounds, two push-pulls
            for mesh, evil in ((a, evil_a), (b, evil_b)):
                peers, took = await evil.peers()
                print(f"Peers of {mesh.node_id} after the overflow attack: {took * 1000:.1f} ms")
                assert peers.counters["incarnations_refused"] >= 2
                assert {p.node_id: (p.state, p.incarnation < BOUND) for p in peers.peers} == {
                    a.node_id: (mesh_pb2.ALIVE, True), b.node_id: (mesh_pb2.ALIVE, True)}

            await evil_a.gossip(_dead(b.node_id, BOUND))
            await _until(lambda: _view(a, b.node_id) == (State.ALIVE, BOUND + 1))
            assert b.membership.incarnation == BOUND + 1
            await evil_b.peers()
        finally:
            await evil_a.close()
            await evil_b.close()
            await b.stop(leave_timeout=0.1)
            await a.stop(leave_timeout=0.1)

    asyncio.run(asyncio.wait_for(run(), 60))


def test_a_restart_heals_a_member_declared_dead_at_any_incarnation():
    """While b is down, an attacker declares it dead at 2**64-1 and at 2**63. The first used to stick (the
    restarted b learnt it in its join and refuted into an overflow, so it could never answer again); now it
    is refused, and the second is refuted by the restarted b."""

    async def run() -> None:
        a, b = await _pair()
        b_id = b.node_id
        await b.stop(leave=False)
        evil = Attacker(a.advertise)
        b2: MeshService | None = None
        try:
            await evil.gossip(_dead(b_id, U64_MAX))
            await evil.gossip(_dead(b_id, BOUND))
            b2 = await _node("adv-b", [a.advertise])
            assert b2.node_id == b_id and b2.joined == 1
            await _until(lambda: _view(a, b_id) == (State.ALIVE, BOUND + 1))
            await _until(lambda: _view(b2, a.node_id)[0] == State.ALIVE)
            peers, took = await Attacker(b2.advertise).peers()
            print(f"Peers of the restarted node: {took * 1000:.1f} ms")
            assert [p.incarnation for p in peers.peers if p.is_self] == [BOUND + 1]
            peers, _ = await evil.peers()
            assert (peers.counters["incarnations_refused"], peers.counters["dead"]) == (1, 1)
        finally:
            await evil.close()
            if b2 is not None:
                await b2.stop(leave_timeout=0.1)
            await a.stop(leave_timeout=0.1)

    asyncio.run(asyncio.wait_for(run(), 60))


def _push_pull(n: int, addr: str, source: str = "evil", source_addr: str = "127.0.0.1:9",
               offset: int = 0) -> mesh_pb2.StreamMessage:
    pp = mesh_pb2.PushPull(source=source, source_addr=source_addr)
    for i in range(offset, offset + n):
        pp.members.add(node=f"m{i:06d}", addr=addr, incarnation=1, state=mesh_pb2.ALIVE, labels={"host": f"h{i}"})
    return mesh_pb2.StreamMessage(push_pull=pp)


async def _while_answering(evil: Attacker, attack: asyncio.Task[grpc.StatusCode]) -> tuple[grpc.StatusCode, float]:
    """Ask for Peers over and over while ``attack`` runs: its code, and the slowest answer."""
    worst = 0.0
    while not attack.done():
        worst = max(worst, (await evil.peers())[1])
        await asyncio.sleep(0.01)
    return attack.result(), worst


def test_unsolicited_push_pull_naming_30000_members_adds_none_and_dials_none():
    """One push-pull naming 30,000 members used to add them all, stall the loop for seconds, and have the
    node probe the address the sender gave them. More members than the table holds is refused whole; below
    that, members nobody vouched for are not taken from state pushed unasked; the loop keeps answering."""

    async def run() -> None:
        a = await _node("adv-pp")
        evil = Attacker(a.advertise)
        try:
            async with Listener() as target:
                code, worst = await _while_answering(
                    evil, asyncio.create_task(evil.stream(_push_pull(30_000, target.addr))))
                print(f"Peers during a 30,000-member push-pull: worst {worst * 1000:.1f} ms")
                assert code == grpc.StatusCode.INVALID_ARGUMENT
                n = a.config.max_members - 1
                code, worst = await _while_answering(evil, asyncio.create_task(evil.stream(_push_pull(n, target.addr))))
                await asyncio.sleep(1.0)  # five probe intervals: time to dial whatever was listed
                peers, took = await evil.peers()
                print(f"Peers during a {n:,}-member push-pull: worst {worst * 1000:.1f} ms, after {took * 1000:.1f} ms")
                assert code == grpc.StatusCode.OK
                assert [p.node_id for p in peers.peers] == [a.node_id]
                assert (peers.counters["push_pulls_oversize"], peers.counters["members_unsolicited"]) == (1, n)
                assert target.connections == 0
        finally:
            await evil.close()
            await a.stop(leave_timeout=0.1)

    asyncio.run(asyncio.wait_for(run(), 60))


class _SeedServicer(mesh_pb2_grpc.MeshServicer):
    """A hostile seed: answers every push-pull with ``members`` made-up members, new ones each time."""

    def __init__(self, members: int) -> None:
        self.members = members
        self.answers = 0

    async def Stream(self, request: mesh_pb2.StreamRequest, context: object) -> mesh_pb2.StreamResponse:
        self.answers += 1
        pp = _push_pull(self.members, "127.0.0.1:9", source="evil-seed", offset=self.answers * self.members)
        return mesh_pb2.StreamResponse(payload=pp.SerializeToString())

    async def Packet(self, request: mesh_pb2.PacketRequest, context: object) -> mesh_pb2.PacketResponse:
        return mesh_pb2.PacketResponse()


def test_the_member_table_and_each_push_pull_are_capped():
    """A seed (one the node chose to ask) answers each join with 40 new members: the table stops at its cap
    and the rest are counted; an answer or a push-pull naming more members than the table holds is refused
    whole."""

    async def run() -> None:
        cap = 64
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        seed = _SeedServicer(40)
        mesh_pb2_grpc.add_MeshServicer_to_server(seed, server)  # type: ignore[no-untyped-call]
        await server.start()
        seed_addr = f"127.0.0.1:{port}"
        a = await _node("adv-cap", [seed_addr], MeshConfig(
            probe_interval=0.2, probe_timeout=0.1, push_pull_interval=0, reconnect_interval=0, max_members=cap))
        evil = Attacker(a.advertise)
        try:
            assert a.joined == 1
            joined: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            a.membership.join([seed_addr], on_done=joined.set_result)
            assert await joined == 1
            peers, took = await evil.peers()
            print(f"Peers after two 40-member join answers, table capped at {cap}: {took * 1000:.1f} ms")
            assert len(peers.peers) == cap
            assert peers.counters["members_refused_table_full"] == 2 * 40 - (cap - 1)
            seed.members = cap + 1
            joined = asyncio.get_running_loop().create_future()
            a.membership.join([seed_addr], on_done=joined.set_result)
            assert await joined == 0
            assert await evil.stream(_push_pull(cap + 1, "127.0.0.1:9")) == grpc.StatusCode.INVALID_ARGUMENT
            peers, _ = await evil.peers()
            assert peers.counters["push_pulls_oversize"] == 2
            assert len(peers.peers) == cap
        finally:
            await evil.close()
            await a.stop(leave_timeout=0.1)
            await server.stop(0)

    asyncio.run(asyncio.wait_for(run(), 60))


def test_stream_bytes_are_bounded():
    """A stream request past the node's bound is refused (RESOURCE_EXHAUSTED) and counted before it is
    decoded; one past gRPC's own receive bound never reaches the handler."""

    async def run() -> None:
        limit = 64 << 10
        a = await _node("adv-bytes", config=MeshConfig(push_pull_interval=0, reconnect_interval=0,
                                                       max_stream_bytes=limit))
        evil = Attacker(a.advertise)
        try:
            big = _push_pull(20, "127.0.0.1:9")
            big.push_pull.user_state = b"\0" * (limit + 1)
            assert await evil.stream(big) == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert await evil.stream(b"\0" * (8 << 20)) == grpc.StatusCode.RESOURCE_EXHAUSTED
            peers, took = await evil.peers()
            print(f"Peers after oversize streams: {took * 1000:.1f} ms")
            assert peers.counters["streams_oversize"] == 1
            assert len(peers.peers) == 1
        finally:
            await evil.close()
            await a.stop(leave_timeout=0.1)

    asyncio.run(asyncio.wait_for(run(), 60))


def test_packets_make_the_node_dial_no_address_they_name():
    """Reply and relay addresses come from the member table, never from the packet: a ping from a stranger
    naming a victim's address, an indirect ping naming a target address, a digest announcement naming a pull
    address and a push-pull whose sender names an address of another member's: none is dialled."""

    async def run() -> None:
        a, b = await _pair()
        evil = Attacker(a.advertise)
        try:
            async with Listener() as victim:
                v = victim.addr
                await evil.packet(mesh_pb2.MeshPacket(source="stranger", source_addr=v,
                                                      ping=mesh_pb2.Ping(seq_no=1, target=a.node_id)))
                await evil.packet(mesh_pb2.MeshPacket(source="stranger", source_addr="", ping=mesh_pb2.Ping(seq_no=2)),
                                  from_addr=v)
                # b's id with b's address as requester, and a target address that is nobody's
                await evil.packet(mesh_pb2.MeshPacket(
                    source=b.node_id, source_addr=b.advertise,
                    indirect_ping=mesh_pb2.IndirectPing(seq_no=3, target="ghost", target_addr=v)))
                # b's id as target, at the victim's address instead of b's
                await evil.packet(mesh_pb2.MeshPacket(
                    source=b.node_id, source_addr=b.advertise,
                    indirect_ping=mesh_pb2.IndirectPing(seq_no=4, target=b.node_id, target_addr=v)))
                ann = mesh_pb2.DigestAnnounce(node_id=b.node_id, seq=2**40).SerializeToString()
                await evil.gossip(mesh_pb2.Gossip(user=ann), source="stranger", source_addr=v)
                await evil.gossip(mesh_pb2.Gossip(user=ann), source=b.node_id, source_addr=v)
                state = mesh_pb2.DigestState(seqs={b.node_id: 2**40}).SerializeToString()
                pp = mesh_pb2.StreamMessage(push_pull=mesh_pb2.PushPull(source=b.node_id, source_addr=v,
                                                                        user_state=state))
                assert await evil.stream(pp) == grpc.StatusCode.OK
                await asyncio.sleep(1.0)
                peers, took = await evil.peers()
                print(f"Peers after the dial attacks: {took * 1000:.1f} ms")
                assert victim.connections == 0
                assert peers.counters["dials_refused"] >= 7
                assert _view(a, b.node_id)[0] == State.ALIVE
        finally:
            await evil.close()
            await b.stop(leave_timeout=0.1)
            await a.stop(leave_timeout=0.1)

    asyncio.run(asyncio.wait_for(run(), 60))
