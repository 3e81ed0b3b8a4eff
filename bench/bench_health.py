"""The Health RPC's body over its default 15 minutes at 1,000 flows/s, and 1,000-record Flows pages over an
hour (3.6 M flows) (issue 12, item 5), side by side for two source trees: the tree given with ``--old``
and this one.

    .venv/bin/python bench/bench_health.py --dsts 1000,100000,0 --rounds 2 --old /tmp/old-tree
    .venv/bin/python bench/bench_health.py --dsts "" --history --rounds 2 --old /tmp/old-tree

The Health database is bench_store's generator (900,000 flows in 90 periods of 10 s, 20 % of them failed)
with the destinations drawn from ``--dsts`` distinct addresses (0: bench_store's own, nearly one a flow);
``--history`` adds bench_store's database of 3,600 s (3.6 M flows) and times the Flows RPC's history read
(``HistoryReader``: the first 1,000 records of a query, in 1,000-record responses) for bench_store's
cases. Each tree builds its own database with its own store code (an older store cannot open a newer
schema) from the same generator and seed, and is timed in a process of its own, alternately: three calls
after one warm-up for Health, five for a page, median reported as wall ms and CPU ms (the process's CPU
time: on a shared machine, less noisy than wall time).
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
T0 = 1_800_000_000 * S
SECONDS = 900
HISTORY_SECONDS = 3600


def build(path: Path, dsts: int, seconds: int, tree: str) -> None:
    """A database of ``seconds`` at 1,000 flows/s, written by ``tree``'s store (bench_store's generator)."""
    sys.path.insert(0, tree)
    # the tree's package first: bench_store puts this tree on the path, and a package is imported once
    import meshnode.api

    sys.path.insert(0, str(ROOT / "bench"))
    import bench_store

    from meshnode.store import Retention, Store

    assert Path(meshnode.__file__).resolve().is_relative_to(Path(tree).resolve()), meshnode.__file__
    make = bench_store.make_flows

    def make_flows(n: int, a: int, b: int, first: int, rng: random.Random) -> list:
        out = make(n, a, b, first, rng)
        if not dsts:
            return out
        return [r.replace(dst=f"10.{(h := rng.randrange(dsts)) >> 16 & 255}.{h >> 8 & 255}.{h & 255}") for r in out]

    bench_store.make_flows = make_flows
    store = Store(path, Retention(max_age_s=0, max_bytes=0))
    bench_store.fill(store, seconds=seconds, rate=1000, period_s=10, active=0, rng=random.Random(4))
    store.close()


def _timed(call: object, n: int) -> tuple[float, float, object]:
    """Median wall and CPU ms of ``n`` calls, and the last result."""
    walls, cpus = [], []
    got = None
    for _ in range(n):
        w, c = time.perf_counter(), time.process_time()
        got = call()  # type: ignore[operator]
        cpus.append(time.process_time() - c)
        walls.append(time.perf_counter() - w)
    return statistics.median(walls) * 1000, statistics.median(cpus) * 1000, got


def time_health(tree: str, db: str) -> None:
    sys.path.insert(0, tree)
    from meshnode.api import ObserverServicer, Selector
    from meshnode.store import Retention, Store

    store = Store(Path(db), Retention(max_age_s=0, max_bytes=0))
    end = T0 + SECONDS * S
    sv = ObserverServicer(store)
    sv._health(end - 900 * S, end, Selector(), None)
    wall, cpu, r = _timed(lambda: sv._health(end - 900 * S, end, Selector(), None), 3)
    print(f"{wall:.0f} {cpu:.0f} {len(r.retries)} {r.host.attempts}")  # type: ignore[attr-defined]


def history_cases() -> list[tuple[str, dict, list, list, bool]]:
    """bench_store's page cases: (label, FlowQuery fields relative to the end, allow, deny, continue)."""
    return [
        ("last 5 min, dport=443", {"since": 300}, [{"dport": [443]}], [], False),
        ("whole range, comm=postgres", {}, [{"comm": ["postgres"]}], [], False),
        ("last 1 min, dst 10.1.0.0/16 minus refused", {"since": 60}, [{"dst": ["10.1.0.0/16"]}],
         [{"outcome": [2]}], False),
        ("page 50 of the last 10 min, no filter", {"since": 600}, [], [], True),
        ("whole range, timeout to :5432 (rare)", {}, [{"dport": [5432], "outcome": [3]}], [], False),
        ("newest 10 s, no filter", {"since": 10}, [], [], False),
    ]


def time_history(tree: str, db: str) -> None:
    sys.path.insert(0, tree)
    from meshnode.api import Selector
    from meshnode.api._flowstream import HistoryReader
    from meshnode.store import FlowQuery, Retention, Store
    from meshnode.v1 import flow_pb2

    store = Store(Path(db), Retention(max_age_s=0, max_bytes=0))
    end = T0 + HISTORY_SECONDS * S
    for label, q, allow, deny, cont in history_cases():
        sel = Selector.from_request([flow_pb2.FlowFilter(**f) for f in allow],
                                    [flow_pb2.FlowFilter(**f) for f in deny])
        query = sel.query(FlowQuery(since_ns=end - q["since"] * S if "since" in q else 0))
        if cont:  # after the 49,000th record, as a page token would continue
            with store.reader() as conn:
                for n, sf in enumerate(store.query_flows(query, conn)):
                    if n == 48_999:
                        query = sel.query(FlowQuery(since_ns=query.since_ns, after=sf.key))
                        break

        def page(query: FlowQuery = query) -> int:
            reader = HistoryReader(store, query, 1000, 1000, None, lambda key: "")
            return sum(len(r.flows) for r in reader.responses())

        page()
        wall, cpu, n = _timed(page, 5)
        print(f"{label}|{wall:.1f}|{cpu:.1f}|{n}")
    store.close()


def _build(tree: str, db: Path, dsts: int, seconds: int) -> None:
    subprocess.run([sys.executable, __file__, "--_build", str(db), str(dsts), str(seconds), tree], check=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dsts", default="1000,100000,0", help="distinct destinations per database, comma-separated")
    ap.add_argument("--history", action="store_true", help="also time 1,000-record Flows pages over 3.6 M flows")
    ap.add_argument("--old", help="another source tree (with its generated meshnode/v1) to time beside this one")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--_time", nargs=3, help=argparse.SUPPRESS)
    ap.add_argument("--_build", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._time:
        kind, tree, db = args._time
        (time_health if kind == "health" else time_history)(tree, db)
        return 0
    if args._build:
        build(Path(args._build[0]), int(args._build[1]), int(args._build[2]), args._build[3])
        return 0
    trees = [("new", str(ROOT))] + ([("old", str(Path(args.old).resolve()))] if args.old else [])

    def run(kind: str, tree: str, db: Path) -> str:
        return subprocess.run([sys.executable, __file__, "--_time", kind, tree, str(db)], check=True,
                              capture_output=True, text=True).stdout

    with tempfile.TemporaryDirectory(dir="/var/tmp") as tmp:
        if args.dsts:
            print(f"Health, {SECONDS} s at 1,000 flows/s; median of 3 calls per round, wall / CPU ms")
            print(f"{'destinations':>12} {'tree':>5} {'wall ms, each round':>24} {'CPU ms, each round':>24}"
                  f" {'retries':>8}")
        for dsts in (int(x) for x in args.dsts.split(",") if x):
            dbs = {name: Path(tmp) / f"h{dsts}-{name}.db" for name, _ in trees}
            for name, tree in trees:
                _build(tree, dbs[name], dsts, SECONDS)
            got: dict[str, list[list[str]]] = {name: [] for name, _ in trees}
            for _ in range(args.rounds):
                for name, tree in trees:
                    got[name].append(run("health", tree, dbs[name]).split())
            for name, _ in trees:
                walls = " / ".join(r[0] for r in got[name])
                cpus = " / ".join(r[1] for r in got[name])
                retries = {r[2] for r in got[name]}
                print(f"{dsts or 'one a flow':>12} {name:>5} {walls:>24} {cpus:>24} {','.join(retries):>8}")
            for db in dbs.values():
                db.unlink()
        if args.history:
            dbs = {name: Path(tmp) / f"history-{name}.db" for name, _ in trees}
            for name, tree in trees:
                _build(tree, dbs[name], 0, HISTORY_SECONDS)
            pages: dict[str, list[list[list[str]]]] = {name: [] for name, _ in trees}
            for _ in range(args.rounds):
                for name, tree in trees:
                    pages[name].append([line.split("|") for line in run("history", tree, dbs[name]).splitlines()])
            print(f"\nFlows history pages over {HISTORY_SECONDS * 1000:,} flows: first 1,000 records, median of 5,"
                  " wall / CPU ms per round")
            for i, (label, *_rest) in enumerate(history_cases()):
                for name, _ in trees:
                    cells = " | ".join(f"{r[i][1]} / {r[i][2]}" for r in pages[name])
                    print(f"{label:<44} {name:>4} {cells}  ({pages[name][0][i][3]} records)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
