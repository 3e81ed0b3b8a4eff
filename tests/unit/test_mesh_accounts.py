"""Seed 003's accounting and active tasks' pure parts: the ledger and its quotas, the ICMP error parser of
the path probe, stored results and their bound, and meshctl's views of them."""

from __future__ import annotations

import io
import socket
import struct
from pathlib import Path

import pytest

from meshnode.mesh import HeldMeasurements, Ledger, Quota, StoredMeasurements, TaskRefused, parse_quotas
from meshnode.mesh._pathprobe import IP_RECVERR, IPV6_RECVERR, parse_icmp_error
from meshnode.mesh._tasks import bounded_hops
from meshnode.v1 import mesh_pb2


def test_quota_refuses_over_the_burst_refills_over_the_hour_and_counts() -> None:
    now = [0.0]
    ledger = Ledger(Quota(tasks=3, queries=0), {"b": Quota(tasks=1, queries=2)}, clock=lambda: now[0])
    for _ in range(3):
        ledger.charge("a", "tasks")
    with pytest.raises(TaskRefused) as err:
        ledger.charge("a", "tasks")
    assert err.value.code == "RESOURCE_EXHAUSTED"
    assert str(err.value) == ("a is over its quota of 3 active tasks per hour on this node (its operator may "
                              "raise it: peer_quotas)")
    now[0] += 1200.0  # a third of an hour: one task back
    ledger.charge("a", "tasks")
    with pytest.raises(TaskRefused):
        ledger.charge("a", "tasks")
    for _ in range(100):
        ledger.charge("a", "queries")  # 0: unlimited
    ledger.charge("b", "tasks")
    with pytest.raises(TaskRefused):
        ledger.charge("b", "tasks")  # b's own quota, not the default
    ledger.served("a", tasks=4, nbytes=400)
    ledger.asked("c", queries=2, nbytes=90)
    rows = {p: (a.served_tasks, a.served_bytes, a.asked_queries, a.asked_bytes, a.refused, q.tasks)
            for p, a, q in ledger.accounts()}
    assert rows == {"a": (4, 400, 0, 0, 2, 3), "b": (0, 0, 0, 0, 1, 1), "c": (0, 0, 2, 90, 0, 3)}
    assert [p for p, _, _ in ledger.accounts()] == ["a", "c", "b"]  # busiest first
    assert ledger.totals()["refused"] == 3


def test_ledger_is_bounded_and_counts_what_it_dropped() -> None:
    ledger = Ledger(max_peers=2)
    ledger.served("a", tasks=1)
    ledger.served("b", tasks=1)
    ledger.served("a", tasks=1)  # a is the most recently used now
    ledger.served("c", tasks=1)
    assert sorted(p for p, _, _ in ledger.accounts()) == ["a", "c"] and ledger.evicted == 1


def test_parse_quotas() -> None:
    assert parse_quotas(["3f2a9c1d0b7e6a55=60/600", " 10.0.0.9 = 0/5 "]) == {
        "3f2a9c1d0b7e6a55": Quota(60, 600), "10.0.0.9": Quota(0, 5)}
    for bad in ("x=1", "x=a/2", "=1/2", "x"):
        with pytest.raises(ValueError, match="is not PEER=TASKS/QUERIES"):
            parse_quotas([bad])


def _cmsg4(origin: int, icmp_type: int, addr: str) -> bytes:
    return struct.pack("=IBBBBII", 113, origin, icmp_type, 0, 0, 0, 0) + struct.pack(
        "=HH4s8x", socket.AF_INET, 0, socket.inet_aton(addr))


def test_icmp_errors_name_the_router_and_what_it_said() -> None:
    assert parse_icmp_error(socket.IPPROTO_IP, IP_RECVERR, _cmsg4(2, 11, "10.0.0.254")) == (
        "10.0.0.254", "time_exceeded")
    assert parse_icmp_error(socket.IPPROTO_IP, IP_RECVERR, _cmsg4(2, 3, "10.0.0.254")) == ("10.0.0.254", "unreachable")
    assert parse_icmp_error(socket.IPPROTO_IP, IP_RECVERR, _cmsg4(1, 11, "10.0.0.254")) is None  # a local error
    assert parse_icmp_error(socket.IPPROTO_IP, 99, _cmsg4(2, 11, "10.0.0.254")) is None
    assert parse_icmp_error(socket.IPPROTO_IP, IP_RECVERR, b"short") is None
    v6 = struct.pack("=IBBBBII", 113, 3, 3, 0, 0, 0, 0) + struct.pack(
        "=HHI16sI", socket.AF_INET6, 0, 0, socket.inet_pton(socket.AF_INET6, "fd00::fe"), 0)
    assert parse_icmp_error(socket.IPPROTO_IPV6, IPV6_RECVERR, v6) == ("fd00::fe", "time_exceeded")


def test_hop_bounds() -> None:
    assert (bounded_hops(0), bounded_hops(30)) == (16, 30)
    with pytest.raises(TaskRefused, match=r"max_hops: 31 is outside 1\.\.30"):
        bounded_hops(31)


def _result(i: int) -> mesh_pb2.MeasureResponse:
    return mesh_pb2.MeasureResponse(node_id="n1", target=f"10.0.0.{i}:443", attempts=1, reachable=1,
                                    connect_us=[100 + i], time_ns=1000 + i, kind=mesh_pb2.MEASURE_CONNECT)


def test_results_are_stored_newest_first_and_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from meshnode.store import Store, _store

    monkeypatch.setattr(_store, "MAX_MEASUREMENTS", 3)
    with Store(tmp_path / "s.db") as store:
        kept = StoredMeasurements(store)
        ids = [kept.record(_result(i)) for i in range(5)]
        got, evicted = kept.list(0, 10)
        assert [r.id for r in got] == ids[:1:-1] and evicted == 2
        assert [r.target for r in got] == ["10.0.0.4:443", "10.0.0.3:443", "10.0.0.2:443"]
        assert [r.id for r in kept.list(1003, 10)[0]] == ids[:2:-1]  # since: ended at or after
    held = HeldMeasurements(held=2)
    for i in range(3):
        held.record(_result(i))
    got, evicted = held.list(0, 5)
    assert [r.id for r in got] == [3, 2] and evicted == 1


def _render(renderable: object, width: int = 80) -> str:
    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=width, force_terminal=False, color_system=None).print(renderable)
    return out.getvalue()


def test_measure_views() -> None:
    from meshnode.cli._measure import measure_view, resolve_member

    path = {"node_id": "3f2a9c1d0b7e6a55", "target": "10.1.2.1:8080", "kind": "path", "attempts": 3, "reachable": 1,
            "hops": [{"ttl": 1, "addr": "10.1.1.254", "rtt_us": 400, "status": "time_exceeded"},
                     {"ttl": 2, "addr": "", "rtt_us": 0, "status": "timeout"},
                     {"ttl": 3, "addr": "10.1.2.1", "rtt_us": 1500, "status": "open"}],
            "id": 7, "time_ns": 1_764_000_000 * 10**9, "requester": "127.0.0.1"}
    text = _render(measure_view(path, plain=True))
    lines = [ln.rstrip() for ln in text.splitlines()]
    assert lines[0] == "path 3f2a9c1d -> 10.1.2.1:8080: 3 hop(s), reached"
    assert [ln.split() for ln in lines[2:5]] == [["1", "10.1.1.254", "400us", "time_exceeded"],
                                                 ["2", "*", "-", "timeout"], ["3", "10.1.2.1", "1.5ms", "open"]]
    assert lines[-1].startswith("stored as #7 at ") and lines[-1].endswith(", asked by 127.0.0.1")
    rtt = {"node_id": "3f2a9c1d0b7e6a55", "target": "10.0.0.2:443", "kind": "rtt", "attempts": 3, "reachable": 2,
           "rtt_us": [120, 95], "p50_us": 120, "errors": {"timeout": 1}, "id": 0, "time_ns": 0}
    lines = _render(measure_view(rtt, plain=True)).splitlines()
    assert lines == ["rtt 3f2a9c1d -> 10.0.0.2:443: 2/3 connected, min 95us p50 120us max 120us",
                     "errors: timeout 1", "handshake RTT (kernel): 120us 95us", "not stored"]
    peers = {"peers": [{"node_id": "3f2a9c1d0b7e6a55", "addr": "10.0.0.1:7400", "labels": {"host": "web-1"}},
                       {"node_id": "3f2b000000000000", "addr": "10.0.0.2:7400", "labels": {"host": "web-2"}}]}
    assert resolve_member(peers, "web-2") == ("3f2b000000000000", "10.0.0.2:7400")
    assert resolve_member(peers, "3f2a") == ("3f2a9c1d0b7e6a55", "10.0.0.1:7400")
    from meshnode.cli._exceptions import UsageError

    with pytest.raises(UsageError, match="2 members match"):
        resolve_member(peers, "3f2")
    with pytest.raises(UsageError, match="no member has that node id or host label"):
        resolve_member(peers, "db-1")


def test_measurements_list_fits_80_columns() -> None:
    from meshnode.cli._measure import measurements_view

    r = {"node_id": "9b5ca25f319b93f4", "target": "10.181.2.1:8080", "kind": "rtt", "attempts": 5, "reachable": 5,
         "rtt_us": [66, 115, 123, 82, 78], "p50_us": 82, "errors": {}, "id": 12, "time_ns": 1_764_000_000 * 10**9}
    lines = [ln.rstrip() for ln in _render(measurements_view({"measurements": [r], "evicted": 3}, plain=True))
             .splitlines()]
    assert lines[0].split() == ["ID", "TIME", "RESULT"]
    assert lines[1].split() == ["12", "16:00:00", "rtt", "10.181.2.1:8080:", "5/5", "connected,", "min", "66us", "p50",
                                "82us", "max", "123us"]
    assert max(map(len, lines)) <= 80 and lines[-1] == "3 older result(s) evicted by the store's bound"


def test_account_metrics_list_the_busiest_members_then_other_and_never_an_address() -> None:
    from meshnode.metrics._state import MeshView, account_families

    ids = [f"{i:016x}" for i in range(4)]
    view = MeshView(members={}, counters={}, accounts=[
        (ids[0], {"served_tasks": 9, "refused": 1}), ("10.0.0.7", {"served_tasks": 5, "refused": 0}),
        *[(ids[i], {"served_tasks": 4 - i, "refused": 1}) for i in (1, 2, 3)],
        ("::1", {"served_tasks": 1, "refused": 2})],
        accounts_evicted=2)
    fam, evicted = account_families(view, listed=2)
    got = {(s.labels["peer"], s.labels["what"]): s.value for s in fam.samples}
    assert got == {(ids[0], "served_tasks"): 9, (ids[0], "refused"): 1, (ids[1], "served_tasks"): 3,
                   (ids[1], "refused"): 1, ("other", "served_tasks"): 3, ("other", "refused"): 2,
                   ("callers", "served_tasks"): 6, ("callers", "refused"): 2}
    assert [s.value for s in evicted.samples] == [2]


def test_peers_view_shows_the_accounts() -> None:
    from meshnode.cli._views import peers_view

    doc = {"peers": [], "health_score": 0, "accounts": [
        {"peer": "3f2a9c1d0b7e6a55", "served_tasks": 4, "served_queries": 12, "served_bytes": 5000,
         "asked_tasks": 1, "asked_queries": 9, "asked_bytes": 2048, "refused": 2, "quota_tasks": 600,
         "quota_queries": 0}]}
    lines = [ln.rstrip() for ln in _render(peers_view(doc, plain=True)).splitlines()]
    at = lines.index("accounts (served and asked: active tasks/fleet queries; quotas per hour):")
    assert lines[at + 2].split() == ["3f2a9c1d0b7e6a55", "4/12", "4.9", "KiB", "1/9", "2.0", "KiB", "2", "600/-"]


def test_a_silent_hop_is_probed_again_before_it_is_called_silent(monkeypatch: pytest.MonkeyPatch) -> None:
    """A lab router's first time-exceeded was lost while it resolved its way back (CI): one lost ICMP error
    made the hop 'timeout' where a second query answers, as traceroute's several queries a hop would."""
    import asyncio

    from meshnode.mesh import _pathprobe
    from meshnode.mesh._pathprobe import Hop

    calls: list[int] = []
    answers = {1: ["timeout", "time_exceeded"], 2: ["timeout", "timeout"], 3: ["open"]}

    async def resolve(host: str, port: int) -> tuple[int, tuple[str, int]]:
        return 2, (host, port)

    async def probe_hop(family: int, addr: object, ttl: int, timeout_s: float) -> Hop:
        calls.append(ttl)
        status = answers[ttl].pop(0)
        return Hop(ttl, "" if status == "timeout" else f"10.0.{ttl}.1", 0 if status == "timeout" else 5, status)

    monkeypatch.setattr(_pathprobe, "resolve", resolve)
    monkeypatch.setattr(_pathprobe, "probe_hop", probe_hop)
    hops = asyncio.run(_pathprobe.trace_path("10.0.3.1", 80, max_hops=5, timeout_s=0.01))
    assert [(h.ttl, h.status) for h in hops] == [(1, "time_exceeded"), (2, "timeout"), (3, "open")]
    assert calls == [1, 1, 2, 2, 3]
