"""Mutual TLS on a real grpc.aio server on 127.0.0.1 with certificates from ``meshnode ca``.

A client with a certificate from the fleet CA gets answers; a client without a certificate, or with one from
another CA, is refused at the handshake and never reaches the servicer.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from meshnode.trust import channel_credentials, init_ca, issue, load_material, server_credentials


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pki")
    fleet, other = root / "fleet", root / "other"
    init_ca(fleet, "fleet")
    issue(fleet, "node", ips=["127.0.0.1"])
    issue(fleet, "alice", client_only=True)
    init_ca(other, "other")
    issue(other, "mallory", client_only=True)
    return {"fleet": fleet, "other": other}


async def _call(pki: dict[str, Path], creds: grpc.ChannelCredentials) -> tuple[grpc.StatusCode, int]:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    await servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(pki["fleet"], "node"))
    await server.start()
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", creds) as ch:
            stub = health_pb2_grpc.HealthStub(ch)
            try:
                resp = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
                return grpc.StatusCode.OK, resp.status
            except grpc.aio.AioRpcError as exc:
                return exc.code(), -1
    finally:
        await server.stop(0)


def run(pki, creds):
    return asyncio.run(asyncio.wait_for(_call(pki, creds), 30))


def test_client_with_a_fleet_certificate_is_served(pki):
    assert run(pki, channel_credentials(pki["fleet"], "alice")) == (
        grpc.StatusCode.OK, health_pb2.HealthCheckResponse.SERVING)


def test_node_certificate_also_works_as_a_client(pki):
    assert run(pki, channel_credentials(pki["fleet"], "node"))[0] == grpc.StatusCode.OK


def test_client_without_a_certificate_is_refused(pki):
    ca = load_material(pki["fleet"], "alice").ca
    code, status = run(pki, grpc.ssl_channel_credentials(root_certificates=ca))
    assert code == grpc.StatusCode.UNAVAILABLE and status == -1


def test_client_with_a_certificate_from_another_ca_is_refused(pki):
    other = load_material(pki["other"], "mallory")
    fleet_ca = load_material(pki["fleet"], "alice").ca
    creds = grpc.ssl_channel_credentials(root_certificates=fleet_ca, private_key=other.key,
                                         certificate_chain=other.cert)
    code, status = run(pki, creds)
    assert code == grpc.StatusCode.UNAVAILABLE and status == -1


def test_client_that_does_not_trust_the_fleet_ca_refuses_the_server(pki):
    other = load_material(pki["other"], "mallory")
    creds = grpc.ssl_channel_credentials(root_certificates=other.ca, private_key=other.key,
                                         certificate_chain=other.cert)
    assert run(pki, creds)[0] == grpc.StatusCode.UNAVAILABLE


def test_mesh_gossip_needs_a_node_certificate(pki):
    """A client certificate (meshctl's) reaches the API but cannot gossip: membership is what makes a key a
    member, and members may sign fleet queries and tasks."""
    from meshnode.mesh import MeshService, NodeKey
    from meshnode.v1 import mesh_pb2, mesh_pb2_grpc

    async def main() -> dict[str, grpc.StatusCode]:
        server = grpc.aio.server()
        mesh = MeshService(advertise="127.0.0.1:9", key=NodeKey.from_seed(b"mtls-mesh"))
        mesh.node_certificates_only = True
        mesh.register(server)
        port = server.add_secure_port("127.0.0.1:0", server_credentials(pki["fleet"], "node"))
        await server.start()
        out = {}
        try:
            for name in ("alice", "node"):
                async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(pki["fleet"], name)) as ch:
                    try:
                        await mesh_pb2_grpc.MeshStub(ch).Packet(
                            mesh_pb2.PacketRequest(from_addr="127.0.0.1:9", payload=b""), timeout=5)
                        out[name] = grpc.StatusCode.OK
                    except grpc.aio.AioRpcError as exc:
                        out[name] = exc.code()
        finally:
            await server.stop(0)
        assert mesh.counters["gossip_refused_not_a_node"] == 1
        return out

    assert asyncio.run(asyncio.wait_for(main(), 30)) == {
        "alice": grpc.StatusCode.PERMISSION_DENIED, "node": grpc.StatusCode.OK}
