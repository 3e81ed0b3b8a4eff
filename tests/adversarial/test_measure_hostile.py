"""Hostile callers of the active-task methods: bad kinds and bounds are refused naming the field, a caller
over its quota is refused and counted without running anything, and a path probe stays off by default."""

from __future__ import annotations

import asyncio
import random
import socket

import grpc
import pytest

from meshnode.mesh import Ledger, MeshConfig, MeshService, NodeKey, Quota, TaskPolicy
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc

FAST = MeshConfig(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, push_pull_interval=1.0,
                  suspicion_mult=3, stream_timeout=1.0, reconnect_interval=0)


def test_bad_requests_are_refused_naming_the_field_and_over_quota_runs_nothing() -> None:
    async def main() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        mesh = MeshService(advertise=f"127.0.0.1:{port}", key=NodeKey.from_seed(b"hostile"), config=FAST,
                           export_period=0, rng=random.Random(1), task_policy=TaskPolicy(path_probes=True),
                           ledger=Ledger(Quota(tasks=3, queries=5)))
        mesh.register(server)
        await server.start()
        await mesh.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = mesh_pb2_grpc.MeshStub(ch)
                for req, code, words in [
                    (mesh_pb2.MeasureRequest(target=target, kind=99), grpc.StatusCode.INVALID_ARGUMENT,  # type: ignore[arg-type]
                     "kind: 99 is not a MeasureKind"),
                    (mesh_pb2.MeasureRequest(target=target, kind=mesh_pb2.MEASURE_PATH, max_hops=31),
                     grpc.StatusCode.INVALID_ARGUMENT, "max_hops: 31 is outside 1..30"),
                    (mesh_pb2.MeasureRequest(target=target, count=101), grpc.StatusCode.INVALID_ARGUMENT, "count"),
                ]:
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Measure(req)
                    assert err.value.code() == code and words in (err.value.details() or "")
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Measurements(mesh_pb2.MeasurementsRequest(number=10_001))
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                path = await stub.Measure(mesh_pb2.MeasureRequest(target=target, kind=mesh_pb2.MEASURE_PATH))
                assert [(h.ttl, h.addr, h.status) for h in path.hops] == [(1, "127.0.0.1", "open")]
                signed = await mesh.publish(mesh_pb2.Digest(period_start_ns=1, period_end_ns=2))
                assert signed is not None  # the result rides the digest without its hops (the store has them)
                [gossiped] = mesh_pb2.Digest.FromString(signed.payload).measurements
                assert (gossiped.kind, gossiped.reachable, len(gossiped.hops)) == (mesh_pb2.MEASURE_PATH, 1, 0)
                for _ in range(2):
                    await stub.Measure(mesh_pb2.MeasureRequest(target=target, count=1))
                before = mesh.task_bucket._tokens
                for _ in range(5):
                    with pytest.raises(grpc.aio.AioRpcError) as err:
                        await stub.Measure(mesh_pb2.MeasureRequest(target=target, count=50))
                    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert mesh.task_bucket._tokens >= before  # refused before any connect was spent
                listed = await stub.Measurements(mesh_pb2.MeasurementsRequest())
                assert len(listed.measurements) == 3 and len(listed.measurements[-1].hops) == 1
                [acct] = (await stub.Peers(mesh_pb2.PeersRequest())).accounts
                assert (acct.served_tasks, acct.refused) == (3, 5) and mesh.counters["tasks_over_quota"] == 5
        finally:
            await mesh.stop(leave=False)
            await server.stop(0)
            listener.close()

    asyncio.run(main())
