"""Fleet history queries across five real nodes in two lab sites (s1: a, b; s2: c, d, e): `meshctl flows
--fleet` returns exactly the records each node holds for the filter (each node's own `meshctl flows --json`),
flat and per site, and a node killed while a query waits for it is reported missing, the query answering
within its deadline with every other node's records.

Each node is `meshnode run --sensor diag` on its host (sock_diag: five clang compiles on two shared cores would
only slow the start; the records compared are whatever each node stored, so the sensor does not matter here).
The traffic: every host holds 6 TCP connections to the next host's port 8080 for 2 s (long enough for the
sock_diag poll to see them), so every node stores outbound and inbound records of port 8080.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests._support import traffic
from tests._support.env import require_kernel
from tests._support.labnode import MESHCTL, MESHNODE, stop_nodes

PORT = 7400
APP = 8080
SITES = {"s1": ["a", "b"], "s2": ["c", "d", "e"]}
HOSTS = [h for hosts in SITES.values() for h in hosts]
SITE_OF = {h: s for s, hosts in SITES.items() for h in hosts}

HOLD = r"""
import json, socket, sys, time
addr, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = [socket.create_connection((addr, port), timeout=10) for _ in range(n)]
for c in conns:
    c.sendall(b"h" * 1000)
time.sleep(2.0)
for c in conns:
    c.close()
print(json.dumps({"held": n}), flush=True)
"""


class Fleet:
    def __init__(self, lab: Any, data: Path) -> None:
        self.lab = lab
        self.data = data
        self.procs: dict[str, subprocess.Popen[str]] = {}

    def addr(self, name: str) -> str:
        return f"{self.lab[name].ip}:{PORT}"

    def start(self, name: str) -> None:
        host = self.lab[name]
        argv = [MESHNODE, "run", "--insecure", "--listen", self.addr(name), "--data-dir", str(self.data / name),
                "--export-period", "1", "--metrics", "off", "--sensor", "diag", "--cgroup", host.cgroup_rel,
                "--label", "region=eu", "--label", f"site={SITE_OF[name]}", "--label", f"host={name}"]
        if name != "a":
            argv += ["--join", self.addr("a")]
        log = (self.data / f"{name}.log").open("w")
        self.procs[name] = host.popen(argv, stdout=subprocess.DEVNULL, stderr=log, text=True)

    def meshctl(self, on: str, *args: str, timeout: float = 30) -> str:
        out = self.lab[on].run([MESHCTL, "--node", self.addr(on), "--timeout", "20", *args, "--json"],
                               timeout=timeout, check=False)
        assert out.returncode == 0, f"meshctl {' '.join(args)} on {on}: {out.returncode} {out.stderr}"
        return str(out.stdout)

    def lines(self, on: str, *args: str) -> list[dict[str, Any]]:
        return [json.loads(x) for x in self.meshctl(on, *args).splitlines() if x.strip()]

    def wait(self, cond: Any, timeout: float, what: str) -> None:
        t0 = time.monotonic()
        last: Any = None
        while time.monotonic() - t0 < timeout:
            ok, last = cond()
            if ok:
                return
            time.sleep(0.5)
        raise AssertionError(f"{what} not within {timeout} s; last: {last}")


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    require_kernel()
    from meshnode.lab import Lab

    with Lab(sites=SITES) as lab:
        f = Fleet(lab, tmp_path_factory.mktemp("fleetflows"))
        sinks: list[subprocess.Popen[str]] = []
        try:
            for name in HOSTS:
                f.start(name)

            def formed() -> tuple[bool, Any]:
                out = lab["a"].run([MESHCTL, "--node", f.addr("a"), "peers", "--json"], check=False, timeout=20)
                if out.returncode:
                    return False, out.stderr
                states = {p["labels"].get("host"): p["state"] for p in json.loads(out.stdout)["peers"]}
                return states == dict.fromkeys(HOSTS, "alive"), states

            f.wait(formed, 90, "5 nodes alive at a")
            for name in HOSTS:
                sinks.append(traffic.start(lab[name], traffic.TCP_SINK, APP))
            for s in sinks:
                traffic.wait_ready(s)
            f.since = time.time_ns() - 5 * 10**9  # type: ignore[attr-defined]
            clients = [traffic.start(lab[h], HOLD, lab[HOSTS[(i + 1) % len(HOSTS)]].ip, APP, 6)
                       for i, h in enumerate(HOSTS)]
            for c in clients:
                assert traffic.result(c)["held"] == 6
            time.sleep(3.0)  # the flows' periods close (1 s periods, sock_diag notices a close at its next poll)
            yield f
        finally:
            for s in sinks:
                s.kill()
            stop_nodes(f.procs.values())


def _own(fleet: Fleet, since: str) -> dict[str, list[dict[str, Any]]]:
    """Each node's own records on port 8080, as `meshctl flows --json` against it prints them."""
    return {h: fleet.lines(h, "flows", "--port", str(APP), "--since", since, "-n", "5000") for h in HOSTS}


def _strip(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in ("node_id", "host")}


@pytest.mark.parametrize("per_site", [False, True])
def test_fleet_flows_are_exactly_each_nodes_own_records(fleet: Fleet, per_site: bool) -> None:
    since = _rfc3339(fleet.since)  # type: ignore[attr-defined]
    own = _own(fleet, since)
    assert all(len(v) >= 6 for v in own.values()), {h: len(v) for h, v in own.items()}  # out + in per host
    args = ["flows", "--fleet", "--port", str(APP), "--since", since, "-n", "5000", "--deadline", "5s"]
    docs = fleet.lines("c", *args, *(["--per-site"] if per_site else []))
    summary = docs[-1]["summary"]
    records = docs[:-1]
    assert not summary["partial"] and summary["missing"] == [] and summary["untrusted"] == []
    assert sorted(d["host"] for d in summary["answered"]) == HOSTS
    ids = {d["host"]: d["node_id"] for d in summary["answered"]}
    assert all(d["node_id"] == ids[d["host"]] for d in records)
    for h in HOSTS:
        mine = [_strip(d) for d in records if d["host"] == h]
        assert mine == [_strip(d) for d in own[h]], f"host {h}: fleet query and its own flows differ"
    assert [(d["end_ns"], d["node_id"]) for d in records] == sorted((d["end_ns"], d["node_id"]) for d in records)
    assert summary["records"] == sum(len(v) for v in own.values())
    if per_site:  # c asked its own site itself and one relay in s1 for a and b
        via = {d["host"]: d["via"] for d in summary["answered"]}
        assert {via[h] for h in SITES["s2"]} == {""} and via["a"] == via["b"] in (ids["a"], ids["b"])


def test_a_node_killed_mid_query_is_missing_and_the_rest_answer(fleet: Fleet) -> None:
    since = _rfc3339(fleet.since)  # type: ignore[attr-defined]
    own = _own(fleet, since)
    e = fleet.procs["e"]
    e.send_signal(signal.SIGSTOP)  # e stops answering: the query waits for it
    try:
        began = time.monotonic()
        query = fleet.lab["a"].popen(
            [MESHCTL, "--node", fleet.addr("a"), "flows", "--fleet", "--port", str(APP), "--since", since, "-n",
             "5000", "--deadline", "4s", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(1.5)
        e.kill()  # killed while the query waits for it
        out, err = query.communicate(timeout=30)
        took = time.monotonic() - began
    finally:
        e.kill()
        e.wait()
    assert query.returncode == 0, err
    docs = [json.loads(x) for x in out.splitlines()]
    summary = docs[-1]["summary"]
    assert summary["partial"]
    assert [(d["host"], d["error"] in ("DEADLINE_EXCEEDED", "UNAVAILABLE")) for d in summary["missing"]] == [
        ("e", True)]
    assert sorted(d["host"] for d in summary["answered"]) == ["a", "b", "c", "d"]
    for h in "abcd":
        assert [_strip(d) for d in docs[:-1] if d["host"] == h] == [_strip(d) for d in own[h]]
    assert not [d for d in docs[:-1] if d["host"] == "e"]
    print(f"\nfleet query with e killed mid-query answered in {took:.2f} s (deadline 4 s, meshctl start included)")
    assert took < 4.0 + 3.0  # one deadline, plus meshctl's start-up and the signing round trip
