"""meshctl's human durations, times and sizes (pure functions)."""

from __future__ import annotations

import pytest

from meshnode.cli._exceptions import UsageError
from meshnode.cli._units import (
    format_bytes,
    format_clock,
    format_count,
    format_percent,
    format_seconds,
    format_us,
    parse_duration,
    parse_time_ns,
)

NS = 1_000_000_000


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("5m", 300), ("1h30m", 5400), ("250ms", 0.25), ("2d", 172800), ("1h0m5s", 3605),
     ("42", 42), ("1.5m", 90), (" 5M ", 300)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "5x", "m5", "5m3", "1h 30m", "-5", "five minutes", "5m5x"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(UsageError):
        parse_duration(text)


def test_parse_time_ns_duration_counts_back_from_now() -> None:
    now = 1_795_000_000 * NS
    assert parse_time_ns("5m", now) == now - 300 * NS
    assert parse_time_ns("1h30m", now) == now - 5400 * NS


@pytest.mark.parametrize(
    ("text", "epoch_s"),
    [("2026-11-23T17:30:00Z", 1795455000), ("2026-11-23T18:30:00+01:00", 1795455000),
     ("2026-11-23T17:30:00", 1795455000), ("2026-11-23T17:30:00.5Z", 1795455000.5)],
)
def test_parse_time_ns_rfc3339(text: str, epoch_s: float) -> None:
    assert parse_time_ns(text, 0) == int(epoch_s * NS)


def test_parse_time_ns_rejects_bad_timestamp() -> None:
    with pytest.raises(UsageError, match="RFC3339"):
        parse_time_ns("2026-13-45T99:00:00Z", 0)


@pytest.mark.parametrize(
    ("n", "text"),
    [(0, "0 B"), (999, "999 B"), (1000, "1.0 KiB"), (1300, "1.3 KiB"), (10 * 1024, "10 KiB"),
     (1_258_291, "1.2 MiB"), (52_428_800, "50 MiB"), (1023 * 1024, "1.0 MiB"), (5 * 1024**4, "5.0 TiB")],
)
def test_format_bytes(n: int, text: str) -> None:
    assert format_bytes(n) == text
    assert len(text) <= 7


@pytest.mark.parametrize(
    ("us", "text"), [(0, "-"), (850, "850us"), (1200, "1.2ms"), (45_000, "45.0ms"), (250_000, "250ms"),
                     (3_400_000, "3.4s")],
)
def test_format_us(us: int, text: str) -> None:
    assert format_us(us) == text


@pytest.mark.parametrize(
    ("s", "text"), [(0, "0s"), (0.25, "0.2s"), (45, "45s"), (300, "5m"), (5400, "1h30m"), (9000, "2h30m"),
                    (90061, "1d1h"), (125, "2m5s")],
)
def test_format_seconds(s: float, text: str) -> None:
    assert format_seconds(s) == text


def test_format_percent_count_clock() -> None:
    assert format_percent(None) == "-"
    assert format_percent(0.95) == "95.0%"
    assert format_percent(0.99999) == "100%"
    assert format_count(1234) == "1,234"
    assert format_count(123_456) == "123k"
    assert format_count(12_345_678) == "12.3M"
    assert format_clock(0) == "-"
    assert format_clock(1795455000 * NS) == "17:30:00"
    assert format_clock(1795455000 * NS, date=True) == "2026-11-23T17:30:00Z"
