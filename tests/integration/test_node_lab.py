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
def node(lab: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    """``[process, data dir]``: a test that restarts the node puts the new process in."""
    data = tmp_path_factory.mktemp("node-b")
    held: list[Any] = [start_node(lab["b"], data, cgroup=str(lab["b"].cgroup), timeout=60), data]
    try:
        yield held
    finally:
        held[0].terminate()
        held[0].wait(timeout=20)


def test_flows_health_and_follow(lab: Any, node: list[Any]) -> None:
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


def test_status_reports_the_sensor(lab: Any, node: list[Any]) -> None:
    status = meshctl(lab["b"], "status")
    assert status["sensor_mode"] == "ebpf" and status["scope"] == lab["b"].cgroup_rel
    assert status["completeness"].get("lost_events", 0) == 0


def _failed_events(b: Any, a_ip: str) -> list[dict[str, Any]]:
    out = b.run([MESHCTL, "--node", NODE, "events", "--since", "10m", "--type", "connect_failed", "--dst", a_ip,
                 "--json"], timeout=30).stdout
    return [json.loads(ln) for ln in out.splitlines() if ln.strip()]


def test_a_restarted_node_keeps_its_refused_and_timeout_events(lab: Any, node: list[Any]) -> None:
    a, b = lab["a"], lab["b"]
    closed, dropped = 31003, 31004
    refused = [t.result(t.start(b, t.TCP_CONNECT, a.ip, closed, 2)) for _ in range(2)]
    with a.drop(peer=b):
        pending = [t.start(b, t.TCP_CONNECT, a.ip, dropped, 1) for _ in range(2)]
        timeouts = [t.result(p) for p in pending]
    assert [r["result"] for r in refused + timeouts] == ["ECONNREFUSED"] * 2 + ["timeout"] * 2

    def kinds(events: list[dict[str, Any]]) -> list[tuple[str, int]]:
        return sorted((e["detail"], e["flow"]["dport"]) for e in events if e["flow"]["dport"] in (closed, dropped))

    want = [("refused", closed)] * 2 + [("timeout", dropped)] * 2
    deadline = time.monotonic() + 10
    while kinds(before := _failed_events(b, a.ip)) != want and time.monotonic() < deadline:
        time.sleep(0.3)
    assert kinds(before) == want, before
    assert {e["flow"]["pid"] for e in before if e["flow"]["dport"] in (closed, dropped)} == \
        {r["pid"] for r in refused + timeouts}
    time.sleep(PERIOD + 0.2)  # written to the store with the period that was open when they came

    restarted_ns = time.time_ns()
    node[0].terminate()
    node[0].wait(timeout=20)
    node[0] = start_node(b, node[1], cgroup=str(b.cgroup), timeout=60)  # the kernel programs compile again
    after = _failed_events(b, a.ip)
    # every event from before the restart, exactly as it was (time, flow, detail), in the same order
    assert [e for e in after if int(e["time_ns"]) < restarted_ns] == before

    far = b.run([MESHCTL, "--node", NODE, "events", "--since", "3h"], timeout=30).stdout
    text = " ".join(far.split())  # rich wraps the note at 80 columns
    assert "note: asked from " in text and "but this node holds events from " in text, far
    assert "refused" in text and "timeout" in text
