"""``meshctl measure`` end to end: a real Mesh service on 127.0.0.1 runs connect and RTT tasks against real
listeners, stores and accounts them, and refuses a requester over its quota; fleet queries between two
nodes land in both nodes' accounts; and in a lab with two routers a path probe names each hop."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import subprocess
import textwrap
import time
from typing import Any

import grpc
import pytest

from meshnode.cli.main import main as meshctl
from meshnode.mesh import Ledger, MeshConfig, MeshService, NodeKey, Quota
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc
from tests._support.lab import make_lab  # noqa: F401 (fixture)
from tests._support.labnode import MESHCTL

FAST = MeshConfig(probe_interval=0.2, probe_timeout=0.1, gossip_interval=0.05, push_pull_interval=1.0,
                  suspicion_mult=3, stream_timeout=1.0, reconnect_interval=0)


async def _node(name: str, seeds: list[str] | None = None, **kw: Any) -> tuple[grpc.aio.Server, MeshService, str]:
    server = grpc.aio.server()
    port = server.add_insecure_port("127.0.0.1:0")
    mesh = MeshService(advertise=f"127.0.0.1:{port}", key=NodeKey.from_seed(name.encode()), labels={"host": name},
                       config=FAST, export_period=0, rng=random.Random(1), seeds=seeds or [], **kw)
    mesh.register(server)
    await server.start()
    await mesh.start()
    return server, mesh, f"127.0.0.1:{port}"


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = await asyncio.to_thread(meshctl, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_connect_and_rtt_are_stored_accounted_and_shown(capsys: pytest.CaptureFixture[str]) -> None:
    async def main() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        target = f"127.0.0.1:{listener.getsockname()[1]}"
        server, mesh, addr = await _node("measurer", ledger=Ledger(Quota(tasks=3, queries=0)))
        try:
            code, out, _ = await _cli(capsys, "--node", addr, "measure", "--to", target, "--count", "3", "--json")
            got = json.loads(out)
            assert (code, got["kind"], got["attempts"], got["reachable"], len(got["connect_us"])) == (
                0, "connect", 3, 3, 3)
            assert got["requester"] == "127.0.0.1" and got["id"] == 1 and got["node_id"] == mesh.node_id
            assert len(got["rtt_us"]) == 3 and got["p50_us"] == sorted(got["connect_us"])[1]
            code, out, _ = await _cli(capsys, "--node", addr, "measure", "--from", mesh.node_id[:6], "--to", target,
                                      "--kind", "rtt", "--count", "5", "--json")
            rtt = json.loads(out)
            # the kernel's handshake RTT on loopback: tens of microseconds, well under the connect time bound
            assert (code, rtt["kind"], rtt["reachable"], len(rtt["rtt_us"]), rtt["id"]) == (0, "rtt", 5, 5, 2)
            assert all(0 < us < 50_000 for us in rtt["rtt_us"]) and rtt["p50_us"] == sorted(rtt["rtt_us"])[2]
            code, out, _ = await _cli(capsys, "--node", addr, "measure", "--list", "--json")
            listed = json.loads(out)
            assert [(m["id"], m["kind"], m["target"]) for m in listed["measurements"]] == [
                (2, "rtt", target), (1, "connect", target)]
            code, out, _ = await _cli(capsys, "--node", addr, "measure", "--to", target, "--count", "2")
            first = out.splitlines()[0]
            assert code == 0 and first.startswith(f"connect {mesh.node_id[:8]} -> {target}: 2/2 connected")
            # the fourth task of this requester is over its quota of 3 an hour
            code, _, err = await _cli(capsys, "--node", addr, "measure", "--to", target, "--count", "1")
            assert code == 1 and err == ("meshctl measure: the node refused: 127.0.0.1 is over its quota of 3 active "
                                         "tasks per hour on this node (its operator may raise it: peer_quotas); "
                                         "retry later\n")
            code, out, _ = await _cli(capsys, "--node", addr, "peers", "--json")
            [acct] = json.loads(out)["accounts"]
            assert (acct["peer"], acct["served_tasks"], acct["refused"], acct["quota_tasks"]) == ("127.0.0.1", 3, 1, 3)
            assert acct["served_bytes"] > 0 and mesh.counters["tasks_over_quota"] == 1
            # path probes are off unless the node's operator enables them
            code, _, err = await _cli(capsys, "--node", addr, "measure", "--to", target, "--kind", "path")
            assert code == 1 and "path probes are off on this node" in err and "active_tasks_path = true" in err
        finally:
            await mesh.stop(leave=False)
            await server.stop(0)
            listener.close()

    asyncio.run(main())


def test_fleet_queries_are_accounted_on_both_nodes_and_refused_over_quota() -> None:
    async def main() -> None:
        sb, b, b_addr = await _node("acct-b", ledger=Ledger(Quota(tasks=0, queries=1)))
        sa, a, a_addr = await _node("acct-a", seeds=[b_addr])
        try:
            for _ in range(100):
                if len(a.membership.members()) == 2:
                    break
                await asyncio.sleep(0.05)
            await b.publish(mesh_pb2.Digest(period_start_ns=1, period_end_ns=2))
            async with grpc.aio.insecure_channel(a_addr) as ch:
                resp = await mesh_pb2_grpc.MeshStub(ch).FleetQuery(mesh_pb2.FleetQueryRequest(deadline_ms=2000))
                assert {n.node_id: n.answered for n in resp.nodes}[b.node_id]
                again = await mesh_pb2_grpc.MeshStub(ch).FleetQuery(mesh_pb2.FleetQueryRequest(deadline_ms=2000))
                assert {n.node_id: n.error for n in again.nodes}[b.node_id] == "RESOURCE_EXHAUSTED"
            asked = {x.peer: x for x in a.peers().accounts}[b.node_id]
            assert (asked.asked_queries, asked.asked_bytes > 0) == (2, True)
            served = {x.peer: x for x in b.peers().accounts}["127.0.0.1"]
            # the asker's one retry policy (with_retries) tries RESOURCE_EXHAUSTED 3 times: each is refused
            assert (served.served_queries, served.refused, served.quota_queries) == (1, 3, 1)
            assert served.served_bytes == asked.asked_bytes  # the one answer, as both ends counted it
            assert b.counters["queries_over_quota"] == 3
        finally:
            for mesh, server in ((a, sa), (b, sb)):
                await mesh.stop(leave=False)
                await server.stop(0)

    asyncio.run(main())


# A node with path probes on, in a lab host's namespace: the Mesh service on its loopback, printing its port.
_PATH_NODE = textwrap.dedent("""
    import asyncio, random, sys
    import grpc
    from meshnode.mesh import MeshService, NodeKey, TaskPolicy

    async def main():
        server = grpc.aio.server()
        port = server.add_insecure_port("127.0.0.1:0")
        mesh = MeshService(advertise=f"127.0.0.1:{port}", key=NodeKey.from_seed(b"path"), export_period=0,
                           rng=random.Random(1), task_policy=TaskPolicy(path_probes=True))
        mesh.register(server)
        await server.start()
        await mesh.start()
        print(port, flush=True)
        await asyncio.to_thread(sys.stdin.read)  # until the test closes stdin

    asyncio.run(main())
""")


def test_path_probe_names_both_routers_in_a_lab(make_lab: Any) -> None:  # noqa: F811 (the imported fixture)
    lab = make_lab(sites={"east": 1, "west": 1})
    east, west = lab["east1"], lab["west1"]
    server = west.python("import socket, time\n"
                         "s = socket.create_server(('::', 8080), family=socket.AF_INET6, dualstack_ipv6=True)\n"
                         "time.sleep(60)")
    node = east.python(_PATH_NODE, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        west.wait_listening(8080)
        assert node.stdout is not None
        port = node.stdout.readline().strip()
        assert port.isdigit(), f"the lab node did not start: {port!r}"
        dst = next(a for a in west.addresses() if "." in a)
        src = next(a for a in east.addresses() if "." in a)
        done = east.run([MESHCTL, "--node", f"127.0.0.1:{port}", "measure", "--to", f"{dst}:8080", "--kind", "path",
                         "--max-hops", "6", "--json"], check=False)
        assert done.returncode == 0, done.stderr
        got = json.loads(done.stdout)
        hops = [(h["ttl"], h["addr"], h["status"]) for h in got["hops"]]
        # east's router answers on the east subnet (the hosts' gateway, .254); west's on the core link
        assert hops[0] == (1, src.rsplit(".", 1)[0] + ".254", "time_exceeded")
        assert hops[1][0] == 2 and hops[1][2] == "time_exceeded" and hops[1][1] not in ("", hops[0][1], dst)
        assert hops[2] == (3, dst, "open") and len(hops) == 3 and got["reachable"] == 1
        assert all(h["rtt_us"] > 0 for h in got["hops"])
        table = east.run([MESHCTL, "--node", f"127.0.0.1:{port}", "measure", "--list"], check=False)
        assert table.returncode == 0 and f"path {dst}:8080: 3 hop(s), reached" in table.stdout
        closed = east.run([MESHCTL, "--node", f"127.0.0.1:{port}", "measure", "--to", f"{dst}:9", "--kind", "path",
                           "--json"], check=False)
        assert [h["status"] for h in json.loads(closed.stdout)["hops"]] == ["time_exceeded", "time_exceeded", "closed"]
        # IPv6 too; the routers' addresses on the core link answer once duplicate address detection let them
        # (a tentative address sends no ICMPv6 for a second or two after the lab is built)
        dst6 = next(a for a in west.addresses() if ":" in a)
        for _ in range(20):
            v6 = east.run([MESHCTL, "--node", f"127.0.0.1:{port}", "measure", "--to", f"[{dst6}]:8080", "--kind",
                           "path", "--max-hops", "4", "--wait", "300ms", "--json"], check=False)
            hops6 = [(h["ttl"], h["addr"], h["status"]) for h in json.loads(v6.stdout)["hops"]]
            if hops6[1][1]:
                break
            time.sleep(0.25)
        src6 = next(a for a in east.addresses() if ":" in a)
        assert hops6[0] == (1, src6.rsplit(":", 2)[0] + "::fe", "time_exceeded")
        assert hops6[1][2] == "time_exceeded" and hops6[1][1] not in ("", dst6) and hops6[2] == (3, dst6, "open")
    finally:
        if node.stdin is not None:
            node.stdin.close()
        node.wait(timeout=10)
        server.kill()
        server.wait()
