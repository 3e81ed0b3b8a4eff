"""Mesh benchmark: SWIM + Lifeguard membership and digest dissemination, simulated (issue 6).

Everything runs on the in-memory network with a manual clock and one seed, so the numbers are
repeatable and independent of this machine's speed (only the CPU column depends on it). Bytes are the
serialized bytes the nodes send: packets (probes, acks, piggybacked gossip) and reliable streams
(digest pulls, push-pull), exactly what the gRPC transport would carry as payload.

Measured per fleet size N:

* dissemination: a freshly published digest until 99.99 % of the nodes hold it (median and max of a few);
* bandwidth: bytes/s sent per node in steady state, every node publishing a ~1 kB digest every export
  period (60 s), random phases;
* detection: a crashed node until the first node declares it dead, and until 99.99 % of the others see it
  dead (median and max of a few crashes);
* false positives: 5 % packet loss on every link, no failures: false suspicions (each refuted by its
  target; in brackets, how many times an observer marked someone suspect), and members wrongly declared
  dead.

    .venv/bin/python bench/bench_mesh.py [--nodes 100,1000] [--seed 1] [--probe-interval 0.5]
                                         [--suspicion-mult 4]

With ``--sites`` the fleet is hierarchical (``meshnode.mesh._sites``): sites of 100 nodes, about sqrt(sites)
regions, 10 s export periods, every node publishing a ~1.2 kB digest each period (12 of 40 fleet services)
and validating 3 peers (2 in its site, 1 elsewhere). Every byte every pool of a node sends is counted.

    .venv/bin/python bench/bench_mesh.py --sites --nodes 100,1000,10000
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshnode.mesh import MeshConfig, State
from meshnode.mesh._sim import SimCluster, SiteCluster
from meshnode.mesh._sites import SiteConfig
from meshnode.v1 import flow_pb2, mesh_pb2

EXPORT_PERIOD = 60.0
LATENCY = 0.001
JITTER = 0.001


def _labels(i: int) -> dict[str, str]:
    return {"region": f"r{i % 3}", "site": f"s{i % 12}", "host": f"host-{i:04d}"}


def _digest(rng: random.Random, now_ns: int) -> mesh_pb2.Digest:
    """A realistic digest: 12 destinations, 6 endpoint records (about 1 kB serialized)."""
    rollups = [
        flow_pb2.Rollup(
            key=f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}:{rng.choice((443, 5432, 53))}",
            flows=rng.randrange(1, 5000), useful=rng.randrange(1, 5000), failures={"timeout": rng.randrange(50)},
            bytes_tx=rng.randrange(10**9), bytes_rx=rng.randrange(10**9), retransmits=rng.randrange(1000),
            rtt_p50_us=rng.randrange(100, 5000), rtt_p95_us=rng.randrange(5000, 90000),
        )
        for _ in range(12)
    ]
    endpoints = [
        flow_pb2.Flow(
            src="10.0.0.1", sport=rng.randrange(32768, 61000), dst=f"10.0.{rng.randrange(256)}.{rng.randrange(256)}",
            dport=443, proto=flow_pb2.TCP, direction=flow_pb2.OUTBOUND, bytes_tx=rng.randrange(10**8),
            bytes_rx=rng.randrange(10**8), packets_tx=rng.randrange(10**5), packets_rx=rng.randrange(10**5),
            outcome=flow_pb2.ESTABLISHED, start_ns=now_ns - rng.randrange(60 * 10**9), end_ns=now_ns,
        )
        for _ in range(6)
    ]
    return mesh_pb2.Digest(period_start_ns=now_ns - int(EXPORT_PERIOD * 1e9), period_end_ns=now_ns,
                           by_destination=rollups, endpoints=endpoints)


@dataclass
class Result:
    n: int
    dissemination: list[float] = field(default_factory=list)
    digest_bytes: int = 0
    bytes_per_node: float = 0.0
    packet_bytes_per_node: float = 0.0
    stream_bytes_per_node: float = 0.0
    packets_per_node: float = 0.0
    first_dead: list[float] = field(default_factory=list)
    all_dead: list[float] = field(default_factory=list)
    fp_suspicions: int = 0
    fp_refuted: int = 0
    fp_dead: int = 0
    fp_seconds: float = 0.0
    cpu: float = 0.0


def _cluster(n: int, seed: int, cfg: MeshConfig, loss: float = 0.0) -> SimCluster:
    c = SimCluster(seed=seed, config=cfg, latency=LATENCY, loss=loss, digests=True)
    c.net.jitter = JITTER
    c.record_events = False
    c.bootstrap(n, _labels)
    c.run(3.0)  # probes, awareness and timers settle
    return c


def _until_count(c: SimCluster, target: int, count: Callable[[], int], limit: float) -> float | None:
    start = c.sched.now()
    c.run(limit, lambda: count() >= target)
    return c.sched.now() - start if count() >= target else None


def bench(n: int, seed: int, cfg: MeshConfig, window: float, fp_window: float) -> Result:
    cpu0 = time.process_time()
    res = Result(n)
    rng = random.Random(seed)
    target = math.ceil(0.9999 * n)

    # --- dissemination and bandwidth on one cluster
    c = _cluster(n, seed, cfg)
    holders: dict[tuple[str, int], int] = {}

    def on_accept(d: mesh_pb2.Digest, _s: mesh_pb2.SignedDigest) -> None:
        key = (d.node_id, d.seq)
        holders[key] = holders.get(key, 1) + 1  # the publisher holds it from the start

    for ex in c.exchanges.values():
        ex.on_accept = on_accept
    for _ in range(5):
        src = c.ids[rng.randrange(n)]
        signed = c.exchanges[src].publish(_digest(rng, c.sched.wall_ns()))
        res.digest_bytes = len(signed.payload)
        key = (src, mesh_pb2.Digest.FromString(signed.payload).seq)
        holders[key] = 1
        t = _until_count(c, target, lambda k=key: holders.get(k, 0), 30.0)  # type: ignore[misc]
        res.dissemination.append(t if t is not None else math.inf)
        c.run(2.0)  # let the announcements die down

    # steady state: everyone publishes every EXPORT_PERIOD, random phase; measure over `window`
    def publisher(nid: str) -> Callable[[], None]:
        def tick() -> None:
            c.exchanges[nid].publish(_digest(rng, c.sched.wall_ns()))
            c.sched.call_later(EXPORT_PERIOD, tick)
        return tick

    for nid in c.ids:
        c.sched.call_later(rng.random() * EXPORT_PERIOD, publisher(nid))
    c.run(5.0)  # ramp up: announcement queues reach their steady length within a few gossip rounds
    b0 = sum(c.net.bytes_sent.values())
    s0 = sum(c.net.stream_bytes_sent.values())
    p0 = sum(c.net.packets_sent.values())
    c.run(window)
    total = sum(c.net.bytes_sent.values()) - b0
    stream = sum(c.net.stream_bytes_sent.values()) - s0
    res.bytes_per_node = total / n / window
    res.stream_bytes_per_node = stream / n / window
    res.packet_bytes_per_node = (total - stream) / n / window
    res.packets_per_node = (sum(c.net.packets_sent.values()) - p0) / n / window
    del c

    # --- dead-node detection: crash one node at a time
    c = _cluster(n, seed + 1, cfg)
    for _ in range(3):
        live = [m.node_id for m in c.alive()]
        victim = live[rng.randrange(len(live))]
        others = len(live) - 1
        want = math.ceil(0.9999 * others)
        c.crash(victim)
        start = c.sched.now()
        first = _until_count(c, 1, lambda v=victim: c.leaves_seen[v], 60.0)  # type: ignore[misc]
        rest = _until_count(c, want, lambda v=victim: c.leaves_seen[v], 60.0)  # type: ignore[misc]
        res.first_dead.append(first if first is not None else math.inf)
        res.all_dead.append(c.sched.now() - start if rest is not None else math.inf)
        c.run(5.0)
    del c

    # --- false positives at 5 % loss
    c = _cluster(n, seed + 2, cfg, loss=0.05)
    before = {m.node_id: m.counters.copy() for m in c.alive()}
    c.run(fp_window)
    for m in c.alive():
        res.fp_suspicions += m.counters["suspicions"] - before[m.node_id]["suspicions"]
        res.fp_refuted += m.counters["refuted"] - before[m.node_id]["refuted"]
        res.fp_dead += m.counters["declared_dead"] - before[m.node_id]["declared_dead"]
    res.fp_seconds = fp_window
    still_dead = sum(1 for m in c.alive() for x in m.members() if x.state == State.DEAD)
    res.fp_dead = max(res.fp_dead, still_dead)
    res.cpu = time.process_time() - cpu0
    return res


def _fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):.2f} / {max(xs):.2f}"


# ------------------------------------------------------------------------------------------------- sites

SITE_SIZE = 100
SITE_PERIOD = 10.0
_SERVICES = [f"10.9.{i // 8}.{i % 8 + 1}:{(443, 5432, 6379, 53)[i % 4]}" for i in range(40)]


def _site_labels(n: int) -> Callable[[int], dict[str, str]]:
    sites = max(1, n // SITE_SIZE)
    regions = max(1, round(math.sqrt(sites)))

    def labels(i: int) -> dict[str, str]:
        s = i % sites
        return {"region": f"r{s % regions}", "site": f"s{s}", "host": f"host-{i:05d}"}

    return labels


def _site_digest(rng: random.Random, end_ns: int) -> mesh_pb2.Digest:
    """About 1.2 kB: 12 of 40 fleet services (popular ones more often), 6 endpoint records."""
    keys = sorted(set(rng.choices(_SERVICES, weights=[1 / (i + 1) for i in range(40)], k=16)))[:12]
    rollups = [
        flow_pb2.Rollup(key=k, flows=rng.randrange(1, 500), useful=rng.randrange(1, 500),
                        failures={"timeout": rng.randrange(5)}, bytes_tx=rng.randrange(10**8),
                        bytes_rx=rng.randrange(10**8), retransmits=rng.randrange(100),
                        rtt_p50_us=rng.randrange(100, 5000), rtt_p95_us=rng.randrange(5000, 90000))
        for k in keys
    ]
    endpoints = [
        flow_pb2.Flow(src="10.0.0.1", sport=rng.randrange(32768, 61000), dst=f"10.0.{rng.randrange(256)}.1",
                      dport=443, proto=flow_pb2.TCP, direction=flow_pb2.OUTBOUND, bytes_tx=rng.randrange(10**7),
                      bytes_rx=rng.randrange(10**7), packets_tx=rng.randrange(10**4), packets_rx=rng.randrange(10**4),
                      outcome=flow_pb2.ESTABLISHED, start_ns=end_ns - rng.randrange(10 * 10**9), end_ns=end_ns)
        for _ in range(6)
    ]
    return mesh_pb2.Digest(period_start_ns=end_ns - int(SITE_PERIOD * 1e9), period_end_ns=end_ns,
                           by_destination=rollups, endpoints=endpoints)


@dataclass
class SiteResult:
    n: int
    sites: int = 0
    regions: int = 0
    aggregators: int = 0
    digest_bytes: int = 0
    aggregate_bytes: int = 0
    bytes_avg: float = 0.0
    bytes_member_max: float = 0.0
    bytes_agg_max: float = 0.0
    site_dissem: list[float] = field(default_factory=list)
    region_dissem: list[float] = field(default_factory=list)
    first_dead: list[float] = field(default_factory=list)
    all_dead: list[float] = field(default_factory=list)
    fp_suspicions: int = 0
    fp_dead: int = 0
    fp_seconds: float = 0.0
    fp_site_aggs: str = ""
    cpu: float = 0.0


def _site_cluster(n: int, seed: int, cfg: MeshConfig, loss: float = 0.0) -> tuple[SiteCluster, random.Random]:
    c = SiteCluster(seed=seed, config=cfg, site_config=SiteConfig(period=SITE_PERIOD), latency=LATENCY,
                    jitter=JITTER, loss=loss)
    c.bootstrap(n, _site_labels(n))
    rng = random.Random(seed)
    by_site: dict[str, list[str]] = {}
    for nid in c.ids:
        by_site.setdefault(c.nodes[nid].site, []).append(nid)
    for nid in c.ids:
        node = c.nodes[nid]
        mates = [x for x in by_site[node.site] if x != nid]
        peers = [*rng.sample(mates, min(2, len(mates))), c.ids[rng.randrange(n)]]
        node.validate = {p: c.addr[p] for p in peers if p != nid}
    c.digest_of = lambda _node, end_ns: _site_digest(rng, end_ns)
    c.start_periods()
    return c, rng


def _quantile_time(times: list[float], count: int) -> float:
    """The time by which ``count`` of the recorded times had happened (inf if fewer)."""
    if len(times) < count:
        return math.inf
    return sorted(times)[count - 1]


def bench_sites(n: int, seed: int, cfg: MeshConfig, periods: int, fp_window: float) -> SiteResult:
    cpu0 = time.process_time()
    res = SiteResult(n)
    c, _rng = _site_cluster(n, seed, cfg)
    res.sites = len({x.site for x in c.nodes.values()})
    res.regions = len({x.region for x in c.nodes.values()})
    site_size: dict[str, int] = {}
    for x in c.nodes.values():
        site_size[x.site] = site_size.get(x.site, 0) + 1
    decided: dict[tuple[str, str, int], list[float]] = {}

    def recorder(node_site: str) -> Callable[[mesh_pb2.GroupAggregate], None]:
        def on_decide(a: mesh_pb2.GroupAggregate) -> None:
            if a.level == "region" or a.group == node_site:
                decided.setdefault((a.level, a.group, a.period_end_ns), []).append(c.sched.wall_ns())
            res.aggregate_bytes = max(res.aggregate_bytes, a.ByteSize())
        return on_decide

    for x in c.nodes.values():
        x.on_decide = recorder(x.site)
    c.run(2 * SITE_PERIOD + 0.5)  # two periods: pools settle, aggregators have built once
    own = next(iter(c.nodes.values())).digests
    res.digest_bytes = max((len(s.payload) for per in own.values() for s, _d in per.values()), default=0)
    b0 = {nid: c.bytes_sent(nid) for nid in c.ids}
    window = periods * SITE_PERIOD
    c.run(window)
    aggs = {nid for nid, x in c.nodes.items() if x.pools["region"].membership is not None}
    res.aggregators = len(aggs)
    rates = {nid: (c.bytes_sent(nid) - b0[nid]) / window for nid in c.ids}
    res.bytes_avg = sum(rates.values()) / n
    res.bytes_member_max = max(r for nid, r in rates.items() if nid not in aggs)
    res.bytes_agg_max = max(rates[nid] for nid in aggs)
    c.run(5.0)  # the window's last period finishes disseminating
    for (level, group, end_ns), times in decided.items():
        if end_ns / 1e9 - c.sched.wall_ns() / 1e9 < -(window + 5.0) or (c.sched.wall_ns() - end_ns) < 5e9:
            continue
        want = math.ceil(0.9999 * (site_size[group] if level == "site" else n))
        t = (_quantile_time(times, want) - end_ns) / 1e9
        (res.site_dissem if level == "site" else res.region_dissem).append(t)

    # --- dead-member detection in the site: one member and one aggregator
    victims = [nid for nid in c.ids if nid not in aggs][:: max(1, n // 2)][:2] + sorted(aggs)[:1]
    for victim in victims:
        site = c.nodes[victim].site
        others = site_size[site] - 1
        want = math.ceil(0.9999 * others)
        c.crash(victim)
        start = c.sched.now()
        c.run(60.0, lambda v=victim: c.leaves_seen[v] >= 1)  # type: ignore[misc]
        res.first_dead.append(c.sched.now() - start if c.leaves_seen[victim] else math.inf)
        c.run(60.0, lambda v=victim, w=want: c.leaves_seen[v] >= w)  # type: ignore[misc]
        res.all_dead.append(c.sched.now() - start if c.leaves_seen[victim] >= want else math.inf)
        site_size[site] -= 1
    del c

    # --- false positives at 5 % loss
    c, _rng = _site_cluster(n, seed + 2, cfg, loss=0.05)
    decided_fp: list[int] = []
    for x in c.nodes.values():
        x.on_decide = lambda a, s=x.site: decided_fp.append(1) if a.level == "site" and a.group == s else None
    c.run(fp_window)
    for x in c.nodes.values():
        for pool in x.pools.values():
            m = pool.membership
            if m is not None:
                res.fp_suspicions += m.counters["suspicions"]
                res.fp_dead += m.counters["declared_dead"]
    res.fp_seconds = fp_window
    closed = int(fp_window // SITE_PERIOD) - 1
    res.fp_site_aggs = f"{len(decided_fp)}/{closed * n}"
    res.cpu = time.process_time() - cpu0
    return res


def main_sites(ns: argparse.Namespace, cfg: MeshConfig) -> int:
    print(f"config: sites of {SITE_SIZE}, ~sqrt(sites) regions, k={SiteConfig().aggregators} aggregators | probe "
          f"{cfg.probe_interval}s | gossip {cfg.gossip_interval}s fanout {cfg.gossip_nodes} | latency "
          f"{LATENCY * 1e3:.0f}+-{JITTER * 1e3:.0f} ms | export period {SITE_PERIOD:.0f}s | seed {ns.seed}")
    rows = []
    for n in (int(x) for x in ns.nodes.split(",")):
        r = bench_sites(n, ns.seed, cfg, periods=ns.periods, fp_window=ns.fp_window)
        rows.append(r)
        print(f"  N={n}: done in {r.cpu:.1f} s CPU", file=sys.stderr, flush=True)
    head = ("N", "sites/regions/aggs", "digest/agg B", "B/s/node avg", "B/s member max", "B/s aggregator max",
            "site agg 99.99% s (med/max)", "region agg 99.99% s (med/max)", "dead: first s", "dead: 99.99% of site s",
            "5% loss: susp. / false dead", "5% loss: site aggs", "CPU s")
    table = [
        (str(r.n), f"{r.sites}/{r.regions}/{r.aggregators}", f"{r.digest_bytes}/{r.aggregate_bytes}",
         f"{r.bytes_avg:.0f}", f"{r.bytes_member_max:.0f}", f"{r.bytes_agg_max:.0f}", _fmt(r.site_dissem),
         _fmt(r.region_dissem), _fmt(r.first_dead), _fmt(r.all_dead),
         f"{r.fp_suspicions} / {r.fp_dead} in {r.fp_seconds:.0f} s", r.fp_site_aggs, f"{r.cpu:.1f}")
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for t in table:
        print(" | ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    for r in rows:
        if r.n < 1000:
            continue
        for name, ok in (
            (f"<= 4 kB/s per node on average at N={r.n}", r.bytes_avg <= 4000),
            (f"<= 40 kB/s for an aggregator at N={r.n}", r.bytes_agg_max <= 40000),
            (f"site aggregate at 99.99 % of its site <= 5 s at N={r.n}", max(r.site_dissem) <= 5.0),
            (f"region aggregates at 99.99 % of nodes <= 5 s at N={r.n}", max(r.region_dissem) <= 5.0),
            (f"dead member detected in its site <= 10 s at N={r.n}", max(r.all_dead) <= 10.0),
            (f"no false dead under 5 % loss at N={r.n}", r.fp_dead == 0),
        ):
            print(f"goal: {name}: {'met' if ok else 'MISSED'}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", default="100,1000", help="fleet sizes, comma-separated")
    parser.add_argument("--seed", type=int, default=1)
    defaults = MeshConfig()
    parser.add_argument("--probe-interval", type=float, default=defaults.probe_interval,
                        help="seconds (the probe timeout is half of it)")
    parser.add_argument("--suspicion-mult", type=int, default=defaults.suspicion_mult)
    parser.add_argument("--sites", action="store_true", help="the hierarchical fleet (site aggregates)")
    parser.add_argument("--periods", type=int, default=3, help="--sites: export periods measured")
    parser.add_argument("--fp-window", type=float, default=30.0, help="--sites: seconds at 5 %% loss")
    ns = parser.parse_args()
    cfg = MeshConfig(probe_interval=ns.probe_interval, probe_timeout=ns.probe_interval / 2,
                     suspicion_mult=ns.suspicion_mult)
    if ns.sites:
        return main_sites(ns, cfg)
    print(f"config: probe {cfg.probe_interval}s timeout {cfg.probe_timeout}s indirect {cfg.indirect_checks} | "
          f"gossip {cfg.gossip_interval}s fanout {cfg.gossip_nodes} retransmit_mult {cfg.retransmit_mult} | "
          f"suspicion mult {cfg.suspicion_mult} max x{cfg.suspicion_max_timeout_mult} | push-pull "
          f"{cfg.push_pull_interval}s (scaled) | latency {LATENCY * 1e3:.0f}+-{JITTER * 1e3:.0f} ms | "
          f"export period {EXPORT_PERIOD:.0f}s | seed {ns.seed}")
    rows = []
    for n in (int(x) for x in ns.nodes.split(",")):
        window = 120.0 if n <= 200 else 10.0
        fp_window = 120.0 if n <= 200 else 20.0
        r = bench(n, ns.seed, cfg, window, fp_window)
        rows.append(r)
        print(f"  N={n}: done in {r.cpu:.1f} s CPU", file=sys.stderr)
    head = ("N", "digest B", "dissem. 99.99% s (med/max)", "B/s/node (pkt+stream)", "pkts/s/node",
            "dead: first s (med/max)", "dead: 99.99% s (med/max)", "5% loss: false susp. (marks) / false dead",
            "CPU s")
    table = [
        (str(r.n), str(r.digest_bytes), _fmt(r.dissemination),
         f"{r.bytes_per_node:.0f} ({r.packet_bytes_per_node:.0f}+{r.stream_bytes_per_node:.0f})",
         f"{r.packets_per_node:.1f}", _fmt(r.first_dead), _fmt(r.all_dead),
         f"{r.fp_refuted} ({r.fp_suspicions}) / {r.fp_dead} in {r.fp_seconds:.0f} s", f"{r.cpu:.1f}")
        for r in rows
    ]
    widths = [max(len(h), *(len(t[i]) for t in table)) for i, h in enumerate(head)]
    print(" | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    print("-+-".join("-" * w for w in widths))
    for t in table:
        print(" | ".join(v.ljust(w) for v, w in zip(t, widths, strict=True)))
    goals = []
    for r in rows:
        if r.n == 100:
            goals.append(("bandwidth <= 4 kB/s/node at N=100", r.bytes_per_node <= 4000))
        if r.n == 1000:
            goals.append(("dead detected <= 10 s at N=1000 (99.99% of nodes, max)", max(r.all_dead) <= 10.0))
            goals.append(("dissemination <= 2.2 s at N=1000 (max)", max(r.dissemination) <= 2.2))
    for name, ok in goals:
        print(f"goal: {name}: {'met' if ok else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
