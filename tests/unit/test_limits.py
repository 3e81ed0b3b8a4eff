"""The limited_by rule (meshnode.sensor._limits), table-driven over pairs of tcp_info samples."""

from __future__ import annotations

import dataclasses

import pytest

from meshnode.probes._sockdiag import TcpInfo
from meshnode.sensor._limits import (
    APP_MAX_BUSY_SHARE,
    LIMITED_MIN_SHARE,
    MIN_FLOW_DATA_SEGS,
    MIN_INTERVAL_US,
    classify,
    limited_by,
)

SEC = 1_000_000

BASE = TcpInfo(
    busy_time=0, rwnd_limited=0, sndbuf_limited=0, bytes_acked=1, bytes_received=0, data_segs_out=0,
    total_retrans=0, snd_cwnd=10, unacked=0, lost=0,
)


def after(**deltas: int) -> TcpInfo:
    """BASE advanced by cumulative deltas; keys ending in ``_now`` set instantaneous fields."""
    changes = {}
    for k, v in deltas.items():
        if k.endswith("_now"):
            changes[k[:-4]] = v
        else:
            changes[k] = getattr(BASE, k) + v
    return dataclasses.replace(BASE, **changes)


BULK = {"bytes_acked": 50_000_000, "data_segs_out": 1000}

CASES = [
    # (id, prev, cur, elapsed_us, expected)
    ("idle connection", BASE, after(data_segs_out=20, bytes_acked=2000), SEC, "app"),
    ("trickle sender", BASE, after(busy_time=40_000, data_segs_out=20, bytes_acked=4000), SEC, "app"),
    ("busy just under app share", BASE,
     after(busy_time=int(APP_MAX_BUSY_SHARE * SEC) - 1, data_segs_out=20, bytes_acked=1), SEC, "app"),
    ("receiver stopped reading", BASE, after(busy_time=SEC, rwnd_limited=SEC, data_segs_out=2), SEC,
     "receiver_window"),
    ("rwnd at the share threshold", BASE,
     after(busy_time=SEC, rwnd_limited=int(LIMITED_MIN_SHARE * SEC), **BULK), SEC, "receiver_window"),
    ("rwnd just under the threshold, no congestion evidence", BASE,
     after(busy_time=SEC, rwnd_limited=int(LIMITED_MIN_SHARE * SEC) - 1, **BULK), SEC, "unknown"),
    ("send buffer too small", BASE, after(busy_time=SEC, sndbuf_limited=600_000, **BULK), SEC, "send_buffer"),
    ("both stalls, rwnd larger", BASE,
     after(busy_time=SEC, rwnd_limited=500_000, sndbuf_limited=300_000, **BULK), SEC, "receiver_window"),
    ("both stalls, sndbuf larger", BASE,
     after(busy_time=SEC, rwnd_limited=300_000, sndbuf_limited=500_000, **BULK), SEC, "send_buffer"),
    ("both stalls, tie", BASE,
     after(busy_time=SEC, rwnd_limited=400_000, sndbuf_limited=400_000, **BULK), SEC, "receiver_window"),
    ("busy with retransmits", BASE, after(busy_time=SEC, total_retrans=3, **BULK), SEC, "congestion"),
    ("busy and cwnd-bound", BASE, after(busy_time=SEC, unacked_now=9, snd_cwnd_now=10, **BULK), SEC,
     "congestion"),
    ("busy with lost segments", BASE, after(busy_time=SEC, lost_now=2, **BULK), SEC, "congestion"),
    ("busy, no evidence", BASE, after(busy_time=SEC, unacked_now=2, snd_cwnd_now=40, **BULK), SEC,
     "unknown"),
    ("receiving side", BASE, after(bytes_received=10_000_000, data_segs_out=20, bytes_acked=100), SEC,
     "unknown"),
    ("too short a flow", BASE, after(data_segs_out=MIN_FLOW_DATA_SEGS - 1, bytes_acked=900), SEC, "unknown"),
    ("just long enough", BASE, after(data_segs_out=MIN_FLOW_DATA_SEGS, bytes_acked=900), SEC, "app"),
    ("zero elapsed", BASE, after(busy_time=SEC, rwnd_limited=SEC, **BULK), 0, "unknown"),
    ("negative elapsed", BASE, after(busy_time=SEC, rwnd_limited=SEC, **BULK), -5, "unknown"),
    ("interval too short", BASE, after(busy_time=50_000, rwnd_limited=50_000, **BULK), MIN_INTERVAL_US - 1,
     "unknown"),
    ("interval at minimum", BASE, after(busy_time=MIN_INTERVAL_US, rwnd_limited=MIN_INTERVAL_US, **BULK),
     MIN_INTERVAL_US, "receiver_window"),
    ("busy_time went backwards", after(busy_time=SEC, **BULK), after(busy_time=10, rwnd_limited=10, **BULK),
     SEC, "unknown"),
    ("bytes_acked went backwards", after(bytes_acked=10**6, data_segs_out=100), after(data_segs_out=200), SEC,
     "unknown"),
    ("kernel without chrono timers", dataclasses.replace(BASE, busy_time=None),
     dataclasses.replace(after(**BULK), busy_time=None), SEC, "unknown"),
    ("no cwnd in the later sample", BASE, dataclasses.replace(after(busy_time=SEC, **BULK), snd_cwnd=None),
     SEC, "unknown"),
    ("no samples", None, None, SEC, "unknown"),
    ("empty tcp_info", TcpInfo(), TcpInfo(), SEC, "unknown"),
]


@pytest.mark.parametrize(("prev", "cur", "elapsed_us", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_limited_by(prev, cur, elapsed_us, expected):
    verdict = classify(prev, cur, elapsed_us)
    assert verdict.limited_by == expected, verdict.reason
    assert limited_by(prev, cur, elapsed_us) == expected
    assert verdict.reason


def test_reason_names_the_counter_that_went_backwards():
    v = classify(after(busy_time=SEC, **BULK), after(**BULK), SEC)
    assert "busy_time" in v.reason


def test_verdicts_are_model_limits():
    from meshnode._model import LIMITS

    assert {c[4] for c in CASES} <= set(LIMITS)
