"""``meshnode.daemon._security``: operator keys, the denylist, the lab rule, refusals counted where operators
look; on a real grpc.aio server on 127.0.0.1 with a real MeshService (the node's wiring, without a sensor)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import grpc
import pytest

from meshnode._exceptions import ConfigError
from meshnode.daemon import NodeConfig
from meshnode.daemon._security import NodeSecurity, denied_ids, parse_public_key, read_key_file
from meshnode.mesh import MeshService, NodeKey, sign_digest
from meshnode.trust import auth_metadata
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc
from tests._support import tlsnode
from tests._support.tlsnode import Pki

OPERATOR = NodeKey.from_seed(b"operator")
STRANGER = NodeKey.from_seed(b"stranger")
FQ = "/meshnode.v1.Mesh/FleetQuery"


def b64(key: NodeKey) -> str:
    return base64.b64encode(key.public_raw).decode()


def test_public_keys_parse_from_config_and_files(tmp_path: Path) -> None:
    assert parse_public_key(b64(OPERATOR) + "  # alice", "operator_keys") == OPERATOR.public_raw
    for bad in ("nope", base64.b64encode(b"short").decode(), ""):
        with pytest.raises(ConfigError, match=r"operator_keys: .* is not an Ed25519 public key"):
            parse_public_key(bad, "operator_keys")
    f = tmp_path / "operators"
    f.write_text(f"# fleet operators\n\n{b64(OPERATOR)}  # operator alice\n{b64(STRANGER)}\n")
    assert read_key_file(f) == [OPERATOR.public_raw, STRANGER.public_raw]
    f.write_text("garbage\n")
    with pytest.raises(ConfigError, match=f"operator_keys_file {f}:1"):
        read_key_file(f)
    with pytest.raises(ConfigError, match="cannot read"):
        read_key_file(tmp_path / "missing")


def test_deny_takes_node_ids_and_public_keys() -> None:
    assert denied_ids(("ABCDEF0123456789", b64(STRANGER))) == {"abcdef0123456789", STRANGER.node_id}


def test_the_lab_rule(tmp_path: Path) -> None:
    sec = NodeSecurity.from_config(NodeConfig(insecure=True, data_dir=tmp_path))
    assert sec.insecure and sec.allow_unsigned


def test_operator_keys_need_tls(tmp_path: Path) -> None:
    """Signatures are refused in plaintext, so operator keys on an insecure node could authorize nothing."""
    with pytest.raises(ConfigError, match="operator_keys: signed requests are accepted only over TLS"):
        NodeSecurity.from_config(NodeConfig(insecure=True, operator_keys=(b64(OPERATOR),), data_dir=tmp_path))


def test_no_tls_and_not_insecure_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="tls_dir"):
        NodeSecurity.from_config(NodeConfig(data_dir=tmp_path))


@asynccontextmanager
async def node(cfg: NodeConfig) -> AsyncIterator[tuple[mesh_pb2_grpc.MeshStub, MeshService]]:
    """The node's wiring: NodeSecurity.apply on the API's interceptors, the mesh on that server."""
    mesh = MeshService(advertise="127.0.0.1:0", key=NodeKey.from_seed(b"node"), export_period=0)
    fake = SimpleNamespace(api=SimpleNamespace(credentials=None, interceptors=[]), config=cfg)
    NodeSecurity.from_config(cfg).apply(fake, mesh)  # type: ignore[arg-type]
    server = grpc.aio.server(interceptors=fake.api.interceptors)
    mesh.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    mesh.advertise = f"127.0.0.1:{port}"
    await mesh.start()
    channel = grpc.aio.insecure_channel(mesh.advertise)
    try:
        yield mesh_pb2_grpc.MeshStub(channel), mesh  # type: ignore[no-untyped-call]
    finally:
        await channel.close()
        await mesh.stop(leave=False)
        await server.stop(0)


async def _code(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str]:
    try:
        await call()
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


def test_insecure_accepts_unsigned_and_refuses_signed(tmp_path: Path) -> None:
    """In plaintext a signature could be read and replayed on the way: the node refuses it, whoever signed."""
    async def main() -> None:
        async with node(NodeConfig(insecure=True, data_dir=tmp_path)) as (stub, mesh):
            req = mesh_pb2.FleetQueryRequest(deadline_ms=500)
            assert (await _code(lambda: stub.FleetQuery(req, timeout=5)))[0] == grpc.StatusCode.OK
            code, details = await _code(
                lambda: stub.FleetQuery(req, timeout=5, metadata=auth_metadata(STRANGER, FQ, req, mesh.node_id)))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "only over TLS" in details
            counters = mesh.peers().counters
            assert counters["requests_unsigned_allowed"] == 1 and counters["requests_plaintext"] == 1

    asyncio.run(main())


def test_operator_keys_and_the_denylist(tmp_path: Path) -> None:
    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        tls, alice = pki.node("n1"), pki.client("alice")
        cfg = NodeConfig(tls_dir=tls, operator_keys=(b64(OPERATOR),), deny=(b64(STRANGER),), data_dir=tmp_path)
        async with tlsnode.node(cfg) as (addr, mesh), pki.channel(addr, alice) as ch:
            stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
            req = mesh_pb2.FleetQueryRequest(deadline_ms=500)
            code, details = await _code(lambda: stub.FleetQuery(req, timeout=5))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "unsigned" in details
            ok = await _code(lambda: stub.FleetQuery(
                req, timeout=5, metadata=auth_metadata(OPERATOR, FQ, req, mesh.node_id)))
            assert ok[0] == grpc.StatusCode.OK
            measure = mesh_pb2.MeasureRequest(target="127.0.0.1:9", count=1)
            code, details = await _code(lambda: stub.Measure(measure, timeout=5))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "unsigned" in details
        # the same key on the denylist: refused even though it is an operator's
        cfg2 = NodeConfig(tls_dir=tls, operator_keys=(b64(OPERATOR),), deny=(OPERATOR.node_id,), data_dir=tmp_path)
        async with tlsnode.node(cfg2) as (addr, mesh), pki.channel(addr, alice) as ch:
            stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
            code, details = await _code(
                lambda: stub.FleetQuery(req, timeout=5, metadata=auth_metadata(OPERATOR, FQ, req, mesh.node_id)))
            assert code == grpc.StatusCode.PERMISSION_DENIED and "denylist" in details
            assert mesh.peers().counters["requests_denied"] == 1

    asyncio.run(main())


def test_forged_replayed_unknown_and_misattributed_digests_are_counted_in_peers(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(NodeConfig(insecure=True, data_dir=tmp_path)) as (_, mesh):
            peer = NodeKey.from_seed(b"peer")
            now = time.time_ns()
            d = mesh_pb2.Digest(version=1, node_id=peer.node_id, seq=3, period_start_ns=now - 10**9,
                                period_end_ns=now)
            good = sign_digest(peer, d)
            forged = mesh_pb2.SignedDigest(payload=good.payload, signature=bytes(64), public_key=peer.public_raw)
            stranger = sign_digest(STRANGER, mesh_pb2.Digest(version=1, node_id=peer.node_id, seq=4,
                                                               period_start_ns=now - 10**9, period_end_ns=now))
            ex = mesh.exchange
            assert not ex.ingest(good, "10.0.0.9:7400")  # valid, but the key is no member's
            # the peer joins (its address: a closed loopback port; the node's probes go nowhere else)
            mesh.membership._alive(mesh_pb2.Alive(node=peer.node_id, incarnation=1, addr="127.0.0.1:9"))
            assert [ex.ingest(s, "10.0.0.9:7400") for s in (forged, good, good, stranger)] == [
                False, True, False, False]
            counters = mesh.peers().counters
            assert counters["digests_unknown_key"] == 1
            assert counters["digests_bad_signature"] == 1
            assert counters["digests_stale"] == 1
            assert counters["digests_bad_identity"] == 1
            assert counters["digests_accepted"] == 1

    asyncio.run(main())
