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
from meshnode.mesh import MeshService, NodeKey, State, sign_answer
from meshnode.store import Retention, Store
from meshnode.trust import auth_metadata, server_credentials
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


class _Impostor(mesh_pb2_grpc.MeshServicer):
    """Mallory's node at a member's old address: answers fleet flow queries with records of her making, signed
    with her own key (the one her certificate binds), or not at all."""

    def __init__(self, key: NodeKey, victim_id: str) -> None:
        self.key, self.victim_id = key, victim_id
        self.asked = 0

    async def FleetFlows(self, request: Any, context: Any) -> mesh_pb2.FleetFlowsResponse:
        self.asked += 1
        resp = mesh_pb2.FleetFlowsResponse(more=False)
        for j in range(2):
            resp.flows.add(node_id=self.victim_id, flow_id=900 + j, end_ns=NOW - 50 * S + j, dst="10.2.0.1",
                           dport=5432)
            resp.keys.add(table=0, row_id=j + 1)
        if self.asked == 1:
            sign_answer(self.key, request, resp)  # a valid signature, but by her key
        return resp


def test_a_member_certificate_answering_at_another_members_address_is_refused(tmp_path: Path) -> None:
    """Attack: member two stops; Mallory, holding a node certificate of the same CA (its address, 127.0.0.1 here,
    passes the TLS check), takes over two's address and answers the fleet flow query meant for two with
    records of her making. Before: the asking node took them as two's records. Now the answer must be signed
    by two's key over the request's challenge: signed by Mallory, or unsigned, it is refused, two is reported
    as not answered (UNTRUSTED_ANSWER) and none of Mallory's records is shown."""
    async def main() -> None:
        pki = Pki(tmp_path / "pki")
        operator = NodeKey.from_seed(b"operator")
        op = (base64.b64encode(operator.public_raw).decode(),)
        executor = ApiExecutor(2)
        store = _store(tmp_path / "s1", 3, 1)

        def with_history(mesh: MeshService) -> None:
            mesh.history = StoreHistory(store, executor)

        cfg1 = NodeConfig(tls_dir=pki.node("one"), data_dir=tmp_path / "d1", operator_keys=op)
        cfg2 = NodeConfig(tls_dir=pki.node("two"), data_dir=tmp_path / "d2", operator_keys=op)
        for c in (cfg1, cfg2):
            c.data_dir.mkdir()
        mallory = pki.node("mallory")
        impostor = _Impostor(NodeKey.load_or_create(mallory / "mallory.node.key"), "")
        server = grpc.aio.server()
        try:
            async with tlsnode.node(cfg1, before_start=with_history) as (a1, one):
                async with tlsnode.node(cfg2, seeds=(a1,)) as (a2, two):
                    deadline = time.monotonic() + 20
                    while time.monotonic() < deadline and one.membership.state_of(two.node_id) != State.ALIVE:
                        await asyncio.sleep(0.05)
                    assert one.membership.state_of(two.node_id) == State.ALIVE
                    impostor.victim_id = two.node_id
                # two is gone (stopped without leaving: still listed, so still asked); Mallory takes its port
                mesh_pb2_grpc.add_MeshServicer_to_server(impostor, server)  # type: ignore[no-untyped-call]
                assert server.add_secure_port(a2, server_credentials(mallory, "mallory")) > 0
                await server.start()
                alice = pki.client("alice")
                async with pki.channel(a1, alice) as ch:
                    stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
                    answers = []
                    for _ in range(2):  # signed by Mallory's key, then unsigned
                        req = _req()
                        answers.append(await stub.FleetFlows(
                            req, timeout=10, metadata=auth_metadata(operator, FF, req, one.node_id)))
                untrusted = one.counters["fleet_flows_answers_untrusted"]
        finally:
            await server.stop(0)
            executor.close()
            store.close()
        assert impostor.asked == 2
        for resp in answers:
            assert sorted((f.node_id, f.flow_id) for f in resp.flows) == [(one.node_id, 100 + j) for j in range(3)]
            by_node = {n.node_id: (n.answered, n.error) for n in resp.nodes}
            assert by_node == {one.node_id: (True, ""), two.node_id: (False, "UNTRUSTED_ANSWER")}, by_node
            assert resp.partial
        assert untrusted == 2

    asyncio.run(asyncio.wait_for(main(), 90))
