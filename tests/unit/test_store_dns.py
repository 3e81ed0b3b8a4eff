"""DNS transactions in the store: a chunk per period in the period's transaction, filters, retention by age
and size, and a SIGKILL that loses no committed transaction."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from meshnode._dns import DnsBatch
from meshnode._exceptions import StoreError
from meshnode.sensor import DnsRecord
from meshnode.store import DnsQuery, Retention, Store
from tests.unit._flows import T0, S, flow


def dns(i: int, *, query: str = "", rcode: str = "NOERROR", server: str = "10.0.0.53", time_ns: int = 0,
        **kw: Any) -> DnsRecord:
    fields: dict[str, Any] = dict(
        time_ns=time_ns or T0 + i, server=server, query=query or f"n{i}.example.com", qtype="A", rcode=rcode,
        answers=1, timed=1, latency_us=100 + i, latency_max_us=100 + i, addresses=0 if rcode != "NOERROR" else 1,
        pid=1000 + i, comm="dig", netns=2**64 - 3, tcp=False)
    fields.update(kw)
    return DnsRecord(**fields)


def batch(records: list[DnsRecord]) -> DnsBatch:
    return DnsBatch.from_records(records)


def read(store: Store, q: DnsQuery | None = None, limit: int = 1000) -> tuple[list[dict[str, Any]], int]:
    with store.reader() as conn:
        got, matched = store.query_dns(q or DnsQuery(), conn, limit=limit)
    return got.rows(), matched


def test_a_period_stores_its_transactions_with_every_field(tmp_path: Path) -> None:
    recs = [dns(1, query="web.example.com", tcp=True, port=5353),
            dns(2, query="gone.example.com", rcode="NXDOMAIN", pid=0, comm=""),
            dns(3, query="", rcode="RCODE11", qtype="TYPE99")]
    with Store(tmp_path / "m.db") as store:
        seq = store.open_period(T0)
        store.close_period(seq, T0 + S, [flow(1)], [], "{}", dns=batch(recs))
        rows, matched = read(store)
        assert matched == 3
        assert rows == [
            {"time_ns": r.time_ns, "server": r.server, "port": r.port, "query": r.query, "qtype": r.qtype,
             "rcode": r.rcode, "answers": r.answers, "timed": r.timed, "latency_us": r.latency_us,
             "latency_max_us": r.latency_max_us, "addresses": r.addresses, "pid": r.pid, "comm": r.comm,
             "netns": r.netns, "tcp": r.tcp, "failed": r.failed} for r in recs]
        assert [r["failed"] for r in rows] == [False, True, False]
        assert rows[0]["port"] == 5353 and rows[0]["tcp"] is True and rows[0]["netns"] == 2**64 - 3
        stats = store.stats()
        assert (stats.dns_rows, stats.dns_evictions) == (3, 0)


def test_filters_are_anded_and_values_ored_and_the_newest_are_kept(tmp_path: Path) -> None:
    recs = [dns(1, query="a.example.com"), dns(2, query="b.example.com", rcode="SERVFAIL", server="10.0.0.54"),
            dns(3, query="example.com", rcode="NXDOMAIN"), dns(4, query="other.net", rcode="REFUSED"),
            dns(5, query="deep.a.example.com", rcode="SERVFAIL")]
    with Store(tmp_path / "m.db") as store:
        seq = store.open_period(T0)
        _, seq, _ = store.close_period(seq, T0 + S, [], [], "{}", dns=batch(recs[:3]), next_start_ns=T0 + S)
        store.close_period(seq, T0 + 2 * S, [], [], "{}", dns=batch(recs[3:]))

        def names(q: DnsQuery, limit: int = 1000) -> tuple[list[str], int]:
            rows, matched = read(store, q, limit)
            return [r["query"] for r in rows], matched

        assert names(DnsQuery(names=["*.example.com"])) == (
            ["a.example.com", "b.example.com", "deep.a.example.com"], 3)
        assert names(DnsQuery(names=["example.com", "other.net."])) == (["example.com", "other.net"], 2)
        assert names(DnsQuery(rcodes=["SERVFAIL", "REFUSED"])) == (
            ["b.example.com", "other.net", "deep.a.example.com"], 3)
        assert names(DnsQuery(failed_only=True, servers=["10.0.0.53"])) == (
            ["example.com", "other.net", "deep.a.example.com"], 3)
        assert names(DnsQuery(since_ns=T0 + 2, until_ns=T0 + 4)) == (
            ["b.example.com", "example.com", "other.net"], 3)
        assert names(DnsQuery(failed_only=True), limit=2) == (["other.net", "deep.a.example.com"], 4)
        assert names(DnsQuery(names=["nothing.example"])) == ([], 0)


def test_a_failed_period_write_stores_none_of_its_transactions(tmp_path: Path) -> None:
    with Store(tmp_path / "m.db") as store:
        seq = store.open_period(T0)
        store.close_period(seq, T0 + S, [], [], "{}", dns=batch([dns(1)]))
        with pytest.raises(StoreError, match="not open"):
            store.close_period(seq, T0 + 2 * S, [], [], "{}", dns=batch([dns(2), dns(3)]))
        assert read(store)[1] == 1


def test_retention_by_age_cuts_transactions_and_counts_them(tmp_path: Path) -> None:
    with Store(tmp_path / "m.db", Retention(max_age_s=5.0, max_bytes=0)) as store:
        seq = store.open_period(T0)
        recs = [dns(i, time_ns=T0 + i * S) for i in range(1, 11)]
        _, _, evicted = store.close_period(seq, T0 + 10 * S, [], [], "", now_ns=T0 + 10 * S, dns=batch(recs))
        # the cutoff is T0 + 5 s: transactions 1..4 are older
        assert evicted == 4
        rows, _ = read(store)
        assert [r["query"] for r in rows] == [f"n{i}.example.com" for i in range(5, 11)]
        stats = store.stats()
        assert (stats.dns_rows, stats.dns_evictions, stats.evictions) == (6, 4, 4)


def test_retention_by_size_evicts_the_oldest_periods_dns_too(tmp_path: Path) -> None:
    limit = 256 * 1024
    with Store(tmp_path / "m.db", Retention(max_age_s=0, max_bytes=limit)) as store:
        seq = store.open_period(T0)
        fid = 0
        for p in range(12):
            flows = [flow(fid + i, comm=f"proc-{p}", pid=fid + i, bytes_tx=fid + i, cgroup=f"/c{i}")
                     for i in range(1, 1001)]
            answers = [dns(fid + i, query=f"q{p}-{i}.example.com", time_ns=T0 + p * S + i) for i in range(1, 51)]
            fid += 1000
            _, seq, _ = store.close_period(seq, T0 + (p + 1) * S, flows, [], "", next_start_ns=T0 + (p + 1) * S,
                                          dns=batch(answers))
            assert store._live_bytes() <= limit
        stats = store.stats()
        rows, matched = read(store, limit=10**6)
        assert stats.dns_evictions > 0 and stats.dns_rows == matched == len(rows) == 600 - stats.dns_evictions
        with store.reader() as conn:
            oldest_flow_period = conn.execute("SELECT MIN(period) FROM chunks").fetchone()[0]
            oldest_dns_period = conn.execute("SELECT MIN(period) FROM dns_chunks").fetchone()[0]
        assert oldest_dns_period == oldest_flow_period  # DNS goes with its period's flows, oldest first
        assert rows[-1]["query"] == "q11-50.example.com"


def test_dns_alone_is_bounded_by_size(tmp_path: Path) -> None:
    limit = 96 * 1024
    with Store(tmp_path / "m.db", Retention(max_age_s=0, max_bytes=limit)) as store:
        seq = store.open_period(T0)
        for p in range(20):
            answers = [dns(p * 1000 + i, query=f"q{p}-{i}.example.com", comm=f"c{i}", time_ns=T0 + p * S + i)
                       for i in range(1, 301)]
            _, seq, _ = store.close_period(seq, T0 + (p + 1) * S, [], [], "", next_start_ns=T0 + (p + 1) * S,
                                          dns=batch(answers))
            assert store._live_bytes() <= limit
        stats = store.stats()
        assert stats.dns_evictions > 0 and stats.dns_rows + stats.dns_evictions == 6000
        rows, _ = read(store, limit=10**6)
        assert rows[-1]["query"] == "q19-300.example.com" and np.all(np.diff([r["time_ns"] for r in rows]) > 0)


_WRITER = textwrap.dedent("""
    import sys, time
    from meshnode._dns import DnsBatch
    from meshnode.store import Store
    from tests.unit._flows import T0, S
    from tests.unit.test_store_dns import dns
    store = Store(sys.argv[1])
    seq = store.open_period(T0)
    n = p = 0
    while True:
        answers = DnsBatch.from_records([dns(n + i, time_ns=T0 + n + i) for i in range(1, 101)])
        n += 100
        p += 1
        _, seq, _ = store.close_period(seq, T0 + p * S, [], [], "{}", next_start_ns=T0 + p * S, dns=answers)
        print(p, n, flush=True)
        if p >= 5:
            time.sleep(0.002)  # the kill lands mid-period or mid-transaction
""")


def test_sigkill_loses_no_committed_transaction(tmp_path: Path) -> None:
    path = tmp_path / "m.db"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert proc.stdout is not None
    reported = 0
    for line in proc.stdout:
        reported = int(line.split()[1])
        if int(line.split()[0]) >= 8:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    with Store(path) as store:
        rows, matched = read(store, limit=10**6)
        pids = [r["pid"] - 1000 for r in rows]
        assert matched >= reported and matched % 100 == 0, "lost or torn periods"
        assert pids == list(range(1, matched + 1))
        assert store.recovered_incomplete == 1
