"""Fleet-query latency (issue 6): N real MeshService nodes on 127.0.0.1 gRPC servers, one FleetQuery fan-out
at a time from one node; prints p50/p95/max, how many nodes answered, and why the others did not.

Run: ``.venv/bin/python -m bench.bench_fleet_query --nodes 100 --queries 30 [--procs 4]``.

Two models of a fleet:

- ``--procs 0`` (default): every node in this process, on one event loop. The querying node's fan-out then
  shares its loop (and one core) with the other 99 nodes' servers, their probing, gossip and digest
  verification: 100 hosts' work on one core. Under that load the querying node's own membership declares
  live nodes dead (printed as ``not alive: DEAD``), so this is a worst case, not a model of a fleet.
- ``--procs P``: the querying node alone in this process, the other N - 1 spread over P worker processes
  (``--worker``), so the client loop is not also the servers' loop.

The per-query reasons, the querying node's view of membership and its transport counters are printed so
that a partial answer can be traced to its cause (membership, deadline, connection).

``--history`` measures fleet *history* queries (``Mesh.FleetFlows``) instead, over N real ``meshnode run``
processes on 127.0.0.1 (``--insecure``, mesh on, real store and API; ``--sensor fake`` making one loopback flow
per 2 s poll, so that N nodes' sensors do not load the shared cores), each store prefilled with
``--records`` flows of its own that ended over the last 5 minutes at the same instants on every node (so the
members' records interleave, as a fleet's do), labels ``site=s{i % 4}``. One client asks node 0 for one
page (``--number``) of the records matching ``comm=prefill`` over the last 10 minutes, flat and per site,
``--queries`` times each, and prints p50/p95/max, how many nodes answered, and the records merged:
``.venv/bin/python -m bench.bench_fleet_query --history --nodes 20 --queries 50``. With ``--site-aggregators
K`` the nodes run site aggregates (membership per site): node 0 asks its own site and every other site
through one relay of that site (through its own site's aggregator when it is not one), so one mode is run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from collections import Counter

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


async def start_node(i: int, seed: str, export_period: float) -> tuple[grpc.aio.Server, MeshService]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    addr = f"127.0.0.1:{port}"
    mesh = MeshService(advertise=addr, key=NodeKey.from_seed(f"fq-{i}".encode()),
                       labels={"region": "eu", "site": f"s{i % 4}", "host": f"h{i}"},
                       seeds=[seed] if seed else [], source=Source(i), config=CONFIG,
                       export_period=export_period, rng=random.Random(i))
    mesh.register(server)
    await server.start()
    await mesh.start()
    return server, mesh


async def stop_nodes(nodes: list[tuple[grpc.aio.Server, MeshService]]) -> None:
    for _, m in nodes:
        await m.stop(leave=False)
    for s, _ in nodes:
        await s.stop(0)


async def worker(first: int, count: int, seed: str, export_period: float) -> int:
    """Run nodes ``first .. first + count - 1`` joined through ``seed`` until stdin closes."""
    nodes = [await start_node(i, seed, export_period) for i in range(first, first + count)]
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.read)
    await stop_nodes(nodes)
    return 0


async def spawn_workers(n: int, procs: int, seed: str, export_period: float) -> list[asyncio.subprocess.Process]:
    per, extra = divmod(n - 1, procs)
    workers, first = [], 1
    for p in range(procs):
        count = per + (p < extra)
        workers.append(await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.bench_fleet_query", "--worker", "--first", str(first), "--count",
            str(count), "--seed", seed, "--export-period", str(export_period),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
        first += count
    for w in workers:
        assert w.stdout is not None
        line = await asyncio.wait_for(w.stdout.readline(), 120)
        if line.strip() != b"ready":
            raise RuntimeError(f"a bench worker did not start: {line!r}")
    return workers


async def end_workers(workers: list[asyncio.subprocess.Process]) -> None:
    for w in workers:
        if w.stdin is not None:
            w.stdin.close()
    for w in workers:
        try:
            await asyncio.wait_for(w.wait(), 30)
        except TimeoutError:
            w.kill()
            await w.wait()


async def main(n: int, queries: int, procs: int, export_period: float, deadline_ms: int, fanout: int) -> int:
    t0 = time.monotonic()
    first_node = await start_node(0, "", export_period)
    first = first_node[1]
    if fanout:
        first.query_concurrency = fanout
    nodes = [first_node]
    workers: list[asyncio.subprocess.Process] = []
    try:
        if procs > 0:
            workers = await spawn_workers(n, procs, first.advertise, export_period)
        else:
            nodes += [await start_node(i, first.advertise, export_period) for i in range(1, n)]
        while sum(m.state == State.ALIVE for m in first.membership.members()) < n:
            if time.monotonic() - t0 > 120:
                print("did not converge in 120 s", file=sys.stderr)
                return 1
            await asyncio.sleep(0.5)
        model = f"{procs} worker processes + the querying node alone" if procs else "one process, one loop"
        model += f", {getattr(first, 'query_concurrency', 'all')} calls in flight per query"
        print(f"{n} nodes ({model}) up and converged in {time.monotonic() - t0:.1f} s", file=sys.stderr)
        await asyncio.sleep(6)  # one digest round
        times: list[float] = []
        answered: list[int] = []
        reasons: Counter[str] = Counter()
        cpu0, wall0 = time.process_time(), time.monotonic()
        async with grpc.aio.insecure_channel(first.advertise) as ch:
            stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
            for _ in range(queries):
                t = time.perf_counter()
                resp = await stub.FleetQuery(mesh_pb2.FleetQueryRequest(deadline_ms=deadline_ms), timeout=10)
                times.append(time.perf_counter() - t)
                answered.append(sum(1 for node in resp.nodes if node.answered))
                reasons.update(node.error for node in resp.nodes if not node.answered)
        cpu = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        times.sort()
        p95 = times[min(len(times) - 1, int(0.95 * len(times)))]
        print(f"fleet query over N={n}: p50 {statistics.median(times) * 1000:.0f} ms, p95 {p95 * 1000:.0f} ms, "
              f"max {times[-1] * 1000:.0f} ms; answered {min(answered)}-{max(answered)} of {n} "
              f"(complete {sum(a == n for a in answered)}/{queries}) (goal p95 <= 1 s)")
        states = Counter(m.state.name for m in first.membership.members())
        failed = {k: v for k, v in first.transport.counters.items() if "fail" in k or "drop" in k}
        print(f"  missing answers by reason: {dict(reasons) or 'none'}; answers from members held dead: "
              f"{first.counters['query_answers_from_dead']}; querying node's view at the end: {dict(states)}; "
              f"its CPU {cpu:.2f} cores; its transport failures: {failed or 'none'}")
        return 0
    finally:
        await end_workers(workers)
        await stop_nodes(nodes)


def history(n: int, queries: int, records: int, number: int, deadline_ms: int, site_aggregators: int = 0) -> int:
    """Fleet history queries over ``n`` real ``meshnode run`` processes (see the module docstring)."""
    import tempfile
    from pathlib import Path

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from meshnode._model import FlowRecord
    from meshnode.store import Retention, Store
    from tests._support.nodeproc import NodeProcess, percentile

    t0 = time.monotonic()
    base = time.time_ns() - 300 * 10**9

    def prefill(data: Path, i: int) -> None:
        """``records`` flows that ended over the last 5 minutes, at the same instants on every node (the
        members' records interleave, as a fleet's do), each node's a few microseconds apart."""
        step = 250 * 10**9 // max(1, records)
        store = Store.in_dir(data, Retention(7 * 86400.0, 1 << 30))
        try:
            seq = store.open_period(base - 10**9)
            store.close_period(seq, base + 260 * 10**9, [FlowRecord(
                flow_id=j + 1, src="10.1.0.1", sport=1024 + j % 60000, dst="10.1.0.2", dport=443, proto="tcp",
                direction="outbound", pid=7, comm="prefill", start_ns=base + j * step - 10**6,
                end_ns=base + j * step + i * 1000, outcome="established", kind="final") for j in range(records)],
                [], "")
        finally:
            store.close()

    nodes: list[NodeProcess] = []
    with tempfile.TemporaryDirectory(prefix="bench-fleetflows-") as tmp:
        try:
            for i in range(n):
                data = Path(tmp) / f"n{i}"
                prefill(data, i)
                env = {"MESHNODE_FAKE_FLOWS_PER_POLL": "1", "MESHNODE_TICK": "2",
                       "MESHNODE_LABELS": f"region=eu,site=s{i % 4},host=h{i}"}
                if site_aggregators:
                    env["MESHNODE_SITE_AGGREGATORS"] = str(site_aggregators)
                if nodes:
                    env["MESHNODE_JOIN"] = nodes[0].address
                nodes.append(NodeProcess(data, export_period=5.0, env=env).start())
            with grpc.insecure_channel(nodes[0].address) as ch:
                stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
                probe = mesh_pb2.FleetFlowsRequest(deadline_ms=deadline_ms)
                probe.flows.number = 1
                while True:
                    peers = stub.Peers(mesh_pb2.PeersRequest(), timeout=10).peers
                    # sites: node 0 lists its own site; the fleet is formed once a query reaches every node
                    if (sum(p.state == mesh_pb2.ALIVE for p in peers) == n if not site_aggregators else
                            sum(x.answered for x in stub.FleetFlows(probe, timeout=deadline_ms / 1000 + 5).nodes) == n):
                        break
                    if time.monotonic() - t0 > 180:
                        print("did not converge in 180 s", file=sys.stderr)
                        return 1
                    time.sleep(0.5)
                print(f"{n} meshnode processes (fake sensor, {records:,} prefilled records each) up and converged "
                      f"in {time.monotonic() - t0:.1f} s", file=sys.stderr)
                time.sleep(5)
                now = time.time_ns()
                for per_site in (False, True) if not site_aggregators else (True,):
                    req = mesh_pb2.FleetFlowsRequest(deadline_ms=deadline_ms, per_site=per_site)
                    req.flows.number = number
                    req.flows.since_ns = now - 600 * 10**9
                    req.flows.whitelist.add(comm=["prefill"])
                    times: list[float] = []
                    answered: list[int] = []
                    merged: list[int] = []
                    reasons: Counter[str] = Counter()
                    size = 0
                    for _ in range(queries):
                        t = time.perf_counter()
                        resp = stub.FleetFlows(req, timeout=deadline_ms / 1000 + 5)
                        times.append(time.perf_counter() - t)
                        answered.append(sum(1 for x in resp.nodes if x.answered))
                        merged.append(len(resp.flows))
                        reasons.update(x.error for x in resp.nodes if not x.answered)
                        size = resp.ByteSize()
                    mode = (f"site aggregates (k={site_aggregators}, 4 sites)" if site_aggregators else
                            "per site (4 relays)" if per_site else "flat")
                    print(f"fleet history query {mode}, N={n}, page of "
                          f"{number:,}: p50 {percentile(times, 0.5) * 1000:.0f} ms, p95 "
                          f"{percentile(times, 0.95) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms; answered "
                          f"{min(answered)}-{max(answered)} of {n}; records {min(merged):,}-{max(merged):,} "
                          f"({size / 1e3:.0f} kB a page); missing by reason: {dict(reasons) or 'none'}")
            return 0
        finally:
            for node in nodes:
                node.kill()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--queries", type=int, default=30)
    ap.add_argument("--procs", type=int, default=0, help="worker processes for the other nodes (0: in-process)")
    ap.add_argument("--export-period", type=float, default=5.0)
    ap.add_argument("--deadline-ms", type=int, default=5000)
    ap.add_argument("--fanout", type=int, default=0, help="calls in flight per query (0: the node's default)")
    ap.add_argument("--history", action="store_true",
                    help="fleet history queries (FleetFlows) over real meshnode processes instead")
    ap.add_argument("--records", type=int, default=2000, help="--history: records prefilled per node")
    ap.add_argument("--number", type=int, default=1000, help="--history: records a page")
    ap.add_argument("--site-aggregators", type=int, default=0, help="--history: nodes run site aggregates (K)")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--first", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--count", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--seed", default="", help=argparse.SUPPRESS)
    ns = ap.parse_args()
    if ns.history:
        sys.exit(history(ns.nodes, ns.queries, ns.records, ns.number, ns.deadline_ms, ns.site_aggregators))
    if ns.worker:
        sys.exit(asyncio.run(worker(ns.first, ns.count, ns.seed, ns.export_period)))
    sys.exit(asyncio.run(main(ns.nodes, ns.queries, ns.procs, ns.export_period, ns.deadline_ms, ns.fanout)))
