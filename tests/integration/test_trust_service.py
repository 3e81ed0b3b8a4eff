"""meshnode.v1.Trust on a real grpc.aio server over mTLS, behind the signed-request interceptor.

Validate answers scores and evidence; an unsigned or foreign-signed call is refused with PERMISSION_DENIED
before the servicer runs; reflection lists the service under the name meshctl looks for.
"""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_reflection.v1alpha import reflection, reflection_pb2, reflection_pb2_grpc

from meshnode.mesh import NodeKey
from meshnode.trust import (
    Authorizer,
    SignedRequestInterceptor,
    TrustMonitor,
    add_trust_servicer,
    auth_metadata,
    channel_credentials,
    init_ca,
    issue,
    server_credentials,
)
from meshnode.v1 import flow_pb2, mesh_pb2, trust_pb2, trust_pb2_grpc

S = 10**9
P = 10 * S
METHOD = "/meshnode.v1.Trust/Validate"
OPERATOR, STRANGER = NodeKey.from_seed(b"operator"), NodeKey.from_seed(b"stranger")


@pytest.fixture(scope="module")
def tls(tmp_path_factory):
    d = tmp_path_factory.mktemp("tls")
    init_ca(d, "fleet")
    issue(d, "node", ips=["127.0.0.1"])
    issue(d, "meshctl", client_only=True)
    return d


AUD = "a"
"""The node id of the node under test (the audience operators sign for)."""


def monitor() -> TrustMonitor:
    t0 = (1_700_000_000 * S // P) * P
    m = TrustMonitor("a", now_ns=t0)
    m.set_members({"10.0.0.1": "a", "10.0.0.2": "b"})

    def rec(src, sport, dst, dport, direction, tx, rx):
        return flow_pb2.Flow(src=src, sport=sport, dst=dst, dport=dport, proto=flow_pb2.TCP, direction=direction,
                             bytes_tx=tx, bytes_rx=rx, packets_tx=9, packets_rx=9, outcome=flow_pb2.ESTABLISHED,
                             start_ns=t0 + S, end_ns=t0 + 2 * S, kind=flow_pb2.FINAL)

    for node, r in (("a", rec("10.0.0.1", 40000, "10.0.0.2", 443, flow_pb2.OUTBOUND, 5000, 700)),
                    ("b", rec("10.0.0.2", 443, "10.0.0.1", 40000, flow_pb2.INBOUND, 1400, 5000))):
        m.on_digest(mesh_pb2.Digest(version=1, node_id=node, seq=1, period_start_ns=t0, period_end_ns=t0 + P,
                                    endpoints=[r]), "test")
    m.close_period(t0 + P + S)
    return m


async def scenario(tls) -> None:
    interceptor = SignedRequestInterceptor(Authorizer([OPERATOR.public_raw], audience=AUD), [METHOD])
    server = grpc.aio.server(interceptors=[interceptor])
    add_trust_servicer(monitor(), server)
    reflection.enable_server_reflection(
        (trust_pb2.DESCRIPTOR.services_by_name["Trust"].full_name, reflection.SERVICE_NAME), server)
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls, "node"))
    await server.start()
    try:
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", channel_credentials(tls, "meshctl")) as ch:
            stub = trust_pb2_grpc.TrustStub(ch)
            req = trust_pb2.ValidateRequest(peer="b")
            resp = await stub.Validate(req, metadata=auth_metadata(OPERATOR, METHOD, req, AUD), timeout=5)
            assert [(s.node_id, s.flagged) for s in resp.scores] == [("b", True)]
            [e] = resp.evidence
            assert e.blamed == "b" and e.reason == "acked_more_than_received" and e.severity == trust_pb2.CONTRADICTION
            for md in ((), auth_metadata(STRANGER, METHOD, req, AUD)):
                with pytest.raises(grpc.aio.AioRpcError) as exc:
                    await stub.Validate(req, metadata=md, timeout=5)
                assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            # a signature for another request does not carry over
            with pytest.raises(grpc.aio.AioRpcError) as exc:
                await stub.Validate(trust_pb2.ValidateRequest(), metadata=auth_metadata(OPERATOR, METHOD, req, AUD),
                                    timeout=5)
            assert exc.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert interceptor.counters == {"requests_authorized": 1, "requests_unsigned": 1,
                                            "requests_unknown_key": 1, "requests_bad_signature": 1}
            refl = reflection_pb2_grpc.ServerReflectionStub(ch)

            async def ask():
                yield reflection_pb2.ServerReflectionRequest(list_services="")

            async for r in refl.ServerReflectionInfo(ask()):
                names = {s.name for s in r.list_services_response.service}
                assert "meshnode.v1.Trust" in names
                break
    finally:
        await server.stop(0)


def test_validate_over_mtls_with_signed_requests(tls):
    asyncio.run(asyncio.wait_for(scenario(tls), 30))
