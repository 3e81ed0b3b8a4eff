"""Anomalies from the node's own history: step changes found within a period or two, noise left alone."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meshnode.diagnosis import (
    ANOMALY_METRICS,
    AnomalyConfig,
    AnomalyDetector,
    baseline,
    deviation,
)
from meshnode.sensor import EVENT_TYPES

S = 1_000_000_000
T0 = 1_700_000_000 * S
PERIOD = 60 * S
DB = "10.0.2.3:5432"


@dataclass
class R:
    """A period rollup (the fields ``meshnode.summary.Rollup`` has)."""

    key: str
    flows: int
    failures: dict[str, int] = field(default_factory=dict)
    retransmits: int = 0
    rtt_p95_us: int = 0


def noisy(rng: random.Random, *, fail: float = 0.01, rtt: float = 1100, flows: int = 200, retrans: float = 0.05,
          key: str = DB) -> R:
    n = max(1, int(rng.gauss(flows, flows * 0.05)))
    failed = sum(1 for _ in range(n) if rng.random() < fail)
    return R(key, n, {"timeout": failed} if failed else {}, int(n * retrans * rng.uniform(0.5, 1.5)),
             int(rng.gauss(rtt, rtt * 0.08)))


def run(series: list[R], det: AnomalyDetector | None = None, start: int = 0) -> list[list[str]]:
    det = det or AnomalyDetector()
    return [[a.metric for a in det.observe(T0 + (start + i) * PERIOD, [r])] for i, r in enumerate(series)]


@pytest.mark.parametrize("seed", range(10))
def test_noise_is_not_flagged(seed: int) -> None:
    rng = random.Random(seed)
    flagged = run([noisy(rng) for _ in range(300)])
    assert sum(map(len, flagged)) == 0


@pytest.mark.parametrize(("metric", "after"), [
    ("failure_rate", dict(fail=0.15)),
    ("rtt_p95_us", dict(rtt=4000)),
    ("retransmits_per_flow", dict(retrans=2.0)),
    ("flows", dict(flows=900)),
    ("flows", dict(flows=40)),
])
@pytest.mark.parametrize("seed", range(5))
def test_step_change_is_detected_in_its_first_period(metric: str, after: dict[str, Any], seed: int) -> None:
    rng = random.Random(seed)
    series = [noisy(rng) for _ in range(30)] + [noisy(rng, **after) for _ in range(40)]
    flagged = run(series)
    assert all(not f for f in flagged[:30])
    assert metric in flagged[30]
    assert metric in flagged[31]
    # a step that persists becomes the new normal once it fills half the window
    assert all(metric not in f for f in flagged[30 + 48 // 2 + 2:])


def test_small_periods_are_not_judged_and_improvements_are_not_news() -> None:
    rng = random.Random(1)
    det = AnomalyDetector()
    run([noisy(rng) for _ in range(20)], det)
    assert det.observe(T0 + 100 * PERIOD, [R(DB, 5, {"timeout": 5}, 0, 90_000)]) == []
    assert det.observe(T0 + 101 * PERIOD, [R(DB, 200, {}, 0, 200)]) == []  # faster and no failures


def test_too_little_history_is_not_judged() -> None:
    rng = random.Random(2)
    flagged = run([noisy(rng) for _ in range(7)] + [noisy(rng, fail=0.5)])
    assert flagged[-1] == []
    flagged = run([noisy(rng) for _ in range(8)] + [noisy(rng, fail=0.5)])
    assert flagged[-1] == ["failure_rate"]


def test_anomaly_record_and_event() -> None:
    rng = random.Random(3)
    det = AnomalyDetector()
    run([noisy(rng) for _ in range(20)], det)
    [a] = det.observe(T0 + 20 * PERIOD, [R(DB, 200, {"refused": 60}, 10, 1100)])
    assert (a.scope, a.key, a.metric, a.direction, a.samples, a.history) == (
        "destination", DB, "failure_rate", "up", 200, 20)
    assert a.value == 0.3 and a.baseline < 0.03 and a.score > 5
    assert a.detail.startswith(f"destination {DB}: failure rate 30.0 % vs baseline ")
    ev = a.to_event()
    assert ev.type == "anomaly" and ev.type in EVENT_TYPES
    assert (ev.time_ns, ev.flow.dst, ev.flow.dport, ev.value, ev.detail) == (a.time_ns, "10.0.2.3", 5432, a.score,
                                                                             a.detail)


def test_process_scope_names_the_process() -> None:
    rng = random.Random(4)
    det = AnomalyDetector()
    for i in range(20):
        det.observe(T0 + i * PERIOD, by_process=[noisy(rng, key="backup/4242")])
    [a] = det.observe(T0 + 20 * PERIOD, by_process=[noisy(rng, key="backup/4242", rtt=9000)])
    assert (a.scope, a.metric) == ("process", "rtt_p95_us")
    ev = a.to_event()
    assert (ev.flow.comm, ev.flow.pid) == ("backup", 4242)


def test_flat_history_needs_the_minimum_change() -> None:
    flat = [1000.0] * 20
    rtt = next(m for m in ANOMALY_METRICS if m.name == "rtt_p95_us")
    assert baseline(flat).mad == 0
    assert deviation(flat, 1500.0, rtt) is None  # 0.5 ms: below the 1 ms minimum change
    score = deviation(flat, 2500.0, rtt)
    assert score is not None and score == pytest.approx(7.5)


def test_seasonal_baseline_expects_the_nightly_backup() -> None:
    """Hourly periods over two weeks: every night at 02:00 traffic to the backup target jumps."""
    hourly = 3600 * S
    day0 = (T0 // (24 * hourly)) * 24 * hourly

    def series(det: AnomalyDetector) -> list[list[str]]:
        rng = random.Random(5)
        out = []
        for h in range(14 * 24):
            flows = 2000 if h % 24 == 2 else 200
            out.append([a.metric for a in det.observe(day0 + h * hourly, [noisy(rng, flows=flows)])])
        return out

    plain = series(AnomalyDetector())
    seasonal = series(AnomalyDetector(AnomalyConfig(seasonal=True)))
    nights = [h for h in range(14 * 24) if h % 24 == 2]
    assert all("flows" in plain[h] for h in nights[2:])  # the recent window only knows daytime traffic
    assert not any("flows" in seasonal[h] for h in nights[9:])  # after 8 nights the hour has its own baseline
    assert not any(seasonal[h] for h in range(14 * 24) if h % 24 != 2)


def test_forgotten_keys_keep_the_state_bounded() -> None:
    rng = random.Random(6)
    det = AnomalyDetector(AnomalyConfig(window=10))
    for i in range(30):
        det.observe(T0 + i * PERIOD, [noisy(rng, key=f"10.0.0.{i}:80")])
    assert det.keys() <= 11


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=8, max_size=48), st.floats(-0.049, 0.049))
def test_changes_below_the_minimum_are_never_anomalies(history: list[float], delta: float) -> None:
    rate = next(m for m in ANOMALY_METRICS if m.name == "failure_rate")
    centre = baseline(history).median
    assert deviation(history, centre + delta, rate) is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0, 0.02), min_size=8, max_size=48), st.floats(0.3, 1))
def test_a_jump_far_beyond_a_tight_history_is_always_an_anomaly(history: list[float], value: float) -> None:
    rate = next(m for m in ANOMALY_METRICS if m.name == "failure_rate")
    score = deviation(history, value, rate)
    assert score is not None and score > 5
