"""A bounded on-disk queue of export batches: what waits while the destination is unreachable.

Every batch goes through the spool, reachable destination or not, so a batch survives a node restart and
batches leave in the order they were made. One file per batch, ``<seq>.batch`` (seq zero-padded, so the
names sort in order), written to a temporary name, fsynced and renamed: a crash leaves either the whole
file or a ``.tmp`` that the next start removes. Each file is a header (magic, rows, payload length, CRC-32
of the payload) and the payload, which the exporter encodes; the spool never looks inside.

The spool is bounded by its total size. A batch that would overflow it pushes the oldest batches out
(recent flows are worth more to an operator than old ones); a batch larger than the whole bound is refused.
Both count as dropped, as do files that fail their checks (a disk error, a hand edit): nothing leaves the
spool without being counted as sent or dropped.

One thread uses a spool (the exporter's); ``counters()`` may be called from any thread.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger(__name__)

MAGIC: Final = b"MNSPOOL1"
_HEADER: Final = struct.Struct("<8sIII")  # magic, rows, payload length, crc32(payload)
_SUFFIX: Final = ".batch"


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """One batch read back from the spool."""

    seq: int
    rows: int
    payload: bytes


class Spool:
    """Batches on disk in ``directory``, oldest first, at most ``max_bytes`` in all (headers included)."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"spool size must be positive, got {max_bytes}")
        self.directory = directory
        self.max_bytes = max_bytes
        self.sent_batches = 0
        self.sent_rows = 0
        self.dropped_batches = 0
        self.dropped_rows = 0
        self.corrupt_batches = 0
        """Of the dropped batches, those whose file failed its checks."""
        self._lock = threading.Lock()
        self._entries: dict[int, tuple[int, int]] = {}  # seq -> (rows, file size), in seq order
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for path in directory.iterdir():
            if path.name.endswith(".tmp"):
                path.unlink(missing_ok=True)  # a write cut short by a crash: never renamed, never queued
            elif path.name.endswith(_SUFFIX) and path.name[: -len(_SUFFIX)].isdigit():
                self._adopt(int(path.name[: -len(_SUFFIX)]), path)
        self._entries = dict(sorted(self._entries.items()))
        self._next = max(self._entries, default=0) + 1

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}{_SUFFIX}"

    def _adopt(self, seq: int, path: Path) -> None:
        try:
            with path.open("rb") as fh:
                header = fh.read(_HEADER.size)
            size = path.stat().st_size
        except OSError as exc:
            log.warning("spool: cannot read %s (%s); dropping it", path, exc)
            self._drop_file(path, 0, corrupt=True)
            return
        if len(header) < _HEADER.size or header[:8] != MAGIC:
            log.warning("spool: %s is not a spool file; dropping it", path)
            self._drop_file(path, 0, corrupt=True)
            return
        _magic, rows, length, _crc = _HEADER.unpack(header)
        if size != _HEADER.size + length:
            log.warning("spool: %s is %d bytes, its header says %d; dropping its %d rows", path, size,
                        _HEADER.size + length, rows)
            self._drop_file(path, rows, corrupt=True)
            return
        self._entries[seq] = (rows, size)

    def _drop_file(self, path: Path, rows: int, *, corrupt: bool) -> None:
        path.unlink(missing_ok=True)
        with self._lock:
            self.dropped_batches += 1
            self.dropped_rows += rows
            self.corrupt_batches += corrupt

    # -- the queue ---------------------------------------------------------------------------------------

    def append(self, payload: bytes, rows: int) -> int | None:
        """Queue a batch of ``rows`` rows; its seq, or None when it alone exceeds the bound (dropped).

        Older batches are dropped first when the spool would overflow. Raises ``OSError`` when the disk
        refuses the write (nothing is queued then, and the caller counts the loss).
        """
        size = _HEADER.size + len(payload)
        if size > self.max_bytes:
            log.warning("spool: a batch of %d rows (%d bytes) exceeds the spool's %d bytes; dropped", rows,
                        size, self.max_bytes)
            self.count_dropped(rows)
            return None
        while self._entries and self.queued_bytes + size > self.max_bytes:
            oldest, (old_rows, _size) = next(iter(self._entries.items()))
            log.warning("spool: full (%d bytes); dropping its oldest batch (%d rows)", self.max_bytes, old_rows)
            with self._lock:
                del self._entries[oldest]
            self._drop_file(self._path(oldest), old_rows, corrupt=False)
        seq = self._next
        path = self._path(seq)
        tmp = path.with_name(path.name + ".tmp")
        header = _HEADER.pack(MAGIC, rows, len(payload), zlib.crc32(payload))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, header)
            view = memoryview(payload)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, path)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
        self._next += 1
        with self._lock:
            self._entries[seq] = (rows, size)
        return seq

    def head(self) -> SpoolEntry | None:
        """The oldest batch that reads back whole; files that fail their checks are dropped on the way."""
        while self._entries:
            seq, (rows, _size) = next(iter(self._entries.items()))
            path = self._path(seq)
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("spool: cannot read %s (%s); dropping its %d rows", path, exc, rows)
            else:
                _magic, _rows, length, crc = _HEADER.unpack_from(data)
                payload = data[_HEADER.size:]
                if len(payload) == length and zlib.crc32(payload) == crc:
                    return SpoolEntry(seq, rows, payload)
                log.warning("spool: %s fails its checksum; dropping its %d rows", path, rows)
            with self._lock:
                del self._entries[seq]
            self._drop_file(path, rows, corrupt=True)
        return None

    def remove_sent(self, seq: int) -> None:
        """Remove a batch its destination has (counted as sent)."""
        with self._lock:
            rows, _size = self._entries.pop(seq)
            self.sent_batches += 1
            self.sent_rows += rows
        self._path(seq).unlink(missing_ok=True)

    def count_dropped(self, rows: int) -> None:
        """Count a batch lost before it reached the spool (the disk refused it)."""
        with self._lock:
            self.dropped_batches += 1
            self.dropped_rows += rows

    # -- counts ------------------------------------------------------------------------------------------

    @property
    def queued_bytes(self) -> int:
        """Bytes the queued batches take on disk."""
        with self._lock:
            return sum(size for _rows, size in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)

    def counters(self) -> dict[str, int]:
        """What is queued now, and what was sent and dropped since this spool was opened."""
        with self._lock:
            return {
                "queued_batches": len(self._entries),
                "queued_rows": sum(rows for rows, _size in self._entries.values()),
                "queued_bytes": sum(size for _rows, size in self._entries.values()),
                "sent_batches": self.sent_batches,
                "sent_rows": self.sent_rows,
                "dropped_batches": self.dropped_batches,
                "dropped_rows": self.dropped_rows,
                "corrupt_batches": self.corrupt_batches,
            }
