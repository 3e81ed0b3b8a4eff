"""Blame in a real fleet (issue 8): six lab hosts in two sites, real traffic, a node with the eBPF sensor on
each, and the five scenarios of ``meshnode.lab`` (its scenario fleet), one after another on one fleet.

Each fault is put in force and ``meshctl blame --json --since <fault start>`` is asked until its top
suspect is the expected one; the time from the fault to that answer must be at most two export periods
(plus one period of slack for gossip and for the query itself on a loaded 2-core box), and is printed (the
figures in bench/RESULTS.md, "Diagnosis"). Between scenarios the fault is removed and the fleet must be
healthy again (no suspect over the last two periods) before the next one starts.

The node asked is web1's (the seed, in the other site from most faults), for ``bad-client`` too: the
process runs on app2, and web1 knows it from app2's digests (``Digest.processes``, the processes with the
most problem transactions of each period).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests._support.env import require_kernel

PERIOD = 2.0
"""The nodes' export period (s)."""

LIMIT = 3.5 * PERIOD
"""Time from fault to correct blame that the test accepts (7 s): issue 8's two export periods, plus 1.5 for a
loaded 2-core machine (a peer's digest needs gossip to reach the node asked, and each meshctl call starts a
Python process). A connect unanswered at a period's end counts at once (``connect_pending``), not after the
clients' connect timeout. The measured times are printed and recorded in bench/RESULTS.md."""

GIVE_UP = 40.0
"""How long a scenario is polled before it fails with the last answer (so a slow run says how slow)."""

TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def fleet() -> Iterator[Any]:
    require_kernel()
    from meshnode.lab import Fleet

    with Fleet.up(nodes=True, export_period=PERIOD) as f:
        # warm up: web1 holds the transactions of all four client hosts (db1 and cache1 only serve; their
        # digests carry no client transactions but their addresses, which name them as destinations)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            doc = f.meshctl("web1", "blame", "--since", f"{int(3 * PERIOD)}s")
            if doc["hosts"] >= 4 and doc["transactions"] > 200:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"web1 never saw transactions from the 4 client hosts: {doc}")
        yield f
    if TIMES:
        print("\ntime to correct blame (s), export period 2 s: "
              + ", ".join(f"{k} {v:.1f}" for k, v in TIMES.items()))


def _rfc3339(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat().replace("+00:00", "Z")


def _top(doc: dict[str, Any]) -> tuple[str, str] | None:
    return (doc["suspects"][0]["kind"], doc["suspects"][0]["name"]) if doc["suspects"] else None


def _wait_healthy(fleet: Any, host: str = "web1") -> None:
    """After a fault is removed: no suspect over the last two periods (what the next scenario starts from)."""
    deadline = time.monotonic() + GIVE_UP
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        time.sleep(2 * PERIOD)
        doc = fleet.meshctl(host, "blame", "--since", f"{int(2 * PERIOD)}s")
        if not doc["suspects"] and doc["transactions"] > 100:
            return
    pytest.fail(f"the fleet did not recover: {doc['verdict']}")


def _blame_until(fleet: Any, scenario: str, host: str = "web1", *, shared: bool = True,
                 then: Any = None) -> tuple[float, dict[str, Any]]:
    """Put ``scenario`` in force and ask until the top suspect is the expected one (a shared cause when
    ``shared``; a lone process is never one), then heal and wait for the fleet to be healthy again.

    Returns the time to the first correct answer and the answer; with ``then`` (a predicate on the answer),
    the first correct answer that also satisfies it, asked for up to GIVE_UP (evidence from far peers may
    come a period later than the verdict, under loss: the time measured stays the verdict's)."""
    handle = fleet.fault(scenario)
    want = (handle.expected.kind, handle.expected.name)
    since = _rfc3339(handle.started_ns)
    doc: dict[str, Any] = {}
    took: float | None = None
    try:
        while time.monotonic() - handle.started < GIVE_UP:
            doc = fleet.meshctl(host, "blame", "--since", since)
            if _top(doc) == want and doc["suspects"][0]["shared"] == shared:
                if took is None:
                    took = time.monotonic() - handle.started
                    TIMES[scenario] = took
                if then is None or then(doc):
                    return took, doc
            time.sleep(0.25)
        pytest.fail(f"{scenario}: top suspect {_top(doc)} after {GIVE_UP} s, want {want}"
                    f"{' (and the evidence asked for)' if took is not None else ''}: {doc.get('verdict')}")
    finally:
        handle.remove()
        _wait_healthy(fleet, host)


def test_healthy_fleet_has_no_suspect(fleet: Any) -> None:
    start = time.time_ns()
    time.sleep(3 * PERIOD)
    for host in ("web1", "app2"):
        doc = fleet.meshctl(host, "blame", "--since", _rfc3339(start))
        assert doc["suspects"] == [], doc["verdict"]
        assert doc["verdict"] == "no problem above 20%"
        assert doc["hosts"] >= 4 and doc["transactions"] > 200
        assert doc["problems"] < 0.05 * doc["transactions"]


def test_blackholed_server_host_is_blamed_not_its_clients(fleet: Any) -> None:
    took, doc = _blame_until(fleet, "blackhole-server")
    top = doc["suspects"][0]
    # connects that a period's end finds unanswered count first (connect_pending), those that end later
    # as timeouts when no period's end saw them pending
    assert set(top["problem_kinds"]) <= {"connect_pending", "timeout"}
    assert top["problem_fraction"] >= doc["threshold"]
    assert len(top["hosts"]) >= 3  # web1, web2, app1, app2 all connect to db1
    assert took <= LIMIT, f"blackhole-server blamed after {took:.1f} s"


def test_lossy_site_uplink_blames_the_path(fleet: Any) -> None:
    both = {"eu/ams1", "eu/fra1"}
    took, doc = _blame_until(fleet, "site-loss", then=lambda d: set(d["suspects"][0]["sites"]) == both)
    top = doc["suspects"][0]
    assert set(top["sites"]) == both  # hosts on both ends of the path saw its problems
    assert set(top["problem_kinds"]) & {"retransmits", "slow_connect", "timeout"}
    assert took <= LIMIT, f"site-loss blamed after {took:.1f} s"


def test_refused_port_blames_the_service_not_the_host(fleet: Any) -> None:
    took, doc = _blame_until(fleet, "refuse-port")
    top = doc["suspects"][0]
    assert top["problem_kinds"].get("refused", 0) > 0
    assert all(s["kind"] != "dst_host" for s in doc["suspects"])  # cache1's other ports work
    assert took <= LIMIT, f"refuse-port blamed after {took:.1f} s"


def test_retrying_client_process_on_app2_is_blamed_by_web1(fleet: Any) -> None:
    took, doc = _blame_until(fleet, "bad-client", shared=False)
    top = doc["suspects"][0]
    assert top["hosts"] == ["app2"]
    assert set(top["problem_kinds"]) <= {"connect_pending", "timeout"} and top["problems"] >= 5
    assert [d.rpartition(":")[2] for d in top["problem_destinations"]] == ["5432"]  # the one dead address
    assert took <= LIMIT, f"bad-client blamed after {took:.1f} s"
