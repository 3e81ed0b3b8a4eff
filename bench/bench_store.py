"""Store benchmark (issue 4): ingest rate, query latency over an hour of history, bytes per record, and the
per-node disk write rate at several export periods next to seed 002's Table 1.

    .venv/bin/python bench/bench_store.py            # query at 360 k rows (6 min at 1,000 flows/s)
    .venv/bin/python bench/bench_store.py --full     # and at 3.6 M rows (one hour at 1,000 flows/s)

Everything runs through the node's own code paths: ``Store.close_period`` (one transaction per period,
retention included) for writes, ``ObserverServicer._history`` (SQL pushdown + Python filters, the code the
Flows RPC runs) for queries. Disk writes are measured as the process's ``wchar`` in /proc/self/io (bytes
handed to write(2): WAL frames, checkpoints), so they include SQLite's page granularity, not just row bytes.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshnode._model import FlowRecord
from meshnode.api import ObserverServicer, Selector
from meshnode.store import FlowQuery, Retention, Store
from meshnode.v1 import flow_pb2

S = 1_000_000_000
T0 = 1_800_000_000 * S
COMMS = ["curl", "nginx", "postgres", "java", "python3", "sshd", "chrony", "apt", "node", "envoy"]
PORTS = [443, 443, 443, 80, 5432, 22, 123, 8080, 53, 6379]
OUTCOMES = ["established"] * 8 + ["refused", "timeout"]


def make_flows(n: int, t_start: int, t_end: int, first_id: int, rng: random.Random) -> list[FlowRecord]:
    """``n`` varied flows ending between t_start and t_end."""
    out = []
    step = max(1, (t_end - t_start) // max(n, 1))
    for i in range(n):
        k = rng.randrange(10)
        end = t_start + i * step
        out.append(FlowRecord(
            flow_id=first_id + i, src="10.0.0.1", sport=32768 + (first_id + i) % 28000,
            dst=f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}", dport=PORTS[k],
            proto="udp" if PORTS[k] in (53, 123) else "tcp", direction="outbound", pid=1000 + k,
            comm=COMMS[k], cgroup=f"/system.slice/{COMMS[k]}.service", cgroup_id=5000 + k, netns=4026531840,
            start_ns=end - rng.randrange(1, 5 * S), end_ns=end, bytes_tx=rng.randrange(100, 100_000),
            bytes_rx=rng.randrange(100, 10_000_000), packets_tx=rng.randrange(3, 100),
            packets_rx=rng.randrange(3, 10_000), outcome=OUTCOMES[rng.randrange(10)],
            retransmits=rng.randrange(3), srtt_us=rng.randrange(100, 80_000), min_rtt_us=90,
            max_rtt_us=90_000, cwnd=10, cwnd_min=10, cwnd_max=40, connect_us=rng.randrange(100, 5000),
        ))
    return out


def wchar() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    return 0


def fill(store: Store, seconds: int, rate: int, period_s: int, active: int, rng: random.Random) -> dict:
    """Write ``seconds`` of history at ``rate`` flows/s in periods of ``period_s`` (+ ``active`` interims)."""
    seq = store.open_period(T0)
    fid = 1
    rows = 0
    t_build = t_write = 0.0
    w0 = wchar()
    long_lived = make_flows(active, T0, T0 + 1, 10**12, rng)
    for p in range(seconds // period_s):
        a, b = T0 + p * period_s * S, T0 + (p + 1) * period_s * S
        t = time.perf_counter()
        batch = make_flows(rate * period_s, a, b, fid, rng)
        interims = [r.replace(kind="interim", end_ns=b, bytes_rx=r.bytes_rx + p) for r in long_lived]
        t_build += time.perf_counter() - t
        fid += len(batch)
        t = time.perf_counter()
        _, seq, _ = store.close_period(seq, b, batch, interims, "{}", next_start_ns=b, now_ns=b)
        t_write += time.perf_counter() - t
        rows += len(batch) + len(interims)
    return {"rows": rows, "write_s": t_write, "build_s": t_build, "wchar": wchar() - w0}


def bench_ingest(tmp: Path, rng: random.Random) -> dict:
    store = Store(tmp / "ingest.db", Retention(max_age_s=0, max_bytes=0))
    r = fill(store, seconds=300, rate=1000, period_s=10, active=0, rng=rng)  # 30 periods of 10,000 rows
    store.close()
    size = (tmp / "ingest.db").stat().st_size
    return {"rows": r["rows"], "rows_per_s": r["rows"] / r["write_s"], "bytes_per_row": size / r["rows"],
            "ms_per_period": 1000 * r["write_s"] / 30}


def bench_query(tmp: Path, seconds: int, rng: random.Random) -> tuple[dict, list[tuple[str, float, int]]]:
    path = tmp / f"query-{seconds}.db"
    store = Store(path, Retention(max_age_s=0, max_bytes=0))
    t = time.perf_counter()
    r = fill(store, seconds=seconds, rate=1000, period_s=10, active=0, rng=rng)
    fill_s = time.perf_counter() - t
    store.close()
    store = Store(path, Retention(max_age_s=0, max_bytes=0))
    size = path.stat().st_size
    servicer = ObserverServicer(store)
    end = T0 + seconds * S
    F = flow_pb2.FlowFilter
    cases = [
        ("last 5 min, dport=443, 1000 rows", FlowQuery(since_ns=end - 300 * S), Selector.from_request(
            [F(dport=[443])], []), 1000),
        ("whole range, comm=postgres, 1000 rows", FlowQuery(),
         Selector.from_request([F(comm=["postgres"])], []), 1000),
        ("last 1 min, dst in 10.1.0.0/16 minus refused, 1000", FlowQuery(since_ns=end - 60 * S),
         Selector.from_request([F(dst=["10.1.0.0/16"])], [F(outcome=[flow_pb2.REFUSED])]), 1000),
        ("10 s window mid-range, all rows", FlowQuery(since_ns=end - seconds // 2 * S,
                                                       until_ns=end - (seconds // 2 - 10) * S),
         Selector(), 1_000_000),
        ("page 50 of 1000 (page_token), no filter", None, Selector(), 1000),
        ("whole range, timeout to :5432 (rare), 1000", FlowQuery(), Selector.from_request(
            [F(dport=[5432], outcome=[flow_pb2.TIMEOUT])], []), 1000),
    ]
    results = []
    for label, window in (("Health RPC body, last 5 min (300 k flows)", 300),
                          ("Health RPC body, last 15 min (default range)", 900)):
        if window > seconds:
            continue
        times = []
        for _ in range(3):
            t = time.perf_counter()
            resp = servicer._health(end - window * S, end, Selector(), None)
            times.append(time.perf_counter() - t)
        results.append((label, statistics.median(times) * 1000, resp.host.attempts))
    for name, q, sel, limit in cases:
        if q is None:  # continue after the 49,000th record of the range, as a page token would
            with store.reader() as conn:
                key = next(iter(store.query_flows(FlowQuery(since_ns=end - 600 * S), conn)), None)
            q = FlowQuery(since_ns=end - 600 * S)
            page = servicer._history(q, sel, 49_000, None)
            key = page.items[-1].key if page.items else key
            q = FlowQuery(since_ns=end - 600 * S, after=key)
        times = []
        n = 0
        for _ in range(5):
            t = time.perf_counter()
            page = servicer._history(q, sel, limit, None)
            times.append(time.perf_counter() - t)
            n = len(page.items)
        results.append((name, statistics.median(times) * 1000, n))
    store.close()
    return {"rows": r["rows"], "fill_s": fill_s, "bytes": size}, results


# seed 002, Table 1: per-endsystem write rate (kB/s), mean and maximum, by export timer (s)
TABLE1 = {1: (1.445, 2081.00), 5: (0.310, 418.00), 10: (0.168, 211.00), 30: (0.073, 71.70),
          60: (0.049, 37.50), 300: (0.022, 12.10), 900: (0.016, 5.40), 1800: (0.016, 5.40)}


def bench_write_rate(tmp: Path, rng: random.Random) -> list[tuple[int, str, float, float, float]]:
    """kB/s written per node for two workloads at 1, 10, 60, 300 s periods."""
    workloads = [("typical: 2 flows/s, 20 active", 2, 20, 1800),
                 ("busy: 1000 flows/s, 200 active", 1000, 200, 600)]
    out = []
    for period in (1, 10, 60, 300):
        for name, rate, active, seconds in workloads:
            path = tmp / f"rate-{period}-{rate}.db"
            store = Store(path, Retention(max_age_s=0, max_bytes=0))
            r = fill(store, seconds=seconds, rate=rate, period_s=period, active=active, rng=rng)
            store.close()
            size = path.stat().st_size
            out.append((period, name, r["wchar"] / seconds / 1000, size / seconds / 1000,
                        (rate * period + active) / period))
            path.unlink()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true",
                    help="also query at 3.6 M rows (one hour at 1,000 flows/s)")
    ap.add_argument("--dir", help="scratch directory (default: a temporary directory under /var/tmp)")
    args = ap.parse_args()
    rng = random.Random(4)
    tmp = Path(tempfile.mkdtemp(prefix="bench-store-", dir=args.dir or "/var/tmp"))
    try:
        print(f"python {sys.version.split()[0]}, sqlite {__import__('sqlite3').sqlite_version}\n")
        ing = bench_ingest(tmp, rng)
        print("== ingest (30 periods x 10,000 rows, one transaction each; goal >= 50,000 rows/s)")
        print(f"rows/s              {ing['rows_per_s']:>12,.0f}")
        print(f"ms per 10k period   {ing['ms_per_period']:>12.1f}")
        print(f"disk bytes/record   {ing['bytes_per_row']:>12.1f}   (database file / rows, with indexes)\n")
        scales = [360] + ([3600] if args.full else [])
        for seconds in scales:
            info, res = bench_query(tmp, seconds, rng)
            print(f"== query over {info['rows']:,} rows ({seconds} s at 1,000 flows/s; "
                  f"{info['bytes'] / info['rows']:.1f} B/row on disk; fill {info['fill_s']:.1f} s); "
                  "goal <= 200 ms")
            print(f"{'query':<52} {'median ms':>10} {'rows':>9}")
            for name, ms, n in res:
                print(f"{name:<52} {ms:>10.1f} {n:>9,}")
            print()
        print("== write rate per node vs seed 002 Table 1 (kB/s)")
        print(f"{'period s':>8}  {'workload':<32} {'written':>9} {'growth':>9} {'rec/s':>8}"
              f"   {'T1 mean':>8} {'T1 max':>8}")
        for period, name, written, growth, recs in bench_write_rate(tmp, rng):
            mean, mx = TABLE1[period]
            print(f"{period:>8}  {name:<32} {written:>9.2f} {growth:>9.2f} {recs:>8.1f}"
                  f"   {mean:>8.3f} {mx:>8.2f}")
        print("\nwritten = bytes handed to write(2) per second (WAL frames + checkpoints);"
              " growth = database file growth per second.")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
