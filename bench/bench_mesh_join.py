"""How long a late joiner takes to be listed by every member, simulated over many seeds.

A fleet of ``--nodes`` members forms, then one more node joins through the first member; the time until
the last member lists it is measured, once per seed (in-memory network, manual clock: repeatable and
independent of this machine). A joiner's Alive is sent a bounded number of times to random members, so a
member can miss every one; what then tells it is the joiner's own probe (or, at worst, its next push-pull,
every 30 s).

    .venv/bin/python -m bench.bench_mesh_join [--nodes 4] [--seeds 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshnode.mesh._sim import SimCluster


def spread(seed: int, nodes: int, limit: float = 60.0) -> float:
    """Seconds from the join until every member lists the joiner (``limit`` when some never did)."""
    c = SimCluster(seed=seed)
    c.build(nodes)
    c.run(30.0, c.converged)
    joiner = c.add(node_id="joiner")
    joiner.join([c.addr["n0"]])
    return c.run(limit, lambda: all(m.member("joiner") is not None for m in c.alive()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=4, help="members before the joiner")
    ap.add_argument("--seeds", type=int, default=200)
    args = ap.parse_args()
    took = sorted(spread(seed, args.nodes) for seed in range(args.seeds))

    def q(p: float) -> float:
        return took[min(len(took) - 1, int(p * len(took)))]

    slow = sum(1 for t in took if t > 3.0)
    print(f"{args.nodes} members + 1 joiner, {args.seeds} seeds: every member lists the joiner after "
          f"p50 {q(0.5):.2f} s, p99 {q(0.99):.2f} s, max {took[-1]:.2f} s; over 3 s in {slow} seeds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
