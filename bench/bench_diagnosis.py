"""Diagnosis benchmark: blame allocation over fleets of growing size (issue 8).

A fleet of N hosts in N/25 sites of 3 regions; every host talks to 12 destinations drawn from the fleet's
servers (one host in five of every site serves one port). One server is blackholed and one site's uplink loses packets
(each cross-site transaction through it has a problem with p = 0.6); 1 % background noise elsewhere. Every
host contributes what its digest would: counted transactions per (destination, kind), no processes.

Measured per fleet size, side by side in one run:

* the time of one ``blame`` over counted rows (what digests give) and over the same transactions one row
  per flow (what a node's own flows give), and their ratio;
* whether the two planted faults are the top two suspects, and what else was blamed.

    .venv/bin/python bench/bench_diagnosis.py [--hosts 100,1000] [--seed 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshnode.diagnosis import Transaction, blame

DESTS_PER_HOST = 12
FLOWS = (20, 80)


def fleet(n: int, rng: random.Random) -> tuple[list[Transaction], tuple[str, str], str]:
    """Counted transactions of a fleet of ``n`` hosts, the blackholed server and the lossy site."""
    sites = max(3, n // 25)
    hosts = [(f"h{i:04d}", f"10.{i // 250}.{i % 250}.1", f"s{i % sites}", f"r{(i % sites) % 3}") for i in range(n)]
    # one host in five of every site serves one port
    servers = [(h, (5432, 443, 6379)[i % 3]) for i, h in enumerate(hosts) if (i // sites) % 5 == 0]
    dead = servers[0][0][:2]
    lossy = f"r{1 % 3}/s1"
    out: list[Transaction] = []
    for name, _addr, site, region in hosts:
        for (sname, saddr, ssite, sregion), port in rng.sample(servers, min(DESTS_PER_HOST, len(servers))):
            if sname == name:
                continue
            flows = rng.randint(*FLOWS)
            cross = ssite != site and lossy in (f"{region}/{site}", f"{sregion}/{ssite}")
            bad = 0
            kind = "timeout"
            if sname == dead[0]:
                bad = flows
            elif cross:
                bad = sum(1 for _ in range(flows) if rng.random() < 0.6)
                kind = "retransmits"
            else:
                bad = sum(1 for _ in range(flows) if rng.random() < 0.01)
            common = dict(host=name, site=site, region=region, comm="", pid=0, dst=saddr, dport=port, service="",
                          dst_host=sname, dst_site=ssite, dst_region=sregion)
            if bad:
                out.append(Transaction(**common, problem=True, kind=kind, count=bad))  # type: ignore[arg-type]
            if flows - bad:
                out.append(Transaction(**common, problem=False, kind="ok", count=flows - bad))  # type: ignore[arg-type]
    return out, dead, lossy


def _time(fn: Callable[[list[Transaction]], object], arg: list[Transaction], reps: int = 3) -> float:
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn(arg)
        best = min(best, time.perf_counter() - t)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", default="100,1000", help="fleet sizes, comma-separated")
    ap.add_argument("--seed", type=int, default=1)
    ns = ap.parse_args()
    print(f"{'hosts':>6} {'rows':>8} {'flows':>9} {'counted':>9} {'per-flow':>9} {'ratio':>6}  top suspects")
    for n in (int(x) for x in ns.hosts.split(",")):
        rng = random.Random(ns.seed)
        counted, dead, lossy = fleet(n, rng)
        dead_port = next(t.dport for t in counted if t.dst == dead[1])
        flows = [dataclasses.replace(t, count=1) for t in counted for _ in range(t.count)]
        rng.shuffle(flows)
        report = blame(counted)
        t_counted = _time(blame, counted)
        t_flows = _time(blame, flows, reps=1)
        tops = [(s.kind, s.name) for s in report.suspects]
        # a server with one port in use: its service and its host are the same transactions (rule 3)
        planted = {("service", f"{dead[1]}:{dead_port}"), ("uplink", lossy)}
        found = "both planted faults on top" if set(tops[:2]) == planted else f"MISSED (planted {sorted(planted)})"
        print(f"{n:>6} {len(counted):>8} {len(flows):>9} {t_counted * 1000:>7.0f}ms {t_flows * 1000:>7.0f}ms "
              f"{t_flows / t_counted:>5.1f}x  {found}; {len(tops)} suspects: "
              + "; ".join(f"{k} {nm}" for k, nm in tops[:4]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
