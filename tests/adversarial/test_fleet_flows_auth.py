"""Who may read the fleet's flow history: attacks on ``Mesh.FleetFlows`` over real mutual-TLS gRPC on 127.0.0.1,
against two member nodes wired as ``meshnode run`` wires them (``tests/_support/tlsnode.py``), each with a real
store of its own records.

An operator's signed query is answered with both members' records (the fan-out is signed by the asking node's
key on its own certificate, which the other member accepts). Everyone else gets PERMISSION_DENIED and no
record: a client certificate without a signature, a signature by a key that is neither an operator's nor a
member's, a fleet node certificate whose key is not a member asking for a member's records directly
(``local_only``), a member's key used on another certificate's connection; a certificate from another CA does
not get past the TLS handshake. An oversized filter, even signed by the operator, is refused with
INVALID_ARGUMENT naming the field, by the node asked and by a member asked directly.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from meshnode._model import FlowRecord
from meshnode.api import ApiExecutor, StoreHistory
from meshnode.daemon import NodeConfig
from meshnode.mesh import MeshService, NodeKey, State
from meshnode.store import Retention, Store
from meshnode.trust import auth_metadata
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc
from tests._support import tlsnode
from tests._support.tlsnode import Pki

FF = "/meshnode.v1.Mesh/FleetFlows"
S = 10**9
NOW = time.time_ns()


def _store(path: Path, n: int, tag: int) -> Store:
    store = Store.in_dir(path, Retention(7 * 86400.0, 1 << 30))
    seq = store.open_period(NOW - 120 * S)
    store.close_period(seq, NOW - 40 * S, [
        FlowRecord(flow_id=tag * 100 + j, src="10.1.0.1", sport=30000 + j, dst="10.2.0.1", dport=5432,
                   proto="tcp", direction="outbound", pid=5, comm="psql", start_ns=NOW - 90 * S + j,
                   end_ns=NOW - 60 * S + j, outcome="established", kind="final") for j in range(n)], [], "")
    return store


async def code_of(call: Callable[[], Awaitable[Any]]) -> tuple[grpc.StatusCode, str, Any]:
    try:
        resp = await call()
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or "", None
    return grpc.StatusCode.OK, "", resp


def _req(local_only: bool = False) -> mesh_pb2.FleetFlowsRequest:
    req = mesh_pb2.FleetFlowsRequest(deadline_ms=3000, local_only=local_only)
    req.flows.whitelist.add(dport=[5432])
    return req


def test_only_operators_and_members_read_the_fleet_history(tmp_path: Path) -> None:
    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        other_ca = Pki(tmp_path / "other")
        operator = NodeKey.from_seed(b"operator")
        op = (base64.b64encode(operator.public_raw).decode(),)
        executor = ApiExecutor(2)
        stores = [_store(tmp_path / "s1", 3, 1), _store(tmp_path / "s2", 4, 2)]

        def with_history(i: int) -> Callable[[MeshService], None]:
            def attach(mesh: MeshService) -> None:
                mesh.history = StoreHistory(stores[i], executor)
            return attach

        cfg1 = NodeConfig(tls_dir=pki.node("one"), data_dir=tmp_path / "d1", operator_keys=op)
        cfg2 = NodeConfig(tls_dir=pki.node("two"), data_dir=tmp_path / "d2", operator_keys=op)
        for c in (cfg1, cfg2):
            c.data_dir.mkdir()
        try:
            async with tlsnode.node(cfg1, before_start=with_history(0)) as (a1, one), \
                    tlsnode.node(cfg2, seeds=(a1,), before_start=with_history(1)) as (a2, two):
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and not all(
                        sum(x.state == State.ALIVE for x in m.membership.members()) == 2 for m in (one, two)):
                    await asyncio.sleep(0.05)
                alice = pki.client("alice")  # meshctl's certificate: client authentication only
                mallory = pki.node("mallory")  # a node certificate of the fleet CA; its key never joined
                mallory_key = NodeKey.load_or_create(mallory / "mallory.node.key")
                stranger = other_ca.node("eve")  # a node certificate from another CA
                req, local = _req(), _req(local_only=True)
                async with pki.channel(a1, alice) as ca1, pki.channel(a2, mallory) as cm2, \
                        other_ca.channel(a1, stranger) as ce1:
                    s_alice, s_mallory = mesh_pb2_grpc.MeshStub(ca1), mesh_pb2_grpc.MeshStub(cm2)
                    ok = await code_of(lambda: s_alice.FleetFlows(
                        req, timeout=10, metadata=auth_metadata(operator, FF, req, one.node_id)))
                    attacks = {
                        "unsigned": await code_of(lambda: s_alice.FleetFlows(req, timeout=10)),
                        "unknown key": await code_of(lambda: s_alice.FleetFlows(
                            req, timeout=10, metadata=auth_metadata(NodeKey.generate(), FF, req, one.node_id))),
                        "non-member node, local_only": await code_of(lambda: s_mallory.FleetFlows(
                            local, timeout=10, metadata=auth_metadata(mallory_key, FF, local, two.node_id))),
                        "member key, another connection": await code_of(lambda: s_mallory.FleetFlows(
                            local, timeout=10, metadata=auth_metadata(one.key, FF, local, two.node_id))),
                        "unsigned local_only": await code_of(lambda: s_mallory.FleetFlows(local, timeout=10)),
                    }
                    foreign = await code_of(lambda: mesh_pb2_grpc.MeshStub(ce1).FleetFlows(req, timeout=5))
                    big = _req()
                    big.flows.whitelist.add(dst=[f"10.9.{i // 250}.{i % 250}" for i in range(1025)])
                    refused = await code_of(lambda: s_alice.FleetFlows(
                        big, timeout=10, metadata=auth_metadata(operator, FF, big, one.node_id)))
                    big_local = _req(local_only=True)
                    big_local.flows.whitelist.add(dst=[f"10.9.{i // 250}.{i % 250}" for i in range(1025)])
                    async with pki.channel(a2, alice) as ca2:
                        refused_local = await code_of(lambda: mesh_pb2_grpc.MeshStub(ca2).FleetFlows(
                            big_local, timeout=10, metadata=auth_metadata(operator, FF, big_local, two.node_id)))
        finally:
            executor.close()
            for s in stores:
                s.close()

        code, details, resp = ok
        assert code == grpc.StatusCode.OK, details
        assert not resp.partial and sorted((n.node_id, n.answered) for n in resp.nodes) == sorted(
            [(one.node_id, True), (two.node_id, True)])
        assert sorted((f.node_id, f.flow_id) for f in resp.flows) == sorted(
            [(one.node_id, 100 + j) for j in range(3)] + [(two.node_id, 200 + j) for j in range(4)])
        reasons = {"unsigned": "unsigned", "unknown key": "unknown_key", "non-member node, local_only": "unknown_key",
                   "member key, another connection": "not_own_connection", "unsigned local_only": "unsigned"}
        for name, (code, details, resp) in attacks.items():
            assert code == grpc.StatusCode.PERMISSION_DENIED and reasons[name] in details, (name, code, details)
            assert resp is None
        assert foreign[0] == grpc.StatusCode.UNAVAILABLE and foreign[2] is None, foreign[:2]
        for code, details, _ in (refused, refused_local):
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "whitelist[1].dst" in details, (code, details)
        assert two.counters["fleet_flows_local_answers"] == 1  # the operator's query only
        assert one.counters["requests_unsigned"] == 1 and two.counters["requests_unsigned"] == 1

    asyncio.run(asyncio.wait_for(main(), 90))
