"""Where a node keeps its active-task results: its store (set by the daemon), else the last ones in memory.

``MeasurementStore`` is the narrow interface the mesh writes through; ``meshnode.store.Store`` keeps results as
serialized ``MeasureResponse`` rows (``record_measurement``/``measurements``) and the daemon adapts it
(``StoredMeasurements``). ``HeldMeasurements`` is the fallback of a mesh without a store (tests, simulations).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Final, Protocol

from meshnode.v1 import mesh_pb2

if TYPE_CHECKING:
    from meshnode.store import Store

MAX_MEASUREMENTS_LISTED: Final = 10_000
"""Results one ``Mesh.Measurements`` call returns at most."""
HELD: Final = 256
"""Results ``HeldMeasurements`` keeps."""


class MeasurementStore(Protocol):
    """Keeps active-task results."""

    def record(self, result: mesh_pb2.MeasureResponse) -> int:
        """Keep ``result``; its id (> 0). Raises ``meshnode.StoreError`` when it cannot."""

    def list(self, since_ns: int, number: int) -> tuple[list[mesh_pb2.MeasureResponse], int]:
        """Up to ``number`` results that ended at or after ``since_ns``, newest first, and how many the
        bounds evicted so far."""


class HeldMeasurements:
    """The last ``HELD`` results in memory; older ones are counted as evicted."""

    def __init__(self, held: int = HELD) -> None:
        self._held: deque[mesh_pb2.MeasureResponse] = deque(maxlen=held)
        self._next = 1
        self.evicted = 0

    def record(self, result: mesh_pb2.MeasureResponse) -> int:
        if self._held.maxlen is not None and len(self._held) == self._held.maxlen:
            self.evicted += 1
        kept = mesh_pb2.MeasureResponse()
        kept.CopyFrom(result)
        kept.id = self._next
        self._held.append(kept)
        self._next += 1
        return kept.id

    def list(self, since_ns: int, number: int) -> tuple[list[mesh_pb2.MeasureResponse], int]:
        found = [r for r in reversed(self._held) if r.time_ns >= since_ns][:number]
        return found, self.evicted


class StoredMeasurements:
    """``MeasurementStore`` over the node's ``Store``."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def record(self, result: mesh_pb2.MeasureResponse) -> int:
        return self._store.record_measurement(result.time_ns, result.target, result.SerializeToString())

    def list(self, since_ns: int, number: int) -> tuple[list[mesh_pb2.MeasureResponse], int]:
        rows, evicted = self._store.measurements(since_ns, number)
        out = []
        for row_id, data in rows:
            r = mesh_pb2.MeasureResponse.FromString(data)
            r.id = row_id
            out.append(r)
        return out, evicted
