"""Fleet-query latency (issue 6): N real MeshService nodes on 127.0.0.1 gRPC servers in one process, one
FleetQuery fan-out at a time from one node; prints p50/p95/max and how many nodes answered.

Run: ``.venv/bin/python -m bench.bench_fleet_query --nodes 100 --queries 30``. All nodes share one process
and one event loop (2 cores here), so this is an upper bound on what separate hosts would see.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time

import grpc

from meshnode.mesh import MeshConfig, MeshService, NodeKey, State
from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc

CONFIG = MeshConfig(probe_interval=1.0, probe_timeout=0.5, gossip_interval=0.2, push_pull_interval=30.0)


class Source:
    def __init__(self, i: int) -> None:
        self.i = i

    def local_digest(self) -> mesh_pb2.Digest:
        now = time.time_ns()
        return mesh_pb2.Digest(period_start_ns=now - 10**10, period_end_ns=now, by_destination=[
            flow_pb2.Rollup(key=f"10.9.0.{d}:5432", flows=10, useful=10 - (self.i + d) % 3, rtt_p50_us=900 + d,
                            rtt_p95_us=4000) for d in range(20)])


async def main(n: int, queries: int) -> int:
    servers, meshes = [], []
    seed = ""
    t0 = time.monotonic()
    for i in range(n):
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        addr = f"127.0.0.1:{port}"
        mesh = MeshService(advertise=addr, key=NodeKey.from_seed(f"fq-{i}".encode()),
                           labels={"region": "eu", "site": f"s{i % 4}", "host": f"h{i}"},
                           seeds=[seed] if seed else [], source=Source(i), config=CONFIG, export_period=5,
                           rng=random.Random(i))
        mesh.register(server)
        await server.start()
        await mesh.start()
        seed = seed or addr
        servers.append(server)
        meshes.append(mesh)
    first = meshes[0]
    while sum(m.state == State.ALIVE for m in first.membership.members()) < n:
        if time.monotonic() - t0 > 120:
            print("did not converge in 120 s", file=sys.stderr)
            return 1
        await asyncio.sleep(0.5)
    print(f"{n} nodes up and converged in {time.monotonic() - t0:.1f} s", file=sys.stderr)
    await asyncio.sleep(6)  # one digest round
    times, answered = [], []
    async with grpc.aio.insecure_channel(first.advertise) as ch:
        stub = mesh_pb2_grpc.MeshStub(ch)
        for _ in range(queries):
            t = time.perf_counter()
            resp = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(deadline_ms=5000), timeout=10)
            times.append(time.perf_counter() - t)
            answered.append(sum(1 for node in resp.nodes if node.answered))
    times.sort()
    p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
    print(f"fleet query over N={n}: p50 {statistics.median(times) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
          f"max {times[-1] * 1000:.0f} ms; answered {min(answered)}-{max(answered)} of {n} (goal p95 <= 1 s)")
    for m in meshes:
        await m.stop(leave=False)
    for s in servers:
        await s.stop(0)
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--queries", type=int, default=30)
    ns = ap.parse_args()
    sys.exit(asyncio.run(main(ns.nodes, ns.queries)))
