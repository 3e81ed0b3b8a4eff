"""Active tasks (seed 003): the guards, and Measure over a real gRPC server with real TCP connects."""

from __future__ import annotations

import asyncio
import random
import socket

import grpc
import pytest

from meshnode.mesh import MeshConfig, MeshService, NodeKey, TaskPolicy, TaskRefused, TokenBucket
from meshnode.mesh._tasks import bounded, split_target
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc

FAST = MeshConfig(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, push_pull_interval=1.0,
                  suspicion_mult=3, stream_timeout=1.0, reconnect_interval=0)


@pytest.mark.parametrize(("steps", "expect"), [
    ([(0, 5), (0, 5)], [True, True]),            # burst 10
    ([(0, 10), (0, 1)], [True, False]),          # empty
    ([(0, 10), (1.0, 2), (0, 1)], [True, True, False]),  # 2 tokens per second, then empty again
    ([(0, 11)], [False]),                        # over the burst: refused, nothing taken
    ([(0, 11), (0, 10)], [False, True]),
])
def test_token_bucket(steps: list[tuple[float, int]], expect: list[bool]) -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=10.0, clock=lambda: now[0])
    got = []
    for advance, n in steps:
        now[0] += advance
        got.append(bucket.take(n))
    assert got == expect


@pytest.mark.parametrize(("policy", "addr", "rid", "code"), [
    (TaskPolicy(), "10.0.0.1", "", None),
    (TaskPolicy(enabled=False), "10.0.0.1", "", "FAILED_PRECONDITION"),
    (TaskPolicy(deny=frozenset({"10.0.0.0/8"})), "10.1.2.3", "", "PERMISSION_DENIED"),
    (TaskPolicy(deny=frozenset({"10.0.0.0/8"})), "192.0.2.1", "", None),
    (TaskPolicy(deny=frozenset({"abcd1234abcd1234"})), "192.0.2.1", "abcd1234abcd1234", "PERMISSION_DENIED"),
    (TaskPolicy(deny=frozenset({"::1"})), "::1", "", "PERMISSION_DENIED"),
])
def test_policy(policy: TaskPolicy, addr: str, rid: str, code: str | None) -> None:
    if code is None:
        policy.check(addr, rid)
        return
    with pytest.raises(TaskRefused) as err:
        policy.check(addr, rid)
    assert err.value.code == code


def test_bounds_and_targets() -> None:
    assert bounded(0, 0) == (5, 2.0)
    assert bounded(100, 10_000) == (100, 10.0)
    for count, timeout in ((101, 0), (0, 10_001)):
        with pytest.raises(TaskRefused) as err:
            bounded(count, timeout)
        assert err.value.code == "INVALID_ARGUMENT"
    assert split_target("[fd00::2]:443") == ("fd00::2", 443)
    for bad in ("10.0.0.1", "10.0.0.1:0", "host:http", ":80"):
        with pytest.raises(ValueError):
            split_target(bad)


async def _node(name: str, **kw: object) -> tuple[grpc.aio.Server, MeshService, str]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    mesh = MeshService(advertise=f"127.0.0.1:{port}", key=NodeKey.from_seed(name.encode()),
                       labels={"host": name}, config=FAST, export_period=0, rng=random.Random(1), **kw)  # type: ignore[arg-type]
    mesh.register(server)
    await server.start()
    await mesh.start()
    return server, mesh, f"127.0.0.1:{port}"


def test_measure_over_grpc() -> None:
    async def main() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        open_port = listener.getsockname()[1]
        closed = socket.socket()
        closed.bind(("127.0.0.1", 0))
        closed_port = closed.getsockname()[1]  # bound, not listening: connects are refused
        server, mesh, addr = await _node("measurer", task_bucket=TokenBucket(rate=0.001, burst=20))
        try:
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = mesh_pb2_grpc.MeshStub(ch)
                ok = await stub.Measure(mesh_pb2.MeasureRequest(target=f"127.0.0.1:{open_port}", count=5))
                assert (ok.node_id, ok.attempts, ok.reachable, len(ok.connect_us)) == (mesh.node_id, 5, 5, 5)
                assert all(us > 0 for us in ok.connect_us) and ok.p50_us > 0 and not ok.errors
                bad = await stub.Measure(mesh_pb2.MeasureRequest(target=f"127.0.0.1:{closed_port}", count=3))
                assert (bad.reachable, dict(bad.errors)) == (0, {"refused": 3})
                # a member's node id: its mesh port by default
                me = await stub.Measure(mesh_pb2.MeasureRequest(target=mesh.node_id, count=2))
                assert (me.target, me.reachable) == (addr, 2)
                # 10 of the 20-token burst are spent; 11 more are over the rate
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Measure(mesh_pb2.MeasureRequest(target=f"127.0.0.1:{open_port}", count=11))
                assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Measure(mesh_pb2.MeasureRequest(target="nowhere", count=1))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "target" in (err.value.details() or "")
            # results ride the next digest
            signed = await mesh.publish(mesh_pb2.Digest(period_start_ns=1, period_end_ns=2))
            assert signed is not None
            digest = mesh_pb2.Digest.FromString(signed.payload)
            assert [m.reachable for m in digest.measurements] == [5, 0, 2]
        finally:
            await mesh.stop(leave=False)
            await server.stop(0)
            listener.close()
            closed.close()

    asyncio.run(main())


@pytest.mark.parametrize(("policy", "code"), [
    (TaskPolicy(enabled=False), grpc.StatusCode.FAILED_PRECONDITION),
    (TaskPolicy(deny=frozenset({"127.0.0.0/8"})), grpc.StatusCode.PERMISSION_DENIED),
])
def test_measure_refused_by_policy(policy: TaskPolicy, code: grpc.StatusCode) -> None:
    async def main() -> None:
        server, mesh, addr = await _node("guarded", task_policy=policy)
        try:
            async with grpc.aio.insecure_channel(addr) as ch:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await mesh_pb2_grpc.MeshStub(ch).Measure(mesh_pb2.MeasureRequest(target=addr, count=1))
                assert err.value.code() == code
        finally:
            await mesh.stop(leave=False)
            await server.stop(0)

    asyncio.run(main())


def test_a_member_signing_a_task_cannot_name_another_requester_nor_escape_the_denylist() -> None:
    """With ``MEMBER_CALLER`` set (a member's node key signed), the deny list applies to the signer, and a
    ``requester_id`` naming another node is refused."""
    from meshnode.mesh import MEMBER_CALLER, TaskRefused

    async def main() -> None:
        server, mesh, addr = await _node("signed", task_policy=TaskPolicy(deny=frozenset({"bad0bad0bad0bad0"})))
        try:
            for caller, rid, refused in [("bad0bad0bad0bad0", "", "denied"),
                                         ("good1good1good11", "someone-else", "is not the signer"),
                                         ("good1good1good11", "good1good1good11", None)]:
                token = MEMBER_CALLER.set(caller)
                try:
                    if refused:
                        with pytest.raises(TaskRefused, match=refused):
                            await mesh.measure(mesh_pb2.MeasureRequest(target=addr, count=1, requester_id=rid),
                                               "127.0.0.1")
                    else:
                        resp = await mesh.measure(mesh_pb2.MeasureRequest(target=addr, count=1, requester_id=rid),
                                                  "127.0.0.1")
                        assert resp.attempts == 1
                finally:
                    MEMBER_CALLER.reset(token)
        finally:
            await mesh.stop(leave=False)
            await server.stop(0)

    asyncio.run(main())
