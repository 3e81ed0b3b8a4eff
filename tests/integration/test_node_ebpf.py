"""A real node with the real eBPF sensor: loopback traffic in, exact records and health out over gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from meshnode._model import FlowRecord
from meshnode.v1 import diagnosis_pb2, diagnosis_pb2_grpc, flow_pb2, observer_pb2, observer_pb2_grpc
from tests._support.env import require_kernel

ROOT = Path(__file__).resolve().parents[2]
SCANNER = "127.0.0.99"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve_once(port: int, answer: int, ready: threading.Event) -> None:
    with socket.socket() as srv:
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", port))
        srv.listen(4)
        ready.set()
        conn, _ = srv.accept()
        with conn:
            while conn.recv(65536):
                pass
            conn.sendall(b"y" * answer)


def test_ebpf_node_records_exact_bytes_and_refusals(tmp_path: Path) -> None:
    require_kernel()
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshnode.cli_main", "run", "--insecure", "--sensor", "ebpf", "--listen", "127.0.0.1:0",
         "--metrics", "off", "--export-period", "1", "--data-dir", str(tmp_path)],
        stderr=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert proc.stderr is not None
        addr = ""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not addr:
            line = proc.stderr.readline()
            m = re.search(r"listening on (\S+),", line)
            addr = m.group(1) if m else ""
            if not line and proc.poll() is not None:
                raise AssertionError("meshnode run exited before serving")
        assert addr, "no startup line"
        port, refused_port = _free_port(), _free_port()
        ready = threading.Event()
        server = threading.Thread(target=_serve_once, args=(port, 54_321, ready))
        server.start()
        ready.wait(10)
        with socket.create_connection(("127.0.0.1", port)) as c:
            c.sendall(b"x" * 12_345)
            c.shutdown(socket.SHUT_WR)
            got = 0
            while d := c.recv(65536):
                got += len(d)
        server.join(10)
        assert got == 54_321
        for _ in range(3):
            with contextlib.suppress(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", refused_port), timeout=2).close()
        for p in range(30000, 30500):  # a sweep of closed ports from one source: one kernel entry, one scan
            with socket.socket() as c, contextlib.suppress(ConnectionRefusedError):
                c.bind((SCANNER, 0))
                c.connect(("127.0.0.1", p))
        time.sleep(3)  # > two export periods

        async def query() -> tuple[list[FlowRecord], observer_pb2.HealthResponse]:
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = observer_pb2_grpc.ObserverStub(ch)
                req = observer_pb2.FlowsRequest(whitelist=[flow_pb2.FlowFilter(
                    dport=[port], direction=[flow_pb2.OUTBOUND], pid=[os.getpid()])])
                recs = [FlowRecord.from_proto(r.flow) async for r in stub.Flows(req, timeout=10)]
                hreq = observer_pb2.HealthRequest(filter=flow_pb2.FlowFilter(dport=[refused_port]))
                return recs, await stub.Health(hreq, timeout=10)

        recs, health = asyncio.run(query())
        [rec] = recs
        assert (rec.bytes_tx, rec.bytes_rx, rec.outcome, rec.kind) == (12_345, 54_321, "established", "final")
        assert rec.pid == os.getpid()
        assert health.host.attempts == 3 and dict(health.host.failures) == {"refused": 3}
        assert not health.host.useful_fraction.value
        [retry] = health.retries
        assert retry.failures == 3 and retry.destination == f"127.0.0.1:{refused_port}"

        async def scans() -> observer_pb2.HealthResponse:
            async with grpc.aio.insecure_channel(addr) as ch:
                stub = observer_pb2_grpc.ObserverStub(ch)
                hreq = observer_pb2.HealthRequest(filter=flow_pb2.FlowFilter(dst=[SCANNER]))
                for _ in range(20):  # the sweep's record ends 2 s after its last attempt, then a period closes
                    h = await stub.Health(hreq, timeout=10)
                    if h.scans:
                        return h
                    await asyncio.sleep(0.5)
                return h

        async def blamed() -> diagnosis_pb2.BlameResponse:
            async with grpc.aio.insecure_channel(addr) as ch:
                return await diagnosis_pb2_grpc.DiagnosisStub(ch).Blame(diagnosis_pb2.BlameRequest(), timeout=10)

        h = asyncio.run(scans())
        assert [(s.src, s.ports, s.failures) for s in h.scans] == [(SCANNER, 500, 500)]
        assert (h.scan_flows, h.host.attempts) == (1, 0)  # the scan is left out of the host's fraction
        blame = asyncio.run(blamed())
        assert [(s.src, s.ports, s.failures) for s in blame.scans] == [(SCANNER, 500, 500)]
        assert not any(SCANNER in ex.dst for s in blame.suspects for ex in s.examples)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    finally:
        if proc.poll() is None:
            proc.kill()
