"""A real ``meshnode run`` process (fake sensor, plaintext, mesh on) for tests that attack it over the wire.

``NodeProcess`` starts it on 127.0.0.1:0, reads the bound address from its startup line, and counts what the
process holds (``fds``, ``threads``). ``LatencyProbe`` calls ``Status`` (a worker-thread hop) and
``Mesh.Peers`` (answered on the node's event loop) in a thread of its own while an attack runs, and reports
their percentiles: the loop latency the attack causes. ``prefill`` gives a data dir history before the node
starts; ``destinations`` makes filter values.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from meshnode._model import FlowRecord
from meshnode.store import Retention, Store
from meshnode.v1 import mesh_pb2, mesh_pb2_grpc, observer_pb2, observer_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
S = 1_000_000_000


def destinations(n: int) -> list[str]:
    """``n`` distinct addresses in 10.0.0.0/8 (none is the fake sensor's 127.0.0.1)."""
    base = int(ipaddress.IPv4Address("10.0.0.1"))
    return [str(ipaddress.IPv4Address(base + i)) for i in range(n)]


def prefill(data_dir: Path, n: int) -> None:
    """A store with one closed period of ``n`` flows by ``prefill`` that ended in the last minute, ids 1..n."""
    now = time.time_ns()
    store = Store.in_dir(data_dir, Retention(7 * 86400.0, 1 << 30))
    try:
        seq = store.open_period(now - 60 * S)
        recs = [FlowRecord(flow_id=i + 1, src="10.1.0.1", sport=1024 + i % 60000, dst="10.1.0.2", dport=443,
                           proto="tcp", direction="outbound", pid=7, comm="prefill", start_ns=now - 60 * S + i,
                           end_ns=now - 30 * S + i, outcome="established", kind="final") for i in range(n)]
        store.close_period(seq, now - 20 * S, recs, [], "")
    finally:
        store.close()


class NodeProcess:
    """``meshnode run --sensor fake`` on ``data_dir``; ``env`` adds ``MESHNODE_*`` settings; ``root`` is the
    source tree whose meshnode runs (this one by default; a benchmark may run an older tree side by side)."""

    def __init__(self, data_dir: Path, *, flows_per_poll: int = 20, export_period: float = 1.0,
                 env: dict[str, str] | None = None, root: Path = ROOT) -> None:
        self.root = root
        self.data_dir = data_dir
        self.flows_per_poll = flows_per_poll
        self.export_period = export_period
        self.env = env or {}
        self.proc: subprocess.Popen[str] | None = None
        self.address = ""
        self.log = ""
        self._reader: threading.Thread | None = None

    def start(self) -> NodeProcess:
        env = {**os.environ, "MESHNODE_ALLOW_FAKE_SENSOR": "1",
               "MESHNODE_FAKE_FLOWS_PER_POLL": str(self.flows_per_poll), "PYTHONPATH": str(self.root), **self.env}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "meshnode.cli_main", "run", "--insecure", "--sensor", "fake", "--listen",
             "127.0.0.1:0", "--metrics", "off", "--export-period", str(self.export_period), "--data-dir",
             str(self.data_dir)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env, cwd=self.root,
        )
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            self.log += line
            m = re.search(r"listening on (\S+),", line)
            if m:
                self.address = m.group(1)
                break
            if not line and self.proc.poll() is not None:
                break
        if not self.address:
            self.kill()
            raise AssertionError(f"meshnode run did not start:\n{self.log}")
        self._reader = threading.Thread(target=self._drain, daemon=True)  # a full stderr pipe would block it
        self._reader.start()
        return self

    def _drain(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log += line

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def fds(self, name: str = "") -> int:
        """Open file descriptors of the node process (only those of files called ``name`` if given)."""
        if not name:
            return len(os.listdir(f"/proc/{self.pid}/fd"))
        n = 0
        for fd in os.listdir(f"/proc/{self.pid}/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile
                n += os.path.basename(os.readlink(f"/proc/{self.pid}/fd/{fd}")) == name
        return n

    def threads(self) -> int:
        """Threads of the node process."""
        return len(os.listdir(f"/proc/{self.pid}/task"))

    def terminate(self, timeout: float) -> float:
        """SIGTERM; the seconds until the process exited (raises ``subprocess.TimeoutExpired`` past ``timeout``)."""
        assert self.proc is not None
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout)
        return time.monotonic() - began

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> NodeProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) by nearest rank; inf for no values."""
    if not values:
        return float("inf")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class LatencyProbe:
    """Status and Mesh.Peers latencies (seconds) sampled every ``every`` seconds until ``stop``."""

    address: str
    every: float = 0.05
    timeout: float = 30.0
    status: list[float] = field(default_factory=list)
    peers: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with grpc.insecure_channel(self.address) as ch:
            observer = observer_pb2_grpc.ObserverStub(ch)
            mesh = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
            while not self._stop.is_set():
                for name, call, req, out in (
                    ("Status", observer.Status, observer_pb2.StatusRequest(), self.status),
                    ("Peers", mesh.Peers, mesh_pb2.PeersRequest(), self.peers),
                ):
                    began = time.monotonic()
                    try:
                        call(req, timeout=self.timeout)
                    except grpc.RpcError as exc:
                        self.failures.append(f"{name}: {exc.code().name}")  # type: ignore[attr-defined]
                    out.append(time.monotonic() - began)
                self._stop.wait(self.every)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout + 5)

    def report(self, what: str) -> str:
        """One line: p50/p99/max of both, in ms."""
        def ms(v: list[float], q: float) -> str:
            return f"{percentile(v, q) * 1000:.1f}"
        return (f"{what}: Status p50 {ms(self.status, 0.5)} p99 {ms(self.status, 0.99)} max "
                f"{max(self.status, default=float('inf')) * 1000:.1f} ms; Peers (loop) p50 {ms(self.peers, 0.5)} "
                f"p99 {ms(self.peers, 0.99)} max {max(self.peers, default=float('inf')) * 1000:.1f} ms; "
                f"{len(self.status)} samples, {len(self.failures)} failed")
