"""The Health RPC's body over its default 15 minutes at 1,000 flows/s (issue 12, item 5), side by side for
two source trees on the same database: the tree given with ``--old`` and this one.

    .venv/bin/python bench/bench_health.py --dsts 1000,100000 --old /tmp/old-tree

The database is bench_store's generator (900,000 flows in 90 periods of 10 s, 20 % of them failed) with
the destinations drawn from ``--dsts`` distinct addresses (0: bench_store's own, nearly one a flow). Each
tree runs in a process of its own, alternately, three Health calls after one warm-up, median reported.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
S = 1_000_000_000
SECONDS = 900


def build(path: Path, dsts: int) -> None:
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_store

    from meshnode.store import Retention, Store

    make = bench_store.make_flows

    def make_flows(n: int, a: int, b: int, first: int, rng: random.Random) -> list:
        out = make(n, a, b, first, rng)
        if not dsts:
            return out
        return [r.replace(dst=f"10.{(h := rng.randrange(dsts)) >> 16 & 255}.{h >> 8 & 255}.{h & 255}") for r in out]

    bench_store.make_flows = make_flows
    store = Store(path, Retention(max_age_s=0, max_bytes=0))
    bench_store.fill(store, seconds=SECONDS, rate=1000, period_s=10, active=0, rng=random.Random(4))
    store.close()


def time_health(tree: str, db: str) -> None:
    sys.path.insert(0, tree)
    from meshnode.api import ObserverServicer, Selector
    from meshnode.store import Retention, Store

    store = Store(Path(db), Retention(max_age_s=0, max_bytes=0))
    end = 1_800_000_000 * S + SECONDS * S
    sv = ObserverServicer(store)
    sv._health(end - 900 * S, end, Selector(), None)
    times = []
    for _ in range(3):
        t = time.perf_counter()
        r = sv._health(end - 900 * S, end, Selector(), None)
        times.append(time.perf_counter() - t)
    print(f"{statistics.median(times) * 1000:.0f} {len(r.retries)} {r.host.attempts}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsts", default="1000,100000,0", help="distinct destinations per database, comma-separated")
    ap.add_argument("--old", help="another source tree (with its generated meshnode/v1) to time beside this one")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--_time", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_build", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._time:
        time_health(*args._time)
        return 0
    if args._build:
        build(Path(args._build[0]), int(args._build[1]))
        return 0
    trees = [("new", str(ROOT))] + ([("old", args.old)] if args.old else [])
    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        print(f"{'destinations':>12} {'tree':>5} {'Health ms (median of 3), each round':>40} {'retries':>8}")
        for dsts in (int(x) for x in args.dsts.split(",")):
            db = Path(tmp) / f"h{dsts}.db"
            subprocess.run([sys.executable, __file__, "--_build", str(db), str(dsts)], check=True)
            got: dict[str, list[str]] = {name: [] for name, _ in trees}
            retries = ""
            for _ in range(args.rounds):
                for name, tree in trees:
                    out = subprocess.run([sys.executable, __file__, "--_time", tree, str(db)], check=True,
                                         capture_output=True, text=True).stdout.split()
                    got[name].append(out[0])
                    retries = out[1]
            for name, _ in trees:
                print(f"{dsts or 'one a flow':>12} {name:>5} {' / '.join(got[name]):>40} {retries:>8}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
