"""Diagnosis across restarts: blame's periods, the anomaly baselines and their events, rebuilt at start.

Everything diagnosis holds is derived from what the node already keeps, so a restart rebuilds it instead of
starting blind:

- **own periods** from the node's store: the final records of each closed period within the horizon (the
  newest periods' up to ``MAX_REBUILD_FLOWS`` flows) go through ``NodeSource.add_period`` again. Interim
  records are not kept per period by the store (only the newest of each live flow), so a connect that was
  counted while pending is counted again when its final record is read, as the ``timeout``/``refused`` it
  ended as, in the period it ended in;
- **anomaly baselines** from the node's store: the hour-of-day history up to the replay (the hours the
  detector rolled up, kept in the store's ``hour_baselines``, for its ``season_days``), then each stored
  period summary from the start of the clock hour before the horizon (and at least the detector's
  ``window`` periods) through the ``AnomalyDetector`` (the same rollups, in the same order, give the same
  recent windows and the same hour in progress). The hours this replay rolls up are written back (a node
  stopped before it wrote one loses nothing), and its anomalies within the horizon are returned: the node
  pushes those its store does not hold as the ``anomaly`` events they were;
- **peer digests** from ``DigestLog``: the store holds this node's flows only, so every digest the
  diagnosis takes in (verified, peers' and its own) is also written to ``<data_dir>/diagnosis/digests.db``
  as the signed protobuf bytes it was, and read back in order at start. The log keeps what the source
  holds (the horizon and ``MAX_DIGESTS``); rows past either bound are deleted, and rows it could not
  write are counted in ``failed``.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from meshnode._batch import FlowBatch
from meshnode._files import private_dir
from meshnode.diagnosis._anomaly import DAY_NS, HOUR_NS, Anomaly, AnomalyDetector, HourBaseline
from meshnode.diagnosis._source import HORIZON_NS, MAX_DIGESTS, NodeSource
from meshnode.store import FlowQuery, Store
from meshnode.summary import PeriodSummary

if TYPE_CHECKING:
    from meshnode._model import FlowRecord
    from meshnode.v1 import mesh_pb2

log = logging.getLogger(__name__)

MAX_REBUILD_FLOWS: Final = 1_000_000
"""Stored flows a start reads back at most (about 10 s of reading on these machines)."""

TRIM_EVERY: Final = 256
"""Digests written between two trims of the log."""


@dataclass(frozen=True, slots=True)
class Rebuilt:
    """What a rebuild read back: own ``periods``, ``digests``, the ``anomalies`` the periods had, and the
    older periods whose flows the budget left out (``skipped``: their summaries still fed the baselines)."""

    periods: int
    digests: int
    anomalies: tuple[Anomaly, ...]
    skipped: int = 0
    hours: int = 0
    """Hourly baselines read back from the store (those the replay rolled up again not counted)."""


class DigestLog:
    """Every digest diagnosis took in, on disk (SQLite), so that a restart holds what it held before.

    Args:
        path: the database file (its directory is created private).
        horizon_ns, max_digests: the bounds (those of ``NodeSource``).
    """

    FILE_NAME: Final = "digests.db"

    def __init__(self, path: Path, *, horizon_ns: int = HORIZON_NS, max_digests: int = MAX_DIGESTS) -> None:
        private_dir(path.parent)
        self.path = path
        self._horizon = horizon_ns
        self._max = max_digests
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS digests (node_id TEXT NOT NULL, seq INTEGER NOT NULL, "
                         "end_ns INTEGER NOT NULL, own INTEGER NOT NULL, body BLOB NOT NULL, "
                         "PRIMARY KEY (node_id, seq))")
        self._db.execute("CREATE INDEX IF NOT EXISTS digests_end ON digests (end_ns)")
        self._written = 0
        self.failed = 0
        """Digests that could not be written (a full disk...): a restart would not hold them."""

    @classmethod
    def in_dir(cls, data_dir: Path | str) -> DigestLog:
        """The log of a data directory (``<data_dir>/diagnosis/digests.db``)."""
        return cls(Path(data_dir) / "diagnosis" / cls.FILE_NAME)

    def append(self, digest: mesh_pb2.Digest, own: bool) -> None:
        """Write one digest (a repeat of one held is ignored); trims the log now and then."""
        try:
            with self._lock:
                self._db.execute("INSERT OR IGNORE INTO digests VALUES (?, ?, ?, ?, ?)",
                                 (digest.node_id, digest.seq, digest.period_end_ns, int(own),
                                  digest.SerializeToString()))
                self._written += 1
                if self._written % TRIM_EVERY == 0:
                    self._trim(digest.period_end_ns)
        except sqlite3.Error as exc:
            self.failed += 1
            log.warning("diagnosis: cannot write a digest to %s: %s", self.path, exc)

    def _trim(self, newest_ns: int) -> None:
        self._db.execute("DELETE FROM digests WHERE end_ns < ?", (newest_ns - self._horizon,))
        self._db.execute("DELETE FROM digests WHERE rowid NOT IN "
                         "(SELECT rowid FROM digests ORDER BY end_ns DESC LIMIT ?)", (self._max,))

    def load(self, since_ns: int) -> Iterator[tuple[mesh_pb2.Digest, bool]]:
        """The digests of periods that ended at or after ``since_ns``, oldest first, with their ``own`` flag."""
        from meshnode.v1 import mesh_pb2

        with self._lock:
            rows = self._db.execute("SELECT body, own FROM digests WHERE end_ns >= ? ORDER BY end_ns, rowid",
                                    (since_ns,)).fetchall()
        for body, own in rows:
            d = mesh_pb2.Digest()
            d.ParseFromString(body)
            yield d, bool(own)

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()


def rebuild(store: Store, source: NodeSource, detector: AnomalyDetector, *, now_ns: int,
            digests: DigestLog | None = None, horizon_ns: int = HORIZON_NS,
            max_flows: int = MAX_REBUILD_FLOWS) -> Rebuilt:
    """Feed ``source`` and ``detector`` what the store (and the digest log) hold of the last ``horizon_ns``
    before ``now_ns``, oldest first, as if the node had run through it (module docstring). At most
    ``max_flows`` stored flows are read back (the newest periods'), so that a busy node starts in seconds."""
    since = now_ns - horizon_ns
    # the detector's replay: from the start of the clock hour the horizon (or its window's periods) begins in
    window = [p for p in store.periods(number=detector.config.window) if p.state == "closed" and p.end_ns]
    first_end = min([since + 1, *(p.end_ns for p in window)])
    replay_from = (first_end - 1) // HOUR_NS * HOUR_NS
    hours = detector.load(HourBaseline.from_row(r) for r in store.hour_baselines(
        since_ns=replay_from // DAY_NS * DAY_NS - detector.config.season_days * DAY_NS, until_ns=replay_from))
    replay = [p for p in reversed(store.periods(since_ns=replay_from + 1, number=1_000_000))
              if p.state == "closed" and p.end_ns > replay_from]
    rows = [p for p in replay if p.end_ns >= since]
    # the newest periods whose flows fit the budget are read back; older ones only feed the anomaly
    # baselines (their summaries are small)
    budget, first = max_flows, len(rows)
    while first > 0 and rows[first - 1].final_flows <= budget:
        first -= 1
        budget -= rows[first].final_flows
    by_period: dict[int, list[FlowRecord]] = {p.seq: [] for p in rows[first:]}
    if by_period:
        query = FlowQuery(since_ns=rows[first].start_ns, until_ns=rows[-1].end_ns)
        with store.reader() as conn:
            for f in store.query_flows(query, conn):
                held = by_period.get(f.period)
                if held is not None:
                    held.append(f.record)
    found: list[Anomaly] = []
    for p in replay:
        if p.seq in by_period:
            source.add_period(p.end_ns, FlowBatch.from_records(by_period[p.seq]))
        if p.summary:
            summary = PeriodSummary.from_json(p.summary)
            judged = detector.observe(p.end_ns, summary.by_destination, summary.by_process)
            found.extend(a for a in judged if a.time_ns >= since)
    store.record_hour_baselines(h.to_row() for h in detector.take_rolled())
    n = 0
    if digests is not None:
        for d, own in digests.load(since):
            source.add_digest(d, own=own)
            n += 1
    return Rebuilt(len(by_period), n, tuple(found), first, hours)
