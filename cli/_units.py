"""Human durations, times and sizes: parsing what people type, formatting what they read.

Pure functions with no imports beyond the standard library, so ``meshctl --help`` stays fast.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Final

from meshnode.cli._exceptions import UsageError

_UNIT_S: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_RE: Final = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NS: Final = 1_000_000_000


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90s``, ``5m``, ``1h30m``, ``250ms``, ``2d``; a bare number means seconds.

    Raises:
        UsageError: when ``text`` is not a duration.
    """
    s = text.strip().lower()
    try:
        value = float(s)
    except ValueError:
        pass
    else:
        if value < 0:
            raise UsageError(f"'{text}' is negative; durations count back from now, so give e.g. 5m")
        return value
    pos, total = 0, 0.0
    for m in _DURATION_RE.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos == 0 or pos != len(s):
        raise UsageError(f"'{text}' is not a duration (examples: 90s, 5m, 1h30m) or an RFC3339 time")
    return total


def parse_time_ns(text: str, now_ns: int) -> int:
    """Wall-clock UTC nanoseconds for ``text``: a duration ago (``5m``) or an RFC3339 timestamp.

    Raises:
        UsageError: when ``text`` is neither.
    """
    s = text.strip()
    if "T" in s or "-" in s[1:]:
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00").replace("z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"'{text}' is not an RFC3339 time (example: 2026-11-23T17:30:00Z) or a duration"
            ) from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        return int(dt.timestamp() * _NS)
    return now_ns - int(parse_duration(s) * _NS)


def format_bytes(n: int | float) -> str:
    """``1.2 MiB``-style sizes (binary units), at most 7 characters below 1,000 TiB: one decimal under 10,
    none above (``12 MiB``), the next unit from 1,000 on (``1.0 MiB``, not ``1000 KiB``)."""
    value = float(n)
    if value < 1000:
        return f"{int(value)} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        value /= 1024
        if value < 999.5 or unit == "TiB":
            return f"{value:.1f} {unit}" if value < 9.95 else f"{value:.0f} {unit}"
    return f"{value:.0f} TiB"  # pragma: no cover - loop always returns


def format_us(us: int | float) -> str:
    """A microsecond duration for humans: ``850us``, ``1.2ms``, ``3.4s``; ``-`` for zero (not measured)."""
    if not us:
        return "-"
    if us < 1000:
        return f"{int(us)}us"
    if us < 1_000_000:
        ms = us / 1000
        return f"{ms:.1f}ms" if ms < 100 else f"{ms:.0f}ms"
    return f"{us / 1_000_000:.1f}s"


def format_seconds(s: float) -> str:
    """A duration in seconds as ``45s``, ``5m``, ``1h30m``, ``3d4h``."""
    total = round(s)
    if total < 60:
        return f"{s:.0f}s" if s >= 1 or s == 0 else f"{s:.1f}s"
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m{secs}s" if secs else f"{minutes}m"


def format_clock(ns: int, *, date: bool = False) -> str:
    """``17:50:12`` (UTC) for wall-clock nanoseconds, with the date when asked; ``-`` for zero."""
    if not ns:
        return "-"
    dt = datetime.fromtimestamp(ns / _NS, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ" if date else "%H:%M:%S")


def format_percent(fraction: float | None) -> str:
    """``97.5%``; ``-`` when there is nothing to divide."""
    if fraction is None:
        return "-"
    pct = fraction * 100
    return "100%" if pct >= 99.95 else f"{pct:.1f}%"


def format_count(n: int) -> str:
    """``1,234``; ``12.3k`` and ``4.5M`` past 100,000 so columns stay narrow."""
    if n < 100_000:
        return f"{n:,}"
    if n < 10_000_000:
        return f"{n / 1000:.0f}k"
    return f"{n / 1_000_000:.1f}M"


def printable(text: str) -> str:
    """``text`` with each character a terminal would not print as itself (control characters, C1 codes,
    bidirectional overrides) as ``?``: names come from the host, and a process names itself (``prctl``), so
    an escape sequence in one would reach the terminal as a command."""
    return text if text.isprintable() else "".join(c if c.isprintable() else "?" for c in text)


def process(comm: str, pid: int, width: int = 0, thread: str = "") -> str:
    """``curl/1234``, ``dig[isc-net-0000]/1234`` when a thread other than the main one used the socket;
    ``?`` for flows the sensor could not attribute.

    Within ``width`` the pid is kept and the thread's name is shortened first (``dig[is…]/12345``), then
    dropped, then the process's name is shortened (``fakecli…/777``): which program it was matters most.
    """
    name = printable(comm) or "?"
    thread = printable(thread)
    suffix = f"/{pid}" if pid else ""
    tag = f"[{thread}]" if thread else ""
    if not width or len(name) + len(tag) + len(suffix) <= width:
        return name + tag + suffix
    room = width - len(name) - len(suffix) - 2
    if thread and room >= 2:
        return f"{name}[{thread[:room - 1]}…]{suffix}"
    if len(name) + len(suffix) > width:
        name = name[: max(1, width - len(suffix) - 1)] + "…"
    return name + suffix
