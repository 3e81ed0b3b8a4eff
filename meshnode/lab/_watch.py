"""``BlameWatch``: a node's blame answer, asked every few hundred milliseconds from inside the lab.

Timing blame with ``meshctl`` costs a Python start per question (most of a second on a loaded 2-core box),
which blurs a measurement in periods of 2 s. A watch runs one small gRPC client in a host's namespace that
asks ``Diagnosis.Blame`` (the default question, as ``meshctl blame`` asks it) every ``every`` seconds and
writes each answer as a JSON line stamped with the wall clock when it was asked; the lab process reads
them in a thread. Used by the blame lab test and ``bench/bench_blame_lab.py``.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._host import Host

Answer = dict[str, Any]
"""``{"t": seconds, "suspects": [[kind, name, shared], ...], "transactions": n, "change": ..., ...}`` or
``{"t": seconds, "error": code}``."""

POLLER = r"""
import json, sys, time
import grpc
from meshnode.v1 import diagnosis_pb2, diagnosis_pb2_grpc

addr, every = sys.argv[1], float(sys.argv[2])
stub = diagnosis_pb2_grpc.DiagnosisStub(grpc.insecure_channel(addr))
name = diagnosis_pb2.EntityKind.Name
while True:
    t = time.time()
    try:
        r = stub.Blame(diagnosis_pb2.BlameRequest(), timeout=5)
        doc = {"t": t, "suspects": [[name(s.kind).lower().removeprefix("entity_kind_"), s.name, s.shared]
                                    for s in r.suspects],
               "transactions": r.transactions, "hosts": r.hosts, "change": r.change,
               "regime_since_ns": r.regime_since_ns}
    except grpc.RpcError as exc:
        doc = {"t": t, "error": exc.code().name}
    print(json.dumps(doc), flush=True)
    time.sleep(max(0.0, every - (time.time() - t)))
"""


class BlameWatch:
    """Blame answers of the node at ``addr``, asked from ``host``'s namespace (module docstring).

    Args:
        host: the lab host to ask from.
        addr: the node's ``HOST:PORT``.
        every: seconds between two questions.
    """

    def __init__(self, host: Host, addr: str, every: float = 0.25) -> None:
        self._proc = host.python(POLLER, addr, str(every), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True)
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, name="blame-watch", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            with self._lock:
                self._answers.append(doc)

    def answers(self, since: float = 0.0, until: float = float("inf")) -> list[Answer]:
        """The answers asked in ``[since, until]`` (wall-clock seconds), oldest first."""
        with self._lock:
            return [a for a in self._answers if since <= a["t"] <= until]

    def wait(self, ok: Callable[[Answer], bool], since: float, timeout: float) -> Answer | None:
        """The first answer asked at or after ``since`` that satisfies ``ok``; None after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        seen = 0
        while True:
            found = self.answers(since)
            for a in found[seen:]:
                if "error" not in a and ok(a):
                    return a
            seen = len(found)
            if time.monotonic() > deadline or self._proc.poll() is not None:
                return None
            time.sleep(0.05)

    def close(self) -> None:
        """Stop the client."""
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait(timeout=10)
        self._reader.join(timeout=5)

    def __enter__(self) -> BlameWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def top(answer: Answer) -> tuple[str, str, bool] | None:
    """The top suspect of an answer as ``(kind, name, shared)``, or None."""
    s = answer.get("suspects") or []
    return (s[0][0], s[0][1], s[0][2]) if s else None
