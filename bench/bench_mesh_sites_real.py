"""Gossip bytes per node in a real fleet on loopback, flat mesh against site aggregates, side by side.

Run: ``.venv/bin/python -m bench.bench_mesh_sites_real --sites 4 --per-site 6 --periods 3 --procs 3``.

The same fleet twice: ``sites x per_site`` ``MeshService`` nodes on 127.0.0.1 gRPC servers (spread over
``--procs`` worker processes, node i on port ``--port`` + i), labels ``region=r{site % 2}, site=s{site}``,
default mesh timers, 10 s export periods ending on wall multiples, every node publishing a ~1.2 kB digest (20
destinations) at each period end. First flat (every digest to every node), then with site aggregates (k = 2).
After one period of warm-up, every byte each node's mesh sends over ``--periods`` periods is counted: packets
and reliable requests (payloads, all pools) and the answers its server returns to reliable requests.
gRPC/HTTP2 framing is not counted; it is the same per call in both modes. Prints bytes/s per node (average,
highest non-aggregator, highest aggregator), the aggregators as the nodes see themselves, and the suspicions
raised (a worker's nodes share one loop: when it is overloaded, live members are suspected, and a site whose
members see each other dead elects more aggregators than k).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import subprocess
import sys
import time

import grpc

from meshnode.mesh import MeshConfig, MeshService, NodeKey, SiteConfig
from meshnode.v1 import flow_pb2, mesh_pb2

PERIOD = 10.0


class Source:
    def __init__(self, i: int) -> None:
        self.i = i

    def local_digest(self) -> mesh_pb2.Digest:
        p = int(PERIOD * 1e9)
        end = time.time_ns() // p * p
        return mesh_pb2.Digest(period_start_ns=end - p, period_end_ns=end, by_destination=[
            flow_pb2.Rollup(key=f"10.9.{d}.{self.i % 250}:5432", flows=10 + d, useful=9 + d,
                            bytes_tx=1000 * d, rtt_p50_us=900 + d, rtt_p95_us=4000, service="postgresql")
            for d in range(20)])


def sent(mesh: MeshService) -> int:
    """Every payload byte ``mesh`` sent: packets, reliable requests (all pools) and answers it served."""
    t = mesh.transport.counters
    return t["packet_bytes_sent"] + t["stream_bytes_sent"] + mesh.counters["stream_bytes_answered"]


async def run(nodes: range, n_sites: int, base_port: int, periods: int, k: int) -> list[dict[str, float]]:
    """Run nodes ``nodes`` of the fleet (node i on ``base_port + i``, all joining through node 0) until
    ``periods`` periods after the first whole one have passed; each node's bytes/s over them."""
    meshes: list[MeshService] = []
    servers: list[grpc.aio.Server] = []
    site_config = SiteConfig(aggregators=k, period=PERIOD) if k else None
    p = int(PERIOD * 1e9)
    first = (time.time_ns() // p + 2) * p  # the warm-up ends at the second period boundary from now
    try:
        for i in nodes:
            s = i % n_sites
            server = grpc.aio.server()
            server.add_insecure_port(f"127.0.0.1:{base_port + i}")
            mesh = MeshService(advertise=f"127.0.0.1:{base_port + i}", key=NodeKey.from_seed(f"bench-{i}".encode()),
                               labels={"region": f"r{s % 2}", "site": f"s{s}", "host": f"h{i}"},
                               seeds=[] if i == 0 else [f"127.0.0.1:{base_port}"], source=Source(i),
                               config=MeshConfig(), export_period=0, rng=random.Random(i),
                               site_config=site_config, rejoin_interval=2.0)
            mesh.register(server)
            await server.start()
            await mesh.start()
            meshes.append(mesh)
            servers.append(server)
        before: list[int] = []
        t0 = 0.0
        while True:
            await asyncio.sleep((p - time.time_ns() % p) / 1e9 + 0.05)
            now = time.time_ns() // p * p
            if now == first:
                before = [sent(m) for m in meshes]
                t0 = time.monotonic()
            if now >= first + periods * p:
                break
            for m in meshes:
                await m.publish()
        elapsed = time.monotonic() - t0
        return [{"rate": (sent(m) - b) / elapsed, "aggregator": float(m.sites is not None
                                                                      and m.sites.is_site_aggregator()),
                 "members": float(len(m.membership.members())),
                 "suspicions": float(m.membership.counters["suspicions"])}
                for m, b in zip(meshes, before, strict=True)]
    finally:
        for m in meshes:
            await m.stop(leave=False)
        for server in servers:
            await server.stop(0)


def fleet(n_sites: int, per_site: int, procs: int, periods: int, k: int, base_port: int) -> dict[str, float]:
    """The fleet over ``procs`` worker processes (so that one loop does not carry every node)."""
    n = n_sites * per_site
    workers = [subprocess.Popen(
        [sys.executable, "-m", "bench.bench_mesh_sites_real", "--worker", f"{w}/{procs}", "--sites", str(n_sites),
         "--per-site", str(per_site), "--periods", str(periods), "--aggregators", str(k), "--port", str(base_port)],
        stdout=subprocess.PIPE, text=True) for w in range(procs)]
    rows: list[dict[str, float]] = []
    for w in workers:
        out, _ = w.communicate(timeout=PERIOD * (periods + 4) + 120)
        if w.returncode != 0 or not out.strip():
            raise SystemExit(f"a worker failed (exit {w.returncode}); its error is above")
        rows.extend(json.loads(out.strip().splitlines()[-1]))
    assert len(rows) == n, f"{len(rows)} of {n} nodes reported"
    rates = [r["rate"] for r in rows]
    return {
        "avg": statistics.fmean(rates),
        "median": statistics.median(rates),
        "member_max": max((r["rate"] for r in rows if not r["aggregator"]), default=0.0),
        "agg_max": max((r["rate"] for r in rows if r["aggregator"]), default=0.0),
        "members": statistics.fmean(r["members"] for r in rows),
        "aggregators": sum(r["aggregator"] for r in rows),
        "suspicions": sum(r["suspicions"] for r in rows),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--per-site", type=int, default=6)
    ap.add_argument("--periods", type=int, default=3)
    ap.add_argument("--aggregators", type=int, default=2)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--port", type=int, default=21100,
                    help="first port (below the ephemeral range, where a client socket may hold one)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n = args.sites * args.per_site
    if args.worker:
        w, procs = (int(x) for x in args.worker.split("/"))
        got = asyncio.run(run(range(w, n, procs), args.sites, args.port, args.periods, args.aggregators))
        print(json.dumps(got))
        return
    print(f"N={n} ({args.sites} sites x {args.per_site}) in {args.procs} processes, 10 s periods, ~1.2 kB "
          f"digests, measured over {args.periods} periods after 1 of warm-up; payload bytes sent per node")
    print("mode  | members listed | aggregators | B/s/node avg | B/s/node median | B/s member max | B/s aggregator max "
          "| suspicions")
    for name, k in (("flat", 0), ("sites", args.aggregators)):
        # each mode on ports of its own: the other mode's closed sockets may still hold theirs
        r = fleet(args.sites, args.per_site, args.procs, args.periods, k, args.port + (n if k else 0))
        print(f"{name:5} | {r['members']:14.1f} | {r['aggregators']:11.0f} | {r['avg']:12.0f} | {r['median']:15.0f} | "
              f"{r['member_max']:14.0f} | {r['agg_max']:18.0f} | {r['suspicions']:10.0f}", flush=True)


if __name__ == "__main__":
    main()
