"""The C renderer of final TCP records' JSON lines (``_jsonline.c``), through ctypes.

``make setup`` builds ``_jsonline.so`` beside its source (``scripts/build_native.sh``). Where it is missing,
stale (older than its sources) or does not load, ``load()`` returns None and ``meshnode capture --json``
renders in Python: the same text, ~3.5 us a line slower (bench/RESULTS.md, Sensor).
"""

from __future__ import annotations

import ctypes as ct
import logging
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "_jsonline.c"
LIBRARY = HERE / "_jsonline.so"
HEADER = HERE.parent.parent / "probes" / "meshnode.h"

NEED_NONE, NEED_SLOW, NEED_OWNER, NEED_SERVICE, NEED_ROOM = range(5)
T_OUTCOME, T_INBOUND, T_OUTBOUND, T_UNKNOWN_LIMIT, T_NO_REASONS, T_SERVICE = range(1, 7)

_P, _SZ = ct.c_void_p, ct.c_size_t


def library_state() -> str:
    """'' when the library is built and current, else why it is not used."""
    if not LIBRARY.exists():
        return f"{LIBRARY.name} is not built (make setup builds it)"
    built = LIBRARY.stat().st_mtime
    stale = [p.name for p in (SOURCE, HEADER) if p.exists() and p.stat().st_mtime > built]
    return f"{LIBRARY.name} is older than {', '.join(stale)} (make setup rebuilds it)" if stale else ""


def _bind(lib: ct.CDLL) -> None:
    lib.mn_json_new.restype = _P
    lib.mn_json_new.argtypes = [ct.c_char_p, _SZ, _SZ]
    lib.mn_json_free.argtypes = [_P]
    lib.mn_json_set_text.argtypes = [_P, ct.c_int, ct.c_int, ct.c_char_p, _SZ]
    lib.mn_json_set_offset.argtypes = [_P, ct.c_int64, ct.c_uint64]
    lib.mn_json_clear_owners.argtypes = [_P]
    lib.mn_json_set_owner.argtypes = [_P, ct.c_uint32, ct.c_char_p, ct.c_uint64, ct.c_char_p, _SZ]
    lib.mn_json_clear_drops.argtypes = [_P]
    lib.mn_json_set_drops.argtypes = [_P, ct.c_uint64, ct.c_uint64, ct.c_char_p, _SZ]
    lib.mn_json_render.restype = _SZ
    lib.mn_json_render.argtypes = [_P, ct.c_char_p, _SZ, _SZ, _SZ, _SZ, _P, _SZ, ct.POINTER(_SZ),
                                   ct.POINTER(ct.c_int), ct.POINTER(_SZ)]
    lib.mn_json_begin.argtypes = [_P, ct.c_char_p, _SZ, _SZ, _SZ, ct.POINTER(_SZ)]
    lib.mn_json_output.argtypes = [_P, _P, _SZ]
    lib.mn_json_slow.argtypes = [_P, ct.POINTER(_SZ), _SZ]
    lib.mn_json_next.restype = _SZ
    lib.mn_json_next.argtypes = [_P, _SZ]
    lib.mn_json_events.restype = _SZ
    lib.mn_json_events.argtypes = [_P, ct.POINTER(_SZ), _SZ]
    lib.mn_json_unresolved.restype = _SZ
    lib.mn_json_unresolved.argtypes = [_P, ct.c_char_p, _SZ, _SZ, _SZ, ct.POINTER(_SZ), _SZ]
    lib.mn_json_sks.argtypes = [ct.c_char_p, _SZ, _SZ, _SZ, ct.POINTER(ct.c_uint64)]
    lib.mn_json_taken_drops.restype = _SZ
    lib.mn_json_taken_drops.argtypes = [_P, ct.POINTER(ct.c_uint64), _SZ]


class NativeJson:
    """One renderer: the template and texts a sensor gave it, its per-poll owners and drops."""

    def __init__(self, lib: ct.CDLL, template: bytes, event_size: int, outcomes: dict[int, bytes],
                 in_progress: bytes, inbound: bytes, outbound: bytes, unknown: bytes, no_reasons: bytes) -> None:
        self._lib = lib
        self._h = lib.mn_json_new(template, len(template), event_size)
        if not self._h:
            raise ValueError("the JSON template or the event layout is not the one _jsonline.c renders")
        for code in range(256):
            self._text(T_OUTCOME, code, outcomes.get(code, in_progress))
        for kind, text in ((T_INBOUND, inbound), (T_OUTBOUND, outbound), (T_UNKNOWN_LIMIT, unknown),
                           (T_NO_REASONS, no_reasons)):
            self._text(kind, 0, text)
        self._res = (_SZ * 3)()  # next, need, lines of the last render
        self._data = b""
        self._output(ct.create_string_buffer(1 << 20))
        self._services: set[int] = set()
        self._drops_given = 0
        self._slow = (_SZ * 0)()

    def _text(self, kind: int, index: int, text: bytes) -> None:
        if self._lib.mn_json_set_text(self._h, kind, index, text, len(text)):
            raise MemoryError("_jsonline: out of memory")

    def close(self) -> None:
        if self._h:
            self._lib.mn_json_free(self._h)
            self._h = None

    def __del__(self) -> None:
        self.close()

    def set_offset(self, offset: int) -> None:
        """The wall clock's offset from the monotonic clock (any Python int that fits 128 bits)."""
        self._lib.mn_json_set_offset(self._h, offset >> 64, offset & (2**64 - 1))

    def has_service(self, port: int) -> bool:
        return port in self._services

    def set_service(self, port: int, text: bytes) -> None:
        self._text(T_SERVICE, port, text)
        self._services.add(port)

    def new_poll(self) -> None:
        self._lib.mn_json_clear_owners(self._h)

    def set_owner(self, pid: int, comm: bytes, cgroup_id: int, text: bytes) -> bool:
        """False when this poll's owner table is full (the record is rendered in Python)."""
        err: int = self._lib.mn_json_set_owner(self._h, pid, comm.ljust(16, b"\0"), cgroup_id, text, len(text))
        return err == 0

    def set_drops(self, dumps: Iterable[tuple[int, int, bytes]]) -> bool:
        """The drops joined to sockets, as (sk, count, reasons JSON); False when they do not all fit (the
        caller renders in Python)."""
        self._lib.mn_json_clear_drops(self._h)
        self._drops_given = 0
        for sk, count, text in dumps:
            if self._lib.mn_json_set_drops(self._h, sk, count, text, len(text)):
                return False
            self._drops_given += 1
        return True

    def sks(self, data: bytes, count: int, stride: int, skip: int) -> list[int]:
        """The socket addresses of the records (all kinds), in order."""
        out = (ct.c_uint64 * count)()
        self._lib.mn_json_sks(data, count, stride, skip, out)
        return list(out)

    def taken_drops(self) -> list[int]:
        """The sockets whose drops renders took since ``set_drops``."""
        if not self._drops_given:
            return []
        taken = (ct.c_uint64 * self._drops_given)()
        return taken[:self._lib.mn_json_taken_drops(self._h, taken, self._drops_given)]

    def _output(self, buf: ct.Array[ct.c_char]) -> None:
        self._out = buf
        self._lib.mn_json_output(self._h, buf, len(buf))

    def begin(self, data: bytes, count: int, stride: int, skip: int) -> None:
        """A poll's records: record i's struct event at ``i * stride + skip`` of ``data``."""
        self._data = data  # kept alive: C reads it until the next begin
        self._lib.mn_json_begin(self._h, data, count, stride, skip, self._res)

    def slow(self, indices: list[int]) -> None:
        """Records of the batch of ``begin`` that ``render`` stops at (NEED_SLOW): ascending indices."""
        self._slow = (_SZ * len(indices))(*indices)  # kept alive: C reads it until the next begin
        self._lib.mn_json_slow(self._h, self._slow, len(indices))

    def render(self, start: int) -> tuple[bytes, int, int, int]:
        """Lines for the records from ``start`` until one it cannot render: (text, index it stopped at,
        why (NEED_*), lines)."""
        while True:
            size = self._lib.mn_json_next(self._h, start)
            stop, need, lines = self._res
            if need == NEED_ROOM and lines == 0:  # one line did not fit: grow
                self._output(ct.create_string_buffer(2 * len(self._out)))
                continue
            return ct.string_at(self._out, size), stop, need, lines

    def events(self, count: int) -> list[int]:
        """Indices of the batch's records that end no flow (retransmit bursts, RTT shifts, resets, zero
        windows): ``render`` passes over them."""
        idx = (_SZ * count)()
        return idx[:self._lib.mn_json_events(self._h, idx, count)]

    def unresolved(self, data: bytes, count: int, stride: int, skip: int) -> list[int]:
        """Indices of the TCP end records whose owner or service the renderer has no text for, each new
        owner and service once (claimed now: ``set_owner`` then fills it)."""
        idx = (_SZ * count)()
        n = self._lib.mn_json_unresolved(self._h, data, count, stride, skip, idx, count)
        return idx[:n]


_LIB: ct.CDLL | None = None
_TRIED = False


def load() -> ct.CDLL | None:
    """The built library, or None (with a warning, the first time) where it is missing, stale or broken."""
    global _LIB, _TRIED
    if _TRIED:
        return _LIB
    _TRIED = True
    why = library_state()
    if not why:
        try:
            lib = ct.CDLL(str(LIBRARY))
            _bind(lib)
            _LIB = lib
            return lib
        except (OSError, AttributeError) as exc:
            why = f"{LIBRARY.name} does not load: {exc}"
    log.warning("capture --json renders its lines in Python (slower): %s", why)
    return None
