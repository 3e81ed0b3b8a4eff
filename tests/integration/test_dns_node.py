"""DNS transactions through a real ``meshnode run`` (real eBPF, loopback only) to ``meshctl dns``, ``health``
and ``blame``.

dnsmasq (on a loopback address of this test's own, so that test_sensor_dns's may run beside it) answers one
name, says NXDOMAIN for another and REFUSEs every name it does not know (no upstream); ``dig`` asks it. The
node stores each period's transactions; ``meshctl dns`` must list them with their exact names and answer
codes, ``meshctl health`` must count the resolver's failures by code, and ``meshctl blame`` must name the
resolver with its evidence.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests._support import dns as dns_support
from tests._support.env import require_kernel
from tests._support.labnode import MESHCTL, ROOT

RESOLVER = "127.0.79.53"
WEB = "127.0.79.80"
REFUSED_NAMES = [f"u{i}.dnsstore.test" for i in range(24)]


def dig(name: str) -> str:
    return dns_support.dig(RESOLVER, name)


@pytest.fixture(scope="module")
def dnsmasq() -> Iterator[None]:
    with dns_support.dnsmasq(RESOLVER, {"web.dnsstore.test": WEB, "nx.dnsstore.test": ""}, ("web.dnsstore.test", WEB)):
        yield


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``meshnode run --sensor ebpf`` with 1 s export periods; its listen address."""
    require_kernel()
    data = tmp_path_factory.mktemp("dns-node")
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshnode.cli_main", "run", "--insecure", "--sensor", "ebpf", "--listen", "127.0.0.1:0",
         "--metrics", "off", "--export-period", "1", "--data-dir", str(data)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert proc.stderr is not None
        addr, log = "", ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not addr:
            line = proc.stderr.readline()
            log += line
            m = re.search(r"listening on (\S+),", line)
            addr = m.group(1) if m else ""
            if not line and proc.poll() is not None:
                raise AssertionError(f"meshnode run exited before serving:\n{log}")
        assert addr, f"no startup line:\n{log}"
        os.set_blocking(proc.stderr.fileno(), False)  # read it only to show it on failure
        yield addr
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def meshctl(node: str, *args: str) -> Any:
    out = subprocess.run([MESHCTL, "--node", node, *args, "--json"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.kernel
def test_dns_answers_reach_meshctl_dns_health_and_blame(node: str, dnsmasq: None) -> None:
    assert dig("web.dnsstore.test") == WEB
    assert dig("nx.dnsstore.test") == ""
    for name in REFUSED_NAMES:
        assert dig(name) == ""
    asked = {"web.dnsstore.test", "nx.dnsstore.test", *REFUSED_NAMES}

    deadline = time.monotonic() + 10  # a poll, then a period close (1 s periods)
    while True:
        doc = meshctl(node, "dns", "--since", "all", "--name", "*.dnsstore.test", "--server", RESOLVER,
                      "--limit", "1000")
        seen = {t["query"] for t in doc["transactions"]}
        if asked <= seen or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    rows = doc["transactions"]
    assert asked <= seen, f"missing: {sorted(asked - seen)}"
    by_name: dict[str, set[str]] = {}
    for t in rows:
        by_name.setdefault(t["query"], set()).add(t["rcode"])
        assert (t["server"], t["port"], t["qtype"], t["tcp"]) == (RESOLVER, 53, "A", False)
        assert t["comm"] == "dig" and t["pid"] > 0 and t["failed"] == (t["rcode"] != "NOERROR")
        assert 0 < t["latency_us"] < 2_000_000
    assert by_name == {"web.dnsstore.test": {"NOERROR"}, "nx.dnsstore.test": {"NXDOMAIN"},
                       **{n: {"REFUSED"} for n in REFUSED_NAMES}}
    web = [t for t in rows if t["query"] == "web.dnsstore.test"]
    assert [t["addresses"] for t in web] == [t["answers"] for t in web]  # one A record an answer
    failed = meshctl(node, "dns", "--since", "all", "--failed", "--rcode", "nxdomain", "--server", RESOLVER)
    assert [(t["query"], t["rcode"], t["answers"]) for t in failed["transactions"]] == [
        ("nx.dnsstore.test", "NXDOMAIN", 1)]

    answers_ok = sum(t["answers"] for t in web)
    health = meshctl(node, "health", "--since", "5m")
    [mine] = [r for r in health["resolvers"] if r["resolver"] == f"{RESOLVER}:53"]
    assert (mine["queries"], mine["failed"], mine["failures"]) == (
        answers_ok + 25, 25, {"NXDOMAIN": 1, "REFUSED": 24})
    assert 0 < mine["latency_p50_us"] <= mine["latency_p95_us"] < 2_000_000

    blame = meshctl(node, "blame", "--whole", "--since", "5m", RESOLVER)
    [suspect] = blame["suspects"]
    assert (suspect["kind"], suspect["name"], suspect["problems"], suspect["transactions"]) == (
        "resolver", f"{RESOLVER}:53", 25, answers_ok + 25)
    assert suspect["problem_kinds"] == {"NXDOMAIN": 1, "REFUSED": 24}
    assert blame["verdict"] == (f"resolver {RESOLVER}:53 is failing: 25 of {answers_ok + 25} queries failed "
                                "(REFUSED 24, NXDOMAIN 1)")
