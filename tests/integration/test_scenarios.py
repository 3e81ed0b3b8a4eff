"""The scenario fleet (meshnode/lab/_scenarios.py): its traffic flows, each named fault does to the network what
it says (measured by the clients themselves and by the hosts' TCP counters, not by the sensor), heal
restores, and ``down`` leaves no namespace, cgroup, process or file behind.

The fault tests share one fleet without nodes (the network is under test here; test_down_... starts the
six real nodes). Each test removes its fault, even when it fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support.env import require_kernel

Traffic = dict[str, dict[str, dict[str, int]]]
FAILURES = ("refused", "timeout", "unreachable", "reset", "error")


@pytest.fixture(scope="module")
def fleet() -> Iterator[Any]:
    require_kernel()
    from meshnode.lab import Fleet

    with Fleet.up(nodes=False) as f:
        yield f


@pytest.fixture
def healed(fleet: Any) -> Iterator[Any]:
    try:
        yield fleet
    finally:
        fleet.heal()


def delta(after: Traffic, before: Traffic) -> Traffic:
    """Counts that grew between two ``fleet.traffic()`` snapshots, per client and target."""
    out: Traffic = {}
    for client, targets in after.items():
        for key, counts in targets.items():
            old = before.get(client, {}).get(key, {})
            out.setdefault(client, {})[key] = {k: v - old.get(k, 0) for k, v in counts.items()}
    return out


def window(fleet: Any, seconds: float, settle: float = 2.0) -> Traffic:
    """What the clients did during ``seconds``, after ``settle`` seconds for requests in flight to finish."""
    time.sleep(settle)
    before = fleet.traffic()
    time.sleep(seconds)
    return delta(fleet.traffic(), before)


def failures(counts: dict[str, int]) -> int:
    return sum(counts[k] for k in FAILURES)


def by_target(d: Traffic, pred: Callable[[str], bool]) -> list[tuple[str, str, dict[str, int]]]:
    return [(c, k, n) for c, targets in d.items() for k, n in targets.items() if pred(k)]


def test_traffic_reaches_every_service_and_nothing_fails(fleet: Any) -> None:
    from meshnode.lab import CLIENTS

    d = window(fleet, 4.0, settle=0)
    want = {(f"{c.host}/{c.comm}", key) for c in CLIENTS for key in c.targets}
    got = {(c, k) for c, targets in d.items() for k in targets}
    assert got == want
    for client, key, n in by_target(d, lambda k: True):
        slow = "prometheus" in client
        assert n["ok"] >= (2 if slow else 8), (client, key, n)  # one request every 100-200 ms (1 s for scrapes)
        assert failures(n) == 0, (client, key, n)


def test_blackhole_server_times_out_every_connect_to_db1_and_heals(healed: Any) -> None:
    from meshnode.lab import Suspect

    fleet = healed
    handle = fleet.fault("blackhole-server")
    assert handle.expected == Suspect("dst_host", "db1")
    d = window(fleet, 5.0)
    to_db1 = by_target(d, lambda k: k.startswith("db1:"))
    assert len(to_db1) == 5  # 4 clients of postgres, 1 of db1's exporter
    for client, key, n in to_db1:
        assert n["ok"] == 0 and n["timeout"] >= 2, (client, key, n)
    for client, key, n in by_target(d, lambda k: not k.startswith("db1:")):
        assert n["ok"] >= 1 and failures(n) == 0, (client, key, n)

    handle.remove()
    assert not handle.active and fleet.handles == []
    d = window(fleet, 3.0)
    for client, key, n in by_target(d, lambda k: k.startswith("db1:")):
        assert n["ok"] >= 1 and failures(n) == 0, (client, key, n)


def test_site_loss_makes_cross_site_tcp_retransmit_and_heals(healed: Any) -> None:
    fleet = healed

    def retrans() -> int:
        return sum(fleet.tcp_counters(h)["RetransSegs"] for h in ("web1", "web2", "app1", "app2"))

    r0 = retrans()
    time.sleep(5.0)
    healthy = retrans() - r0
    handle = fleet.fault("site-loss")
    assert handle.expected is not None and handle.expected.kind == "path"
    assert handle.expected.name == "eu/ams1<->eu/fra1"
    time.sleep(1.0)
    r1 = retrans()
    d = window(fleet, 5.0, settle=0)
    lossy = retrans() - r1
    print(f"\nRetransSegs on the 4 client hosts over 5 s: healthy {healthy}, 15 % uplink loss {lossy}")
    assert lossy >= max(30, 5 * healthy)
    # cross-site requests suffer but mostly complete; traffic inside a site is untouched
    everything = by_target(d, lambda k: True)
    cross = [(c, k, n) for c, k, n in everything if crosses_sites(c, k)]
    assert sum(n["ok"] for _c, _k, n in cross) > 2 * sum(failures(n) for _c, _k, n in cross)
    for client, key, n in everything:
        if not crosses_sites(client, key):
            assert n["ok"] >= 1 and failures(n) == 0, (client, key, n)

    handle.remove()
    time.sleep(2.0)
    r2 = retrans()
    time.sleep(5.0)
    healed_retrans = retrans() - r2
    print(f"after heal: {healed_retrans}")
    assert healed_retrans <= max(5, lossy // 4)


def test_refuse_port_refuses_redis_only_and_heals(healed: Any) -> None:
    fleet = healed
    handle = fleet.fault("refuse-port")
    assert handle.expected is not None
    assert (handle.expected.kind, handle.expected.name) == ("service", f"{fleet.host('cache1').ip}:6379")
    d = window(fleet, 4.0)
    redis = by_target(d, lambda k: k == "cache1:6379/tcp")
    assert len(redis) == 4
    for client, key, n in redis:
        assert n["ok"] == 0 and n["refused"] >= 5, (client, key, n)
    for client, key, n in by_target(d, lambda k: k != "cache1:6379/tcp"):
        assert n["ok"] >= 1 and failures(n) == 0, (client, key, n)  # cache1's DNS and exporter keep working

    handle.remove()
    d = window(fleet, 3.0)
    for client, key, n in by_target(d, lambda k: k == "cache1:6379/tcp"):
        assert n["ok"] >= 3 and failures(n) == 0, (client, key, n)


def test_bad_client_retries_a_dead_address_from_one_process(healed: Any) -> None:
    fleet = healed
    app2 = fleet.host("app2")
    handle = fleet.fault("bad-client")
    assert handle.expected is not None
    assert (handle.expected.kind, handle.expected.name) == ("process", "app2/billing-sync")

    def billing_pids() -> list[int]:
        return [p for p in app2.pids() if _comm(p) == "billing-sync"]

    assert len(billing_pids()) == 1
    d = window(fleet, 4.0, settle=1.5)
    bad = d["app2/billing-sync"][f"{fleet.dead_address()}:5432/tcp"]
    assert bad["ok"] == 0 and failures(bad) >= 16, bad  # 8 threads, ~1 s per failed try
    for client, key, n in by_target({c: t for c, t in d.items() if c != "app2/billing-sync"}, lambda k: True):
        assert failures(n) == 0, (client, key, n)

    handle.remove()
    assert billing_pids() == []
    assert "app2/billing-sync" not in fleet.traffic()


def test_none_and_misuse(fleet: Any) -> None:
    from meshnode.lab import SCENARIOS, LabUsageError

    handle = fleet.fault("none")
    assert handle.expected is None and fleet.expected_suspect("none") is None
    d = window(fleet, 2.0, settle=0)
    assert all(failures(n) == 0 for _c, _k, n in by_target(d, lambda k: True))
    with pytest.raises(LabUsageError, match="already in force"):
        fleet.fault("none")
    handle.remove()
    with pytest.raises(LabUsageError) as err:
        fleet.fault("meteor-strike")
    assert all(name in str(err.value) for name in SCENARIOS)
    assert set(SCENARIOS) == {"none", "blackhole-server", "site-loss", "refuse-port", "bad-client"}


def test_down_with_nodes_leaves_nothing(tmp_path: Path) -> None:
    """Six real nodes (eBPF) come up with their labels; down() removes every trace (mesh forming is
    test_mesh_lab's subject)."""
    require_kernel()
    from meshnode.lab import CGROUP_ROOT, SITES, Fleet
    from meshnode.lab._cmd import list_netns

    started = time.monotonic()
    fleet = Fleet.up(nodes=True, export_period=2)
    try:
        up_s = time.monotonic() - started
        for site, (region, hosts) in SITES.items():
            for host in hosts:
                status = fleet.meshctl(host, "status")
                assert status["sensor_mode"] == "ebpf" and status["scope"] == fleet.host(host).cgroup_rel
                assert status["labels"] == {"region": region, "site": site, "host": host}
        print(f"\nfleet with 6 eBPF nodes up in {up_s:.1f} s")
        lab_id, data_dir = fleet.lab.id, fleet.data_dir
        pids = [p for host in fleet.lab for p in host.pids()]
        assert len(pids) >= 6 + 7 + 5  # nodes, servers, clients
    finally:
        fleet.down()
    assert [n for n in list_netns() if n.startswith(lab_id)] == []
    assert not (CGROUP_ROOT / lab_id).exists()
    assert [p for p in pids if Path(f"/proc/{p}").exists() and _comm(p) != ""] == []
    assert not data_dir.exists()
    fleet.down()  # idempotent


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def crosses_sites(client: str, key: str) -> bool:
    """Whether a client (``host/comm``) and a target (``host:port/proto``) are in different sites."""
    from meshnode.lab import SITES

    site = {h: s for s, (_r, hosts) in SITES.items() for h in hosts}
    return site[client.split("/")[0]] != site[key.split(":")[0]]
