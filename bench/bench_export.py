"""Export cost per 10,000 flows: CPU seconds of the exporter's thread and bytes on the wire.

    .venv/bin/python bench/bench_export.py --clickhouse            # 5 periods of 10,000 flows
    .venv/bin/python bench/bench_export.py --clickhouse --periods 10 --flows 20000

``--clickhouse`` starts a private clickhouse-server (Debian's, on free loopback ports, as the tests do) and
runs the node's ``ClickHouseExporter`` against it through a byte-counting TCP proxy on 127.0.0.1. Two
phases, each over the same periods:

* spool only (the server is away): what every period costs even while ClickHouse is unreachable: encode
  the columns, compress, write and fsync one spool file;
* send (the server is back): what draining costs: read the spool file, decode, INSERT over the native
  protocol (clickhouse-driver, no compression), remove the file.

CPU is ``time.thread_time()`` of the exporter's thread (the event loop's share, handing a period over, is
timed separately). Bytes are counted by the proxy in each direction. The flows vary in every field, as a
busy host's do (many destinations, processes, ports), so compression is not flattered.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshnode._batch import FlowBatch
from meshnode._model import FlowRecord
from meshnode.export import ClickHouseExporter, parse_clickhouse_url
from tests._support.clickhouse import ClickHouseServer

S = 1_000_000_000


class CountingProxy:
    """A TCP proxy on 127.0.0.1 to ``port`` that counts the bytes it forwards each way."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.up = 0
        self.down = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target))
            except OSError:
                client.close()
                continue
            threading.Thread(target=self._pipe, args=(client, server, "up"), daemon=True).start()
            threading.Thread(target=self._pipe, args=(server, client, "down"), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, way: str) -> None:
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                setattr(self, way, getattr(self, way) + len(data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)


@dataclass
class Summary:
    period_end_ns: int


def period(p: int, n: int, rng: random.Random) -> FlowBatch:
    t0 = 1_765_000_000 * S + p * 10 * S
    recs = []
    for i in range(n):
        end = t0 + rng.randrange(10 * S)
        recs.append(FlowRecord(
            flow_id=p * n + i, src="10.0.0.1", sport=rng.randrange(32768, 61000),
            dst=f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            dport=rng.choice((443, 80, 5432, 6379, 53, 8080, 9092)), proto=rng.choice(("tcp", "tcp", "tcp", "udp")),
            direction=rng.choice(("outbound", "outbound", "inbound")), pid=rng.randrange(1, 50000),
            comm=rng.choice(("nginx", "postgres", "curl", "java", "python3", "envoy", "redis-server")),
            cgroup=f"/system.slice/app-{rng.randrange(40)}.service", netns=4026531840,
            start_ns=end - rng.randrange(30 * S), end_ns=end, bytes_tx=rng.randrange(1 << 24),
            bytes_rx=rng.randrange(1 << 24), packets_tx=rng.randrange(20000), packets_rx=rng.randrange(20000),
            outcome=rng.choice(("established",) * 8 + ("refused", "timeout")), retransmits=rng.randrange(5),
            srtt_us=rng.randrange(50, 200000), min_rtt_us=rng.randrange(30, 100000), cwnd=rng.randrange(10, 500),
            limited_by=rng.choice(("app", "receiver_window", "congestion")), service=rng.choice(("https", "http", "")),
            connect_us=rng.randrange(50, 50000), kind="final"))
    return FlowBatch.from_records(recs)


def wait_for(cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise SystemExit("timed out")
        time.sleep(0.05)


def bench_clickhouse(periods: int, flows: int) -> None:
    rng = random.Random(14)
    batches = [period(p, flows, rng) for p in range(periods)]
    with tempfile.TemporaryDirectory() as tmp:
        ch = ClickHouseServer()
        try:
            ch.start()
            proxy = CountingProxy(ch.tcp_port)
            url = f"clickhouse://127.0.0.1:{proxy.port}/meshnode"
            ch.stop()  # phase 1: the server is away

            async def run() -> None:
                exporter = ClickHouseExporter(parse_clickhouse_url(url), Path(tmp) / "spool", 1 << 30,
                                              node_id=lambda: "bench", host="bench")
                await exporter.start()
                handover = []
                for p, b in enumerate(batches):
                    began = time.perf_counter()
                    exporter.on_period(Summary(1_765_000_000 * S + (p + 1) * 10 * S), b)  # type: ignore[arg-type]
                    handover.append(time.perf_counter() - began)
                    await asyncio.sleep(0)
                await asyncio.to_thread(wait_for, lambda: exporter.status().counters["queued_batches"] == periods
                                        and exporter.send_failures >= 1, 300)
                await asyncio.sleep(0.2)
                cpu_spool = exporter.cpu_s
                spool_bytes = exporter.status().counters["queued_bytes"]
                await asyncio.to_thread(ch.start)  # phase 2: the server is back; the spool drains
                up0, down0 = proxy.up, proxy.down
                await asyncio.to_thread(wait_for, lambda: exporter.status().counters["queued_batches"] == 0, 300)
                await asyncio.sleep(0.2)
                cpu_send = exporter.cpu_s - cpu_spool
                await exporter.stop()
                rows = ch.query("SELECT count() FROM meshnode.flows")[0][0]
                per = 10_000 / (periods * flows)
                print(f"ClickHouse export, {periods} periods x {flows:,} flows ({rows:,} rows arrived), "
                      "clickhouse-server 18.16.1")
                print(f"  event loop: handing a period over   {statistics.median(handover) * 1e3:8.2f} ms median")
                print(f"  exporter thread, spool (encode+fsync) {cpu_spool * per:8.3f} CPU s / 10,000 flows")
                print(f"  exporter thread, send (decode+INSERT) {cpu_send * per:8.3f} CPU s / 10,000 flows")
                print(f"  exporter thread, total                {(cpu_spool + cpu_send) * per:8.3f} CPU s / "
                      "10,000 flows")
                print(f"  on disk while queued                  {spool_bytes * per / 1e6:8.3f} MB / 10,000 flows")
                print(f"  to ClickHouse (native, uncompressed)  {(proxy.up - up0) * per / 1e6:8.3f} MB / 10,000 flows"
                      f"  ({(proxy.up - up0) / rows:.0f} B a row)")
                down_kb = (proxy.down - down0) * per / 1e3
                print(f"  from ClickHouse                       {down_kb:8.1f} kB / 10,000 flows")
                assert rows == periods * flows, rows

            asyncio.run(run())
        finally:
            ch.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clickhouse", action="store_true", help="the ClickHouse exporter (the default part)")
    ap.add_argument("--periods", type=int, default=5)
    ap.add_argument("--flows", type=int, default=10_000, help="ended flows per period")
    args = ap.parse_args()
    bench_clickhouse(args.periods, args.flows)


if __name__ == "__main__":
    main()
