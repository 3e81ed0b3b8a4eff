"""An identity is a certificate: attacks by the holder of one node certificate, and on signed requests.

Each attack is made over real mutual-TLS gRPC on 127.0.0.1 against nodes wired as ``meshnode run`` wires them
(``tests/_support/tlsnode.py``). The attacker, Mallory, holds one node certificate from the fleet CA (one
compromised member) and talks to the victim directly, one call at a time, as a node would.
"""

from __future__ import annotations

import asyncio
import base64
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from meshnode.daemon import NodeConfig
from meshnode.mesh import MeshService, NodeKey, State, sign_alive, sign_digest, sign_leave
from meshnode.trust import Evidence, MeshTrust, auth_metadata
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc, observer_pb2, observer_pb2_grpc
from tests._support import tlsnode
from tests._support.tlsnode import Pki

ROOT = Path(__file__).resolve().parents[2]
FQ = "/meshnode.v1.Mesh/FleetQuery"
S = 10**9


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))  # type: ignore[arg-type]


def b64(key: NodeKey) -> str:
    return base64.b64encode(key.public_raw).decode()


def signed(key: NodeKey, req: mesh_pb2.FleetQueryRequest, audience: str) -> tuple[tuple[str, bytes]]:
    """``key``'s signature of ``req`` for the node ``audience``."""
    return auth_metadata(key, FQ, req, audience)


def alive(key: NodeKey, addr: str = "127.0.0.1:9", incarnation: int = 1, sign: bool = True) -> mesh_pb2.Gossip:
    """An Alive about ``key``'s node (signed by it, as a real node signs its own)."""
    a = mesh_pb2.Alive(node=key.node_id, incarnation=incarnation, addr=addr)
    if sign:
        sign_alive(key, a)
    return mesh_pb2.Gossip(alive=a)


async def code_of(call: Callable[[], Awaitable[Any]]) -> tuple[grpc.StatusCode, str]:
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


class Mallory:
    """The holder of one node certificate (and its bound key), calling a victim's Mesh service directly."""

    def __init__(self, pki: Pki, victim: str) -> None:
        self.tls = pki.root / "mallory" if (pki.root / "mallory").exists() else pki.node("mallory")
        self.key = NodeKey.load_or_create(self.tls / "mallory.node.key")
        self.channel = pki.channel(victim, self.tls)
        self.stub = mesh_pb2_grpc.MeshStub(self.channel)  # type: ignore[no-untyped-call]

    async def packet(self, *gossip: mesh_pb2.Gossip, source: str | None = None) -> None:
        pkt = mesh_pb2.MeshPacket(source=source or self.key.node_id, source_addr="127.0.0.1:9", gossip=gossip)
        await self.stub.Packet(mesh_pb2.PacketRequest(from_addr="127.0.0.1:9", payload=pkt.SerializeToString()),
                               timeout=5)

    async def push(self, *digests: mesh_pb2.SignedDigest,
                   members: tuple[mesh_pb2.PushPullMember, ...] = ()) -> None:
        """A push-pull from Mallory's own node carrying ``digests`` (as anti-entropy does) and ``members``."""
        state = mesh_pb2.DigestState(digests=digests)
        pp = mesh_pb2.PushPull(source=self.key.node_id, source_addr="127.0.0.1:9", members=members,
                               user_state=state.SerializeToString())
        msg = mesh_pb2.StreamMessage(push_pull=pp)
        await self.stub.Stream(mesh_pb2.StreamRequest(from_addr="127.0.0.1:9", payload=msg.SerializeToString()),
                               timeout=5)

    async def close(self) -> None:
        await self.channel.close()


def digest(key: NodeKey, seq: int) -> mesh_pb2.SignedDigest:
    now = time.time_ns()
    return sign_digest(key, mesh_pb2.Digest(version=1, node_id=key.node_id, seq=seq, period_start_ns=now - S,
                                            period_end_ns=now, addresses=["10.66.0.1"]))


def tls_config(tls: Path, data: Path, **kw: Any) -> NodeConfig:
    data.mkdir(parents=True, exist_ok=True)
    return NodeConfig(tls_dir=tls, data_dir=data, **kw)


def test_a_fresh_key_gossiped_in_by_a_member_cannot_sign_a_fleet_query(tmp_path: Path) -> None:
    """Attack: one Alive packet about a fresh key, then a fleet query signed by that key, on a node that lists
    operator keys (a member's key may sign there). Before: the key became a member and the query was answered.
    Now: an Alive not from its member's own connection nor signed by it is dropped; a key that signed its own
    Alive is listed but may sign only on its own connection, which Mallory's certificate is not."""
    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        operator = NodeKey.from_seed(b"operator")
        cfg = tls_config(pki.node("victim"), tmp_path / "v", operator_keys=(b64(operator),))
        async with tlsnode.node(cfg) as (addr, victim):
            mallory = Mallory(pki, addr)
            fresh, forged = NodeKey.generate(), NodeKey.generate()
            await mallory.packet(alive(forged, sign=False))  # an unsigned Alive about another key
            await mallory.packet(alive(fresh))  # the fresh key's own signed Alive, relayed by Mallory
            await mallory.packet(alive(fresh, incarnation=2), source=fresh.node_id)  # "I am the fresh node"
            req = mesh_pb2.FleetQueryRequest(deadline_ms=500)
            code, details = await code_of(
                lambda: mallory.stub.FleetQuery(req, timeout=5, metadata=signed(fresh, req, victim.node_id)))
            await mallory.close()
            counters = victim.peers().counters
            assert victim.membership.member(forged.node_id) is None
            assert counters["alives_unsigned"] == 1 and counters["identity_source_mismatch"] == 1
            assert code == grpc.StatusCode.PERMISSION_DENIED and "not_own_connection" in details, (code, details)
            assert counters["requests_not_own_connection"] == 1 and counters["requests_authorized"] == 0

    run(main())


def test_one_certificate_cannot_mint_an_identity_past_the_denylist(tmp_path: Path) -> None:
    """Attack: Mallory's key is on the victim's denylist; she mints a key, gossips it in and signs with it.
    Before: the minted key was a member and not denied, so the query was answered. Now it is refused: the
    minted key has no certificate of its own, and Mallory's binds only her denied key."""
    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        mallory_tls = pki.node("mallory")
        mallory_id = NodeKey.load_or_create(mallory_tls / "mallory.node.key").node_id
        cfg = tls_config(pki.node("victim"), tmp_path / "v", deny=(mallory_id,))
        async with tlsnode.node(cfg) as (addr, victim):
            mallory = Mallory(pki, addr)
            minted = NodeKey.generate()
            await mallory.packet(alive(mallory.key), alive(minted))  # she is a member, and so is her mint
            req = mesh_pb2.FleetQueryRequest(deadline_ms=500)
            own = await code_of(
                lambda: mallory.stub.FleetQuery(req, timeout=5, metadata=signed(mallory.key, req, victim.node_id)))
            code, details = await code_of(
                lambda: mallory.stub.FleetQuery(req, timeout=5, metadata=signed(minted, req, victim.node_id)))
            await mallory.close()
            assert own[0] == grpc.StatusCode.PERMISSION_DENIED and "denylist" in own[1]
            assert code == grpc.StatusCode.PERMISSION_DENIED and "not_own_connection" in details, (code, details)
            assert victim.peers().counters["requests_authorized"] == 0

    run(main())


def test_minted_identities_publish_nothing_and_do_not_make_a_quorum(tmp_path: Path) -> None:
    """Attack: Mallory mints three keys, gossips them in with their own signed Alives and pushes a digest of
    each; three disputes of an honest member then meet the quorum (3) that blames it. Before: both digests were
    held and validated, and the honest node took the blame by majority until flagged. Now: minted keys are
    never certified (they never call with a certificate of their own), so their digests are dropped
    (``digests_uncertified``) and their disputes count for nothing in the quorum, which counts certificates."""
    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        trusts: list[MeshTrust] = []

        def with_trust(mesh: MeshService) -> None:
            trusts.append(MeshTrust(mesh, export_period=1.0))
            trusts[-1].attach()

        cfg = tls_config(pki.node("victim"), tmp_path / "v")
        async with tlsnode.node(cfg, before_start=with_trust) as (addr, victim):
            honest_cfg = tls_config(pki.node("honest"), tmp_path / "h")
            async with tlsnode.node(honest_cfg, seeds=(addr,)) as (_, honest):
                deadline = time.monotonic() + 20
                while victim.identity.certificate(honest.node_id) is None and time.monotonic() < deadline:
                    await asyncio.sleep(0.05)  # the honest node joins: its push-pull certifies it here
                assert victim.identity.certificate(honest.node_id) is not None
                mallory = Mallory(pki, addr)
                minted = [NodeKey.generate() for _ in range(3)]
                # Mallory is a member at 127.0.0.1:9 (her own Alive), so her push-pull's state is taken
                # (gossip bounds drop state pushed from an address that is not the sender's member address)
                await mallory.packet(alive(mallory.key), *(alive(k) for k in minted))
                await mallory.push(*(digest(k, 1) for k in minted))
                await mallory.close()
                assert all(victim.membership.member(k.node_id) is not None for k in minted)  # signed Alives
                held = victim.exchange.held()
                assert [k.node_id in held for k in minted] == [False, False, False]
                assert victim.peers().counters["digests_uncertified"] == 3
                trust = trusts[0].monitor.trust
                now = time.time_ns()
                for i in range(1, 6):  # disputes each period, as the minted keys' digests would make them
                    evidence = [Evidence(k.node_id, honest.node_id, "tcp", "10.66.0.1", 40000 + i, "10.66.0.2", 443,
                                         "existence", 1, 0, "missing_at_witness", "contradiction", now)
                                for k in minted]
                    blames = trust.update(now + i * S, evidence)
                    assert not [b for b in blames if b.node_id == honest.node_id and b.attribution == "majority"]
                assert not trust.is_flagged(honest.node_id)

    run(main())


def test_a_member_cannot_announce_that_another_member_left(tmp_path: Path) -> None:
    """Attack: Mallory says an honest member left: a Dead whose ``from`` is the honest node, in a packet, and the
    honest node listed LEFT in her push-pull state. Before: the victim marked it left (it stops probing and
    gossiping to a member that left, and asks it nothing), until the honest node's refutation came round. Now a
    leave is believed only from its member's own connection or signed by its key: both are refused and counted
    (``leaves_unsigned``), and the honest node's own leave, when it does leave, is believed, and is relayed
    with its signature."""
    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        async with tlsnode.node(tls_config(pki.node("victim"), tmp_path / "v")) as (addr, victim):
            witness_cfg = tls_config(pki.node("witness"), tmp_path / "w")
            async with tlsnode.node(witness_cfg, seeds=(addr,)) as (_, witness):
                honest_cfg = tls_config(pki.node("honest"), tmp_path / "h")
                async with tlsnode.node(honest_cfg, seeds=(addr,)) as (_, honest):
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and (
                            witness.membership.member(honest.node_id) is None
                            or victim.membership.member(honest.node_id) is None):
                        await asyncio.sleep(0.05)
                    held = victim.membership.member(honest.node_id)
                    assert held is not None and witness.membership.member(honest.node_id) is not None
                    mallory = Mallory(pki, addr)
                    forged = mesh_pb2.Dead(node=honest.node_id, incarnation=held.incarnation,
                                           **{"from": honest.node_id})
                    await mallory.packet(alive(mallory.key), mesh_pb2.Gossip(dead=forged))
                    signed_by_her = mesh_pb2.Dead()
                    signed_by_her.CopyFrom(forged)
                    sign_leave(mallory.key, signed_by_her)  # a signature, but not the honest node's
                    await mallory.packet(mesh_pb2.Gossip(dead=signed_by_her))
                    await mallory.push(members=(mesh_pb2.PushPullMember(
                        node=honest.node_id, addr=held.addr, incarnation=held.incarnation + 1,
                        state=mesh_pb2.LEFT, public_key=mallory.key.public_raw,
                        leave_signature=signed_by_her.signature),))
                    await mallory.close()
                    assert victim.membership.state_of(honest.node_id) == State.ALIVE
                    assert victim.peers().counters["leaves_unsigned"] == 3
                    await honest.stop()  # leaves gracefully: its own, signed, leave
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and (
                        victim.membership.state_of(honest.node_id) != State.LEFT
                        or witness.membership.state_of(honest.node_id) != State.LEFT):
                    await asyncio.sleep(0.05)
                assert victim.membership.state_of(honest.node_id) == State.LEFT
                assert witness.membership.state_of(honest.node_id) == State.LEFT
                assert victim.peers().counters["leaves_unsigned"] == 3
                assert witness.peers().counters["leaves_unsigned"] == 0

    run(main())


def test_a_signed_request_does_not_replay_to_another_node(tmp_path: Path) -> None:
    """Attack: a fleet query the operator signed for one node, replayed within the freshness window to another
    node that trusts the same operator key. Before: the second node answered. Now the signature names its
    audience (the first node's id) and the second refuses it."""
    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        operator = NodeKey.from_seed(b"operator")
        alice = pki.client("alice")
        one = tls_config(pki.node("one"), tmp_path / "one", operator_keys=(b64(operator),))
        two = tls_config(pki.node("two"), tmp_path / "two", operator_keys=(b64(operator),))
        async with tlsnode.node(one) as (a1, n1), tlsnode.node(two) as (a2, n2):
            req = mesh_pb2.FleetQueryRequest(deadline_ms=500)
            md = signed(operator, req, n1.node_id)
            async with pki.channel(a1, alice) as c1, pki.channel(a2, alice) as c2:
                first = await code_of(lambda: mesh_pb2_grpc.MeshStub(c1).FleetQuery(req, timeout=5, metadata=md))
                code, details = await code_of(
                    lambda: mesh_pb2_grpc.MeshStub(c2).FleetQuery(req, timeout=5, metadata=md))
            assert first[0] == grpc.StatusCode.OK
            assert code == grpc.StatusCode.PERMISSION_DENIED and "wrong_audience" in details, (code, details)
            assert n2.peers().counters["requests_wrong_audience"] == 1

    run(main())


class _Recorder:
    """A plaintext "node" that records what meshctl sends it (as anyone on a plaintext path can)."""

    def __init__(self) -> None:
        self.captured: list[tuple[mesh_pb2.FleetQueryRequest, tuple[tuple[str, bytes], ...]]] = []
        self.server = grpc.aio.server()
        observer_pb2_grpc.add_ObserverServicer_to_server(self._Observer(), self.server)  # type: ignore[no-untyped-call]
        mesh_pb2_grpc.add_MeshServicer_to_server(self._Mesh(self), self.server)  # type: ignore[no-untyped-call]

    class _Observer(observer_pb2_grpc.ObserverServicer):
        async def Status(self, request: Any, context: Any) -> observer_pb2.StatusResponse:
            return observer_pb2.StatusResponse(node_id="1111111111111111")

    class _Mesh(mesh_pb2_grpc.MeshServicer):
        def __init__(self, outer: _Recorder) -> None:
            self.outer = outer

        async def FleetQuery(self, request: Any, context: Any) -> mesh_pb2.FleetQueryResponse:
            self.outer.captured.append((request, tuple((k, v) for k, v in context.invocation_metadata()
                                                       if k == "meshnode-auth-bin")))
            return mesh_pb2.FleetQueryResponse()


async def _meshctl(*args: str) -> tuple[int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MESHCTL_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cli", *args, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    return proc.returncode or 0, err.decode()


def test_meshctl_does_not_sign_over_plaintext_and_a_captured_signature_does_not_replay(tmp_path: Path) -> None:
    """Attack: meshctl with the operator's key asks a plaintext node; whoever sees the traffic replays the
    signature, within 30 s, to a TLS node that trusts the operator. Before: meshctl signed in plaintext and the
    TLS node answered the replay. Now meshctl refuses to sign in plaintext; told to anyway
    (``--sign-plaintext``), its signature names the plaintext node, and the TLS node refuses the replay."""
    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        alice = pki.client("alice")
        operator = NodeKey.from_seed(b"operator")
        key_file = tmp_path / "alice.sign.key"
        fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(operator._key.private_bytes(  # the operator's signing key, as meshnode ca issue writes it
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        recorder = _Recorder()
        port = recorder.server.add_insecure_port("127.0.0.1:0")
        await recorder.server.start()
        cfg = tls_config(pki.node("prod"), tmp_path / "prod", operator_keys=(b64(operator),))
        try:
            async with tlsnode.node(cfg) as (addr, prod):
                plain = f"127.0.0.1:{port}"
                rc, err = await _meshctl("--node", plain, "--sign-key", str(key_file), "query", "--json")
                assert rc == 2 and "refusing to sign" in err, (rc, err)
                assert recorder.captured == []
                rc, err = await _meshctl("--node", plain, "--sign-key", str(key_file), "--sign-plaintext",
                                         "query", "--json")
                assert len(recorder.captured) == 1 and recorder.captured[0][1], (rc, err)
                req, md = recorder.captured[0]  # the request and its signature, exactly as they crossed the wire
                async with pki.channel(addr, alice) as ch:
                    code, details = await code_of(lambda: mesh_pb2_grpc.MeshStub(ch).FleetQuery(
                        req, timeout=5, metadata=md))
                assert code == grpc.StatusCode.PERMISSION_DENIED and "wrong_audience" in details, (code, details)
                assert prod.peers().counters["requests_authorized"] == 0
        finally:
            await recorder.server.stop(0)

    run(main())


def test_a_node_refuses_signed_requests_in_plaintext(tmp_path: Path) -> None:
    """An insecure (lab) node serves unsigned requests and refuses signed ones: a signature that crossed the
    network in plaintext may have been read on the way. Operator keys need TLS."""
    from meshnode._exceptions import ConfigError
    from meshnode.daemon._security import NodeSecurity

    operator = NodeKey.from_seed(b"operator")
    with pytest.raises(ConfigError, match="operator_keys"):
        NodeSecurity.from_config(NodeConfig(insecure=True, operator_keys=(b64(operator),), data_dir=tmp_path))

    async def main() -> None:
        async with tlsnode.node(NodeConfig(insecure=True, data_dir=tmp_path)) as (addr, lab):
            req = mesh_pb2.FleetQueryRequest(deadline_ms=500)
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
                unsigned = await code_of(lambda: stub.FleetQuery(req, timeout=5))
                code, details = await code_of(
                    lambda: stub.FleetQuery(req, timeout=5, metadata=signed(operator, req, lab.node_id)))
            assert unsigned[0] == grpc.StatusCode.OK
            assert code == grpc.StatusCode.PERMISSION_DENIED and "only over TLS" in details
            assert lab.peers().counters["requests_plaintext"] == 1

    run(main())
