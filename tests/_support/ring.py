"""A file laid out like the kernel's ring-buffer mapping, for reading rings without a kernel."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

PAGE = mmap.PAGESIZE


class FakeRing:
    """A file with the kernel's ring-buffer mapping layout: consumer page, producer page, data twice."""

    def __init__(self, path: Path, size: int = 4096) -> None:
        self.size = size
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.ftruncate(self.fd, 2 * PAGE + 2 * size)
        self.prod = 0

    def put(self, payload: bytes, flags: int = 0) -> None:
        """Append one record at the producer position, wrapping at the end of the data area."""
        rec_ = struct.pack("=II", len(payload) | flags, 0) + payload
        rec_ += b"\0" * (-len(rec_) % 8)
        self._write(self.prod, rec_)
        self.prod += len(rec_)
        os.pwrite(self.fd, struct.pack("=Q", self.prod), PAGE)

    def set_flags(self, at: int, payload_len: int, flags: int) -> None:
        self._write(at, struct.pack("=I", payload_len | flags))

    def _write(self, pos: int, blob: bytes) -> None:
        """Bytes at a logical position, into both copies of the data area (the kernel maps one twice)."""
        for j, b in enumerate(blob):
            i = (pos + j) % self.size
            for base in (2 * PAGE, 2 * PAGE + self.size):
                os.pwrite(self.fd, bytes([b]), base + i)

    @property
    def consumer(self) -> int:
        return int(struct.unpack("=Q", os.pread(self.fd, 8, 0))[0])
