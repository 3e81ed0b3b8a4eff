"""In-process cost per flow of each stage of the node's data plane (issue 12), and the store's answers.

    .venv/bin/python -m bench.bench_node_stages [--flows 10000] [--periods 90]

Stages, on a churn-like period (half outbound, half inbound loopback flows of one process) through the fake
ring of ``tests/_support/sensor.py`` (no kernel needed): the sensor's poll (ring records -> one columnar
batch), the summary's rollups (``PeriodBuilder.build``), the store's period write (``Store.close_period``),
each in steady state (the first run, which imports and warms, is left out). Then the store on
``bench_store_engines``' generator (varied flows: many distinct ports, processes and destinations):
``--periods`` periods of 10,000 flows written, the three Health group-bys over all of them, and 1,000-row
pages with a common, a rare and no filter. Prints microseconds per flow and milliseconds per query.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_store_engines import make_period  # noqa: E402
from meshnode._batch import FlowBatch  # noqa: E402
from meshnode.daemon._node import _as_kind  # noqa: E402
from meshnode.probes import _records as rec  # noqa: E402
from meshnode.store import FlowQuery, Store  # noqa: E402
from meshnode.summary import PeriodBuilder  # noqa: E402
from tests._support.sensor import fake_sensor, raw_event  # noqa: E402


def churn_records(n: int) -> list[tuple[object, ...]]:
    """``n`` ring records of a loopback churn: each connection's two ends (outbound, then inbound)."""
    pid, out = os.getpid(), []
    for i in range(n // 2):
        port = 40000 + i % 20000
        out.append(raw_event(cookie=2 * i + 1, src="127.0.0.1", dst="127.0.0.1", sport=port, dport=8080, pid=pid,
                             comm=b"python3"))
        out.append(raw_event(cookie=2 * i + 2, src="127.0.0.1", dst="127.0.0.1", sport=8080, dport=port, pid=pid,
                             comm=b"python3", flags=rec.F_INBOUND))
    return out


def stages(n: int, tmp: Path, runs: int = 4) -> None:
    raws = churn_records(n)
    polls, builds, writes = [], [], []
    store = Store(tmp / "stages.db")
    for k in range(runs):
        sensor = fake_sensor(tmp, raws)
        t = time.perf_counter()
        ended = sensor.poll().ended
        polls.append(time.perf_counter() - t)
        finals = _as_kind(ended, "final")
        t = time.perf_counter()
        PeriodBuilder("n").build(1, 0, 1, finals, FlowBatch.empty())
        builds.append(time.perf_counter() - t)
        seq = store.open_period(k)
        t = time.perf_counter()
        store.close_period(seq, 10 + k, finals, FlowBatch.empty())
        writes.append(time.perf_counter() - t)
    store.close()
    print(f"stages, {n} churn flows a period, us a flow (median of {runs - 1} runs after the first):")
    for name, times in (("poll (ring -> batch)", polls), ("summary (rollups)", builds), ("store write", writes)):
        print(f"  {name:24s} {statistics.median(times[1:]) / n * 1e6:6.2f}")


def store_queries(periods: int, tmp: Path, per_period: int = 10_000) -> None:
    store = Store(tmp / "queries.db")
    seq = store.open_period(0)
    spent = 0.0
    for p in range(periods):
        batch = make_period(p, per_period)
        end = int(batch["end_ns"].max()) + 1
        t = time.perf_counter()
        _, seq, _ = store.close_period(seq, end, batch, [], "", next_start_ns=end)
        spent += time.perf_counter() - t
    flows = periods * per_period
    print(f"store, {flows} varied flows in {periods} periods: write {spent / flows * 1e6:.2f} us a flow, "
          f"{store.stats().bytes / flows:.0f} B a flow on disk")
    since, until = int(make_period(0, 10)["start_ns"].min()), int(make_period(periods - 1, 10)["end_ns"].max())
    for _ in range(2):
        t = time.perf_counter()
        with store.reader() as conn:
            for group in (("comm", "pid"), ("dst", "dport"), ("period",)):
                store.count_outcomes(FlowQuery(since, until), group, conn, top=100)
        took = time.perf_counter() - t
    print(f"  Health's three group-bys over all {flows} flows: {took * 1e3:.0f} ms (second run)")
    rare = make_period(periods - 1, 1000)["dst"][7]
    for label, equals in (("dport=5432", {"dport": [5432]}), (f"dst={rare}", {"dst": [rare]}), ("no filter", None)):
        t = time.perf_counter()
        got = 0
        with store.reader() as conn:
            for _ in store.query_rows(FlowQuery(0, 0, equals=equals), conn):
                got += 1
                if got == 1000:
                    break
        print(f"  1,000 rows from the start, {label}: {(time.perf_counter() - t) * 1e3:.0f} ms ({got} rows)")
    store.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=10_000, help="churn flows a period for the stages")
    ap.add_argument("--periods", type=int, default=90, help="periods of 10,000 varied flows for the store")
    ns = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        stages(ns.flows, Path(d))
        store_queries(ns.periods, Path(d))
    return 0


if __name__ == "__main__":
    sys.exit(main())
