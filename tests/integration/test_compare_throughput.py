"""``meshctl blame --compare`` compares throughput with peers whose figures came by gossip: three Mesh
services on 127.0.0.1 publish signed digests of periods built by the summary code; the asking node's
diagnosis holds its peers' digests and places its own throughput among theirs."""

from __future__ import annotations

import asyncio
import json
import random
import time

import grpc
import pytest

from meshnode._model import FlowRecord
from meshnode.cli.main import main as meshctl
from meshnode.diagnosis import DiagnosisServicer, NodeSource, add_to_server
from meshnode.mesh import MeshConfig, MeshService, NodeKey
from meshnode.summary import PeriodBuilder

FAST = MeshConfig(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, push_pull_interval=0.5,
                  suspicion_mult=3, stream_timeout=1.0, reconnect_interval=0)
DB = "10.0.2.3:5432"


def _flows(rate_bytes: int, end_ns: int) -> list[FlowRecord]:
    """A period's outbound flows to the database: 12 finals around ``rate_bytes`` a second, one interim."""
    out = [FlowRecord(flow_id=i, src="10.0.1.1", sport=40000 + i, dst="10.0.2.3", dport=5432, proto="tcp",
                      direction="outbound", outcome="established", srtt_us=900, start_ns=end_ns - 2_000_000_000,
                      end_ns=end_ns - 1_000_000_000, delivery_rate=rate_bytes * (i % 3 + 1) // 2)
           for i in range(1, 13)]
    return [*out, out[0].replace(flow_id=99, kind="interim", delivery_rate=rate_bytes)]


def test_blame_compare_places_this_hosts_throughput_among_its_peers(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        nodes: list[tuple[grpc.aio.Server, MeshService, str]] = []
        src = NodeSource({"host": "me", "site": "s1", "region": "eu"})
        try:
            for name in ("me", "peer-1", "peer-2"):
                server = grpc.aio.server()
                port = server.add_insecure_port("127.0.0.1:0")
                seeds = [nodes[0][2]] if nodes else []
                mesh = MeshService(advertise=f"127.0.0.1:{port}", key=NodeKey.from_seed(name.encode()),
                                   labels={"host": name, "site": "s1", "region": "eu"}, config=FAST,
                                   export_period=0, rng=random.Random(len(nodes)), seeds=seeds)
                mesh.register(server)
                if name == "me":
                    add_to_server(DiagnosisServicer(src), server)
                    mesh.digest_listeners.append(src.on_digest)
                await server.start()
                await mesh.start()
                nodes.append((server, mesh, f"127.0.0.1:{port}"))
            me = nodes[0][1]
            for _ in range(100):
                if len(me.membership.members()) == 3:
                    break
                await asyncio.sleep(0.05)
            end = time.time_ns()
            for (_, mesh, _), rate in zip(nodes, (1_000_000, 12_500_000, 11_000_000), strict=True):
                flows = _flows(rate, end)
                period = PeriodBuilder(mesh.node_id).build(1, end - 10**10, end, flows[:-1], flows[-1:])
                mesh.on_period(period, flows)
                if mesh is me:
                    src.add_period(end, flows)
            for _ in range(100):
                if src.held()["digests"] == 2:
                    break
                await asyncio.sleep(0.05)
            assert src.held()["digests"] == 2, src.held()
            capsys.readouterr()
            code = await asyncio.to_thread(meshctl, ["--node", nodes[0][2], "blame", "--compare", "--json"])
            doc = json.loads(capsys.readouterr().out)
            assert code == 0
            [d] = doc["destinations"]
            by = {m["metric"]: m for m in d["metrics"]}
            t = by["throughput"]
            # this host's 8 Mbit/s against its peers' 100 and 88: the worst of three, an outlier
            assert (t["value"], t["median"], t["peers"], t["outlier"]) == (8e6, 88e6, 3, True)
            assert d["verdict"] == (f"this host is in the worst 34 % of site s1 for {DB} by throughput "
                                    "(8.0 Mbit/s vs site median 88.0 Mbit/s)")
        finally:
            for server, mesh, _ in nodes:
                await mesh.stop(leave=False)
                await server.stop(0)

    asyncio.run(main())
