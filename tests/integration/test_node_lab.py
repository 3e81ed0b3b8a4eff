"""A real node (eBPF sensor, store, gRPC) on a lab host, asked with meshctl from the same host.

The node runs inside host b's network namespace and cgroup, scoped to that cgroup, as it would on a
machine of its own; meshctl talks to it on b's loopback. Traffic goes from b to host a. The scope is given as the
absolute path under the cgroup2 mount (what users copy from /sys/fs/cgroup); status and the records show it
relative to the mount.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import traffic as t
from tests._support.env import require_kernel
from tests._support.labnode import MESHCTL, NODE, PERIOD, start_node


@pytest.fixture(scope="module")
def lab() -> Iterator[Any]:
    require_kernel()
    from meshnode.lab import Lab

    with Lab(2) as lab:
        yield lab


def meshctl(host: Any, *args: str) -> Any:
    """One JSON document (status, health), or a list for JSON Lines streams (flows)."""
    out = host.run([MESHCTL, "--node", NODE, *args, "--json"], timeout=30).stdout
    if args[0] == "flows":
        return [json.loads(ln) for ln in out.splitlines() if ln.strip()]
    return json.loads(out)


@pytest.fixture(scope="module")
def node(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    data = tmp_path_factory.mktemp("node-b")
    proc = start_node(lab["b"], data, cgroup=str(lab["b"].cgroup))
    try:
        yield proc, data
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_flows_health_and_follow(lab: Any, node: tuple[Any, Path]) -> None:
    a, b = lab["a"], lab["b"]
    port, closed = 31001, 31002
    sink = t.start(a, t.TCP_SINK, port)
    t.wait_ready(sink)
    follow = b.popen([MESHCTL, "--node", NODE, "flows", "--follow", "--json", "--dst", a.ip, "--dport", str(port)],
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)
    sizes = [100_000 + i * 1111 for i in range(7)]
    pids = [t.result(t.start(b, t.TCP_BULK, a.ip, port, n))["pid"] for n in sizes]
    refused = [t.result(t.start(b, t.TCP_CONNECT, a.ip, closed, 2)) for _ in range(3)]
    assert all(r["result"] == "ECONNREFUSED" for r in refused)

    # follow delivers the new flows within about one export period
    assert follow.stdout is not None
    first = json.loads(follow.stdout.readline())
    assert first["dst"] == a.ip and first["dport"] == port
    follow.kill()

    time.sleep(2 * PERIOD + 0.5)
    flows = meshctl(b, "flows", "--dst", a.ip, "--since", "5m")
    good = sorted((f for f in flows if f["dport"] == port), key=lambda f: f["bytes_tx"])
    bad = [f for f in flows if f["dport"] == closed]
    assert [f["bytes_tx"] for f in good] == sizes
    assert sorted(f["pid"] for f in good) == sorted(pids)
    assert all(f["outcome"] == "established" and f["cgroup"] == b.cgroup_rel for f in good)
    assert [f["outcome"] for f in bad] == ["refused"] * 3
    assert len({f["flow_id"] for f in flows}) == len(flows)  # nothing duplicated

    health = meshctl(b, "health", "--dst", a.ip, "--since", "5m")
    assert health["host"]["attempts"] == 10 and health["host"]["useful"] == 7
    assert health["host"]["useful_fraction"] == pytest.approx(0.7)
    sink.kill()


def test_status_reports_the_sensor(lab: Any, node: tuple[Any, Path]) -> None:
    status = meshctl(lab["b"], "status")
    assert status["sensor_mode"] == "ebpf" and status["scope"] == lab["b"].cgroup_rel
    assert status["completeness"].get("lost_events", 0) == 0
