"""OTLP export cost per 10,000 ended flows: CPU seconds in the node's process and bytes on the wire.

Run: ``.venv/bin/python -m bench.bench_export_otlp [--flows 10000] [--runs 3] [--destinations 200]``

The receiver (``tests/_support/otlp.py``, opentelemetry-proto's services) runs in a process of its own, so
the CPU measured here (``getrusage`` of this process, user + system, all threads) is the exporter's alone:
the recorder adding the flows to the ``meshnode.flow.*`` instruments and the sender encoding and sending
them (one metrics export and ``flows / 1,000`` log requests). Each run hands one period of ``--flows`` ended
flows (``--destinations`` distinct remote services, several processes, TCP and UDP, mixed outcomes) to a
fresh exporter and waits until the receiver holds every record. The metric columns are per export (one a
period; its size follows the series, not the flows). Bytes are the serialized requests as the receiver got
them (the protobuf payload gRPC carries, before HTTP/2 framing); the gzip columns are the same requests
compressed by zlib at level 6, what ``OTEL_EXPORTER_OTLP_COMPRESSION=gzip`` would send. Prints a row per
run and the median. Each run is done twice, side by side: with the exporter's encoder
(``encode_flow_logs``, from the columns) and with the SDK's (``encode_logs`` of the SDK's log records, made
record by record as ``tests/_support/otlp.py``'s oracle makes them), which gives the same requests.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshnode._batch import FlowBatch  # noqa: E402
from meshnode._model import FlowRecord  # noqa: E402
from meshnode.export import OtlpExporter, _otlp  # noqa: E402


def serve() -> None:
    """The receiver process: prints its port, then answers ``stats`` lines with JSON until stdin closes."""
    from tests._support.otlp import Receiver

    with Receiver() as r:
        print(r.port, flush=True)
        for line in sys.stdin:
            if line.strip() != "stats":
                continue
            with r.lock:
                logs, metrics = list(r.log_requests), list(r.metric_requests)
            stats = {
                "records": sum(len(sl.log_records) for q in logs for rl in q.resource_logs for sl in rl.scope_logs),
                "log_requests": len(logs), "metric_requests": len(metrics),
                "log_bytes": sum(q.ByteSize() for q in logs), "metric_bytes": sum(q.ByteSize() for q in metrics),
                "log_gzip": sum(len(zlib.compress(q.SerializeToString(), 6)) for q in logs),
                "metric_gzip": sum(len(zlib.compress(q.SerializeToString(), 6)) for q in metrics),
            }
            print(json.dumps(stats), flush=True)


def flows(n: int, destinations: int) -> FlowBatch:
    recs = []
    for i in range(n):
        d = i % destinations
        udp = d % 5 == 4
        recs.append(FlowRecord(
            flow_id=i + 1, src="10.0.0.1", sport=32_768 + i % 28_000, dst=f"10.1.{d // 250}.{d % 250}",
            dport=53 if udp else (443, 5432, 6379, 8080)[d % 4], proto="udp" if udp else "tcp",
            direction="outbound", pid=1_000 + d % 16, comm=("curl", "psql", "redis-cli", "java")[d % 4],
            cgroup="/system.slice/app.service", cgroup_id=4242, netns=4026531840, start_ns=1_700_000_000 * 10**9 + i,
            end_ns=1_700_000_001 * 10**9 + i, bytes_tx=500 + i % 3_000, bytes_rx=20_000 + i % 70_000,
            packets_tx=8, packets_rx=20, outcome="udp_answered" if udp else ("established", "refused")[i % 50 == 0],
            retransmits=i % 7 == 0, srtt_us=0 if udp else 800 + i % 5_000, min_rtt_us=0 if udp else 500,
            cwnd=10, connect_us=0 if udp else 900 + i % 4_000, kind="final", service=("https", "postgresql",
                                                                                        "redis", "http-alt")[d % 4]))
    return FlowBatch.from_records(recs)


ENCODER = _otlp.encode_flow_logs


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


class _Period:
    period_end_ns = 1_700_000_002 * 10**9


def _sdk_encoder(finals: FlowBatch, **kw: Any) -> Any:
    from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs

    from tests._support.otlp import sdk_log_records

    return encode_logs(sdk_log_records(finals, **kw))


def one_run(n: int, destinations: int, *, sdk: bool = False) -> dict[str, Any]:
    _otlp.encode_flow_logs = _sdk_encoder if sdk else ENCODER
    receiver = subprocess.Popen([sys.executable, __file__, "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True, cwd=ROOT)
    assert receiver.stdin is not None and receiver.stdout is not None
    try:
        port = int(receiver.stdout.readline())
        batch = flows(n, destinations)

        def stats() -> dict[str, Any]:
            assert receiver.stdin is not None and receiver.stdout is not None
            receiver.stdin.write("stats\n")
            receiver.stdin.flush()
            out: dict[str, Any] = json.loads(receiver.stdout.readline())
            return out

        async def run() -> tuple[float, float]:
            exporter = OtlpExporter(f"http://127.0.0.1:{port}", node_id="bench", host="bench", timeout=60)
            await exporter.start()
            began_cpu, began = cpu(), time.monotonic()
            exporter.on_period(_Period(), batch)  # type: ignore[arg-type]
            while exporter.pending or not exporter.counters.metric_exports_ok:
                await asyncio.sleep(0.01)
            spent_cpu, spent = cpu() - began_cpu, time.monotonic() - began
            await exporter.stop()
            c = exporter.counters
            assert (c.records_exported, c.records_failed, c.records_dropped) == (n, 0, 0), c
            return spent_cpu, spent

        spent_cpu, wall = asyncio.run(run())
        got = stats()
        assert got["records"] == n, got
        return {"cpu_s": spent_cpu, "wall_s": wall, **got}
    finally:
        receiver.stdin.close()
        receiver.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--destinations", type=int, default=200)
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve()
        return
    per = 10_000 / args.flows
    print(f"OTLP export of {args.flows:,} ended flows ({args.destinations} destinations), per 10,000 flows:")
    print(f"{'run':>4} {'CPU s':>7} {'wall s':>7} {'log MB':>8} {'gzip MB':>8} {'metric kB':>10} {'gzip kB':>8} "
          f"{'requests':>9} {'B/flow':>7}")
    rows: list[dict[str, Any]] = []
    sdk_rows: list[dict[str, Any]] = []
    for i in range(args.runs * 2):
        sdk = bool(i % 2)
        r = one_run(args.flows, args.destinations, sdk=sdk)
        (sdk_rows if sdk else rows).append(r)
        print(f"{i // 2 + 1:>3}{'s' if sdk else ' '} {r['cpu_s'] * per:>7.2f} {r['wall_s'] * per:>7.2f} "
              f"{r['log_bytes'] * per / 1e6:>8.2f} "
              f"{r['log_gzip'] * per / 1e6:>8.2f} {r['metric_bytes'] / 1e3:>10.1f} "
              f"{r['metric_gzip'] / 1e3:>8.1f} {r['log_requests'] + r['metric_requests']:>9} "
              f"{(r['log_bytes'] + r['metric_bytes']) / args.flows:>7.0f}", flush=True)

    def med(key: str, of: list[dict[str, Any]] = rows) -> float:
        return float(statistics.median(r[key] for r in of))

    print(f"median: CPU {med('cpu_s') * per:.2f} s, wall {med('wall_s') * per:.2f} s, log records "
          f"{med('log_bytes') * per / 1e6:.2f} MB ({med('log_gzip') * per / 1e6:.2f} MB gzip) per 10,000 flows; "
          f"metrics {med('metric_bytes') / 1e3:.1f} kB "
          f"({med('metric_gzip') / 1e3:.1f} kB gzip) per export (one per period; bounded by the series, not "
          "the flows)")
    print(f"with the SDK's encoder (rows marked s): CPU {med('cpu_s', sdk_rows) * per:.2f} s, wall "
          f"{med('wall_s', sdk_rows) * per:.2f} s, log records {med('log_bytes', sdk_rows) * per / 1e6:.2f} MB; "
          f"CPU ratio {med('cpu_s') / med('cpu_s', sdk_rows):.2f}")


if __name__ == "__main__":
    main()
