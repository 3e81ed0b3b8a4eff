"""A BPF ring buffer read in place from Python: mmap the map and walk its records, no callback per record.

bcc's ``ring_buffer_consume`` calls back into Python through ctypes once per record (trampoline, bcc's
wrapper, ``ctypes.string_at`` copy): ~4 us of the sensor's per-flow CPU before any decoding. The ring
buffer's memory is a documented ABI (``kernel/bpf/ringbuf.c``, libbpf's ``ringbuf.c``), so this reader
maps it the way libbpf does and hands each record to a decoder as (buffer, offset), which unpacks with
``struct.Struct.unpack_from`` straight from the mapping.

Layout: offset 0 is one writable page holding the consumer position; from the next page on, read-only,
one page with the producer position and then the data area mapped twice in a row (so a record that wraps
is contiguous). Each record starts with an 8-byte header ``{u32 len; u32 pg_off;}`` whose ``len`` carries a
busy bit (still being written) and a discard bit; records are 8-byte aligned.

Ordering: libbpf reads positions and headers with acquire loads and writes the consumer position with a
release store. Python cannot issue barriers, so the reader is only used where plain loads and stores are
already ordered that way (x86-64, total store order); elsewhere the loader keeps bcc's callback.
"""

from __future__ import annotations

import functools
import mmap
import platform
import re
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

BUSY_BIT = 1 << 31
DISCARD_BIT = 1 << 30
HDR_SIZE = 8
_U64 = struct.Struct("=Q")
_U32 = struct.Struct("=I")

SUPPORTED = platform.machine() in ("x86_64", "AMD64")
"""True where plain loads/stores give the ordering the ring buffer protocol needs (see the module doc)."""


def map_max_entries(map_fd: int) -> int:
    """A BPF map's max_entries from /proc/self/fdinfo (for a ring buffer: its data size in bytes)."""
    text = Path(f"/proc/self/fdinfo/{map_fd}").read_text()
    m = re.search(r"^max_entries:\s+(\d+)", text, re.M)
    if m is None:
        raise OSError(f"fd {map_fd} is not a BPF map (no max_entries in fdinfo)")
    return int(m.group(1))


class RingReader:
    """Consumer side of one BPF_MAP_TYPE_RINGBUF, mapped into this process."""

    def __init__(self, map_fd: int, size: int | None = None) -> None:
        size = map_max_entries(map_fd) if size is None else size
        if size <= 0 or size & (size - 1):
            raise ValueError(f"ring buffer size {size} is not a power of two")
        page = mmap.PAGESIZE
        self._page = page
        self._mask = size - 1
        self._cons = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._data = mmap.mmap(map_fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._cons.close()
            raise

    def _record_at(self, cons: int) -> tuple[int, int, int] | None:
        """The record at position ``cons``: (position after it, offset of its data in the mapping, data size,
        -1 when discarded); None while it is still being written."""
        off = self._page + (cons & self._mask)
        ln = _U32.unpack_from(self._data, off)[0]
        if ln & BUSY_BIT:
            return None
        size = ln & ~(BUSY_BIT | DISCARD_BIT)
        return cons + ((size + HDR_SIZE + 7) & ~7), off + HDR_SIZE, -1 if ln & DISCARD_BIT else size

    def drain(self, decode: Callable[[mmap.mmap, int, int], T]) -> list[T]:
        """Decode every committed record, in order, and release their space to the kernel.

        ``decode(buffer, offset, length)`` is called per record with the record's offset in the mapping;
        it must copy what it keeps (struct unpacking does). Stops at the first record still being written.
        (The sensor uses ``drain_unpacked``; this is the general form, and its reference in tests.)
        """
        out: list[T] = []
        cons = start = _U64.unpack_from(self._cons, 0)[0]
        try:
            while cons < (prod := _U64.unpack_from(self._data, 0)[0]):
                while cons < prod:
                    if (rec := self._record_at(cons)) is None:
                        return out
                    cons, off, size = rec
                    if size >= 0:
                        out.append(decode(self._data, off, size))
        finally:
            if cons != start:
                _U64.pack_into(self._cons, 0, cons)
        return out

    def drain_unpacked(self, record: struct.Struct) -> list[tuple[Any, ...]]:
        """``drain`` for a ring whose records all have one layout: each committed record unpacked with
        ``record``, without a Python call per record.

        Where the records between the consumer and producer positions are all committed and of exactly
        ``record.size`` bytes (in a busy ring, nearly always all of them), they are unpacked in one
        ``iter_unpack`` pass over the mapping, headers skipped by the format; from the first record that
        is not (being written, discarded, or another size) the walk goes one record at a time, as
        ``drain``'s. Records shorter than ``record.size`` are skipped (a ring of one record type has none).
        """
        out: list[tuple[Any, ...]] = []
        records = _bulk_struct(record, _stride(record.size))

        def run(off: int, k: int) -> None:
            with memoryview(self._data) as whole, whole[off:off + k * records.size] as region:
                out.extend(records.iter_unpack(region))

        self._walk(record.size, run, lambda off: out.append(record.unpack_from(self._data, off)))
        return out

    def drain_records(self, size: int) -> tuple[bytes, int, int]:
        """``drain_unpacked``'s walk with the records' bytes copied out instead of unpacked, for a consumer
        in C: ``(data, count, stride)``, record i's ``size`` bytes at ``i * stride + HDR_SIZE`` of ``data``.

        A run of committed records of exactly ``size`` bytes is copied as the ring holds it (headers and
        padding included); a record taken one at a time gets a zero header and padding to the same stride.
        """
        stride = _stride(size)
        header, pad = bytes(HDR_SIZE), bytes(stride - HDR_SIZE - size)
        parts: list[bytes] = []
        count = 0

        def run(off: int, k: int) -> None:
            nonlocal count
            parts.append(self._data[off:off + k * stride])
            count += k

        def one(off: int) -> None:
            nonlocal count
            parts.extend((header, self._data[off:off + size], pad))
            count += 1

        self._walk(size, run, one)
        return b"".join(parts), count, stride

    def _walk(self, size: int, run: Callable[[int, int], None], one: Callable[[int], None]) -> None:
        """Hand over every committed record of at least ``size`` bytes, in order, and release their space:
        a run of ``k`` committed records of exactly ``size`` bytes laid ``_stride(size)`` apart as
        ``run(offset of the first header, k)``, any other as ``one(offset of its data)``. Stops at a record
        still being written."""
        stride = _stride(size)
        headers, good = _header_struct(stride), (size,)
        cons = start = _U64.unpack_from(self._cons, 0)[0]
        try:
            while cons < (prod := _U64.unpack_from(self._data, 0)[0]):
                while cons < prod:
                    n = (prod - cons) // stride
                    if n > 1:
                        off = self._page + (cons & self._mask)
                        k = _committed_run(self._data, off, n, stride, headers, good)
                        if k:
                            run(off, k)
                            cons += k * stride
                        if k == n:
                            continue
                    if (rec := self._record_at(cons)) is None:
                        return
                    cons, off, rec_size = rec
                    if rec_size >= size:
                        one(off)
        finally:
            if cons != start:
                _U64.pack_into(self._cons, 0, cons)

    def close(self) -> None:
        """Unmap; safe to call twice."""
        self._data.close()
        self._cons.close()


@functools.cache
def _bulk_struct(record: struct.Struct, stride: int) -> struct.Struct:
    """Reads only each record of ``record``'s layout laid ``stride`` bytes apart (header and tail padding
    skipped)."""
    fmt = record.format.lstrip("@=<>!")
    return struct.Struct(f"={HDR_SIZE}x{fmt}{stride - HDR_SIZE - record.size}x")


@functools.cache
def _header_struct(stride: int) -> struct.Struct:
    """Reads only the length word of each header of records laid ``stride`` bytes apart."""
    return struct.Struct(f"=I{stride - 4}x")


def _stride(size: int) -> int:
    """Bytes from one record's header to the next for records of ``size`` bytes."""
    return (size + HDR_SIZE + 7) & ~7


def _committed_run(data: mmap.mmap, off: int, n: int, stride: int, headers: struct.Struct,
                   good: tuple[int]) -> int:
    """How many of the ``n`` records at ``off`` lead with a header ``good`` (committed, the full size)."""
    with memoryview(data) as whole, whole[off:off + n * stride] as region:
        lens = list(headers.iter_unpack(region))
    return n if lens.count(good) == n else next(i for i, h in enumerate(lens) if h != good)
