"""Anomalies from the node's own history: step changes found within a period or two, noise left alone."""

from __future__ import annotations

import random
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
from tests._support.anomaly import DAY0, DB, FIVE_MIN, HOUR, PERIOD, T0, R, backup_days, noisy


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


def verdicts(det: AnomalyDetector, series: list[tuple[int, R]]) -> dict[int, list[Any]]:
    return {end: det.observe(end, [r]) for end, r in series}


def in_hour(found: dict[int, list[Any]], day: int, hour: int) -> list[Any]:
    start = DAY0 + day * 24 * HOUR + hour * HOUR
    return [a for end, got in found.items() if start < end <= start + HOUR for a in got]


def test_a_nightly_spike_at_0200_is_expected_on_day_n_while_the_same_spike_at_1400_is_news() -> None:
    series = backup_days(4, spike_at=14)
    seasonal = verdicts(AnomalyDetector(), series)
    plain = verdicts(AnomalyDetector(AnomalyConfig(seasonal=False)), series)
    # the first nights have no hour of their own yet: the recent window (the evening before) flags the backup
    for day in range(3):
        assert [a.metric for a in in_hour(seasonal, day, 2)][:1] == ["flows"]
    # day 3 (three nights held): 02:00 is what this hour always does, 14:00 is not
    assert in_hour(seasonal, 3, 2) == []
    news = in_hour(seasonal, 3, 14)
    assert news and news[0].metric == "flows" and news[0].seasonal and news[0].direction == "up"
    assert news[0].time_ns == DAY0 + 3 * 24 * HOUR + 14 * HOUR + FIVE_MIN  # the spike's first period
    assert "vs this hour's baseline 2" in news[0].detail and news[0].history == 3  # 3 days of 14:00's median
    # without the hour of day, the recent window alone flags the backup every night
    assert [a.metric for a in in_hour(plain, 3, 2)][:1] == ["flows"]
    # nothing else, all four days, in either hour-aware verdict
    assert [end for end, got in seasonal.items() if got and (end - 1) // HOUR % 24 not in (2, 14)] == []


def test_hours_are_rolled_up_as_medians_and_a_new_normal_stops_being_news() -> None:
    det = AnomalyDetector()
    series = backup_days(4)
    verdicts(det, series)
    rolled = det.take_rolled()
    assert len(rolled) == 4 * 24 - 1  # every hour but the one in progress
    assert rolled[0].hour_ns == DAY0 and rolled[2].hour_ns == DAY0 + 2 * HOUR
    assert 1900 < rolled[2].medians["flows"] < 2100 and 190 < rolled[3].medians["flows"] < 210
    assert det.take_rolled() == [] and det.seasonal_keys() == 1
    # a step that persists on day 4 at 10:00: reported at first, then the recent window learns it although
    # 10:00 never did this before
    rng = random.Random(9)
    start = DAY0 + 4 * 24 * HOUR
    step = [(start + i * FIVE_MIN, noisy(rng, flows=600 if i > 120 else 200)) for i in range(1, 150)]
    found = verdicts(det, step)
    flagged = [end for end, got in found.items() if any(a.metric == "flows" for a in got)]
    assert flagged and flagged[0] == start + 121 * FIVE_MIN
    assert flagged[-1] < start + 149 * FIVE_MIN


def test_a_key_seen_only_at_night_is_judged_by_its_hour() -> None:
    """The backup target is forgotten by the recent window every day; its hour still knows it."""
    rng = random.Random(3)
    det = AnomalyDetector()
    found: dict[int, list[Any]] = {}
    for day in range(5):
        for i in range(1, 13):
            end = DAY0 + day * 24 * HOUR + 2 * HOUR + i * FIVE_MIN
            flows = 200 if day == 4 else 2000  # on day 4 the backup moves a tenth of what it used to
            found[end] = det.observe(end, [noisy(rng, flows=flows, key="10.9.9.9:873")])
        det.observe(DAY0 + day * 24 * HOUR + 12 * HOUR, [])  # the rest of the day: other keys
        for _ in range(50):
            det.observe(DAY0 + day * 24 * HOUR + 13 * HOUR, [])
    day4 = in_hour(found, 4, 2)
    assert day4 and day4[0].metric == "flows" and day4[0].direction == "down" and day4[0].seasonal
    assert all(not in_hour(found, d, 2) for d in range(4))


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
