"""Anomalies (seed 002, §4): deviations of a destination or a process from its own history.

Every export period the node rolls its flows up per destination and per process. For each of those keys and
each metric (failure rate, p95 RTT, retransmissions per flow, flows attempted) an ``AnomalyDetector`` keeps
the last ``WINDOW`` per-period values and judges the current one against their median and MAD (median
absolute deviation). The median and the MAD ignore up to half the window being odd, where a mean and a
standard deviation (or an EWMA) let one bad period drag the baseline toward it and mask the next; and a
step change that persists becomes the new baseline once it fills half the window, so a new normal stops
being reported on its own.

A value is an anomaly when all of these hold:

- the key has at least ``MIN_HISTORY`` past periods that had at least ``MIN_SAMPLES`` flows;
- the current period has at least ``MIN_SAMPLES`` flows (two failures of three flows say nothing);
- it lies more than ``K`` robust standard deviations (1.4826 * MAD) from the median, in a direction that
  matters for the metric (RTT going down is not news; traffic volume matters both ways);
- it differs from the median by at least the metric's minimum absolute change and minimum relative change,
  so that a perfectly flat history (MAD 0) does not turn every wobble into an anomaly.

With ``seasonal=True`` the baseline is the history of the same UTC hour of day when that hour has
``MIN_HISTORY`` values of its own, so a nightly backup's traffic is compared with last night's, not with
the afternoon's; otherwise it falls back to the recent window. Each hour keeps its last ``WINDOW`` values,
so seasonal baselines are meant for hourly periods (or the node's history rolled up per hour): with
one-minute periods an hour's bucket would hold only the last 48 minutes of that hour.
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

from meshnode._model import FlowRecord
from meshnode.diagnosis._transaction import split_destination

if TYPE_CHECKING:
    from meshnode.sensor._base import EventRecord

WINDOW: Final = 48
"""Past periods per key and metric that the baseline is taken over."""

MIN_HISTORY: Final = 8
"""Past periods needed before a key can be anomalous."""

MIN_SAMPLES: Final = 20
"""Flows a period needs to count, for the baseline or as the current value."""

K: Final = 5.0
"""How many robust standard deviations from the median an anomaly lies."""

MAD_SCALE: Final = 1.4826
"""MAD * this estimates the standard deviation of normally distributed values."""

HOUR_NS: Final = 3600 * 1_000_000_000

DESTINATION: Final = "destination"
PROCESS: Final = "process"


@dataclass(frozen=True, slots=True)
class AnomalyMetric:
    """One metric watched for anomalies.

    Attributes:
        name: its key.
        words: how a human says it.
        unit: ``fraction``, ``us`` or ``count``.
        min_abs: the smallest change from the baseline that can be an anomaly.
        min_rel: the smallest change relative to the baseline that can be an anomaly.
        up_only: True when only an increase is bad news.
    """

    name: str
    words: str
    unit: str
    min_abs: float
    min_rel: float
    up_only: bool


ANOMALY_METRICS: Final = (
    AnomalyMetric("failure_rate", "failure rate", "fraction", 0.05, 0.0, True),
    AnomalyMetric("rtt_p95_us", "p95 RTT", "us", 1_000.0, 0.5, True),
    AnomalyMetric("retransmits_per_flow", "retransmits per flow", "count", 0.5, 0.5, True),
    AnomalyMetric("flows", "flows", "count", 20.0, 0.5, False),
)


class RollupLike(Protocol):
    """The fields of a period rollup (``meshnode.summary.Rollup`` or ``meshnode.v1.Rollup``) read here."""

    key: str
    flows: int
    retransmits: int
    rtt_p95_us: int

    @property
    def failures(self) -> Mapping[str, int]:
        """Failed flows by outcome."""


def metric_values(r: RollupLike) -> dict[str, float]:
    """The watched metrics of one rollup; p95 RTT only when the rollup has one."""
    out = {
        "failure_rate": sum(r.failures.values()) / r.flows if r.flows else 0.0,
        "retransmits_per_flow": r.retransmits / r.flows if r.flows else 0.0,
        "flows": float(r.flows),
    }
    if r.rtt_p95_us > 0:
        out["rtt_p95_us"] = float(r.rtt_p95_us)
    return out


@dataclass(frozen=True, slots=True)
class Baseline:
    """The centre and spread of a history."""

    median: float
    mad: float
    n: int


def baseline(history: Sequence[float]) -> Baseline:
    """Median and MAD of ``history`` (zeros for an empty one)."""
    if not history:
        return Baseline(0.0, 0.0, 0)
    med = float(statistics.median(history))
    mad = float(statistics.median(abs(x - med) for x in history))
    return Baseline(med, mad, len(history))


def deviation(
    history: Sequence[float], value: float, metric: AnomalyMetric, *, k: float = K, min_history: int = MIN_HISTORY
) -> float | None:
    """The robust score of ``value`` against ``history`` when it is an anomaly, else None.

    The score is the distance from the median in robust standard deviations (with the spread floored at
    ``min_abs / k``, so that a flat history gives a finite score).
    """
    if len(history) < min_history:
        return None
    b = baseline(history)
    diff = value - b.median
    if metric.up_only and diff <= 0:
        return None
    spread = MAD_SCALE * b.mad
    if abs(diff) <= k * spread:
        return None
    if abs(diff) < metric.min_abs or abs(diff) < metric.min_rel * abs(b.median):
        return None
    return abs(diff) / max(spread, metric.min_abs / k)


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One metric of one key out of line with its history in one period.

    Attributes:
        time_ns: the end of the period.
        scope: ``destination`` or ``process``.
        key: ``dst:dport`` or ``comm/pid``.
        metric: the metric's key.
        value: the period's value.
        baseline: the history's median.
        mad: the history's median absolute deviation.
        score: robust standard deviations from the median.
        direction: ``up`` or ``down``.
        samples: flows in the period.
        history: past periods the baseline was taken over.
        seasonal: True when the baseline was this hour of day's.
        detail: one line for a human.
    """

    time_ns: int
    scope: str
    key: str
    metric: str
    value: float
    baseline: float
    mad: float
    score: float
    direction: str
    samples: int
    history: int
    seasonal: bool
    detail: str

    def to_event(self) -> EventRecord:
        """The ``anomaly`` event the node emits; its flow names the destination or the process."""
        from meshnode.sensor._base import EventRecord

        if self.scope == DESTINATION:
            dst, dport = split_destination(self.key)
            flow = FlowRecord(flow_id=0, src="", sport=0, dst=dst, dport=dport, proto="tcp", direction="outbound")
        else:
            comm, _, pid = self.key.rpartition("/")
            flow = FlowRecord(flow_id=0, src="", sport=0, dst="", dport=0, proto="tcp", direction="outbound",
                              comm=comm, pid=int(pid) if pid.isdigit() else 0)
        return EventRecord(type="anomaly", time_ns=self.time_ns, flow=flow, value=self.score, detail=self.detail)


def _fmt(value: float, unit: str) -> str:
    if unit == "fraction":
        return f"{100 * value:.1f} %"
    if unit == "us":
        return f"{value / 1000:.1f} ms"
    return f"{value:.1f}" if value % 1 else f"{value:.0f}"


@dataclass(frozen=True, slots=True)
class AnomalyConfig:
    """The detector's thresholds (defaults: the module constants)."""

    window: int = WINDOW
    min_history: int = MIN_HISTORY
    min_samples: int = MIN_SAMPLES
    k: float = K
    seasonal: bool = False
    metrics: tuple[AnomalyMetric, ...] = ANOMALY_METRICS


class AnomalyDetector:
    """Baselines per (scope, key, metric) from this node's own periods, and the anomalies of each new one.

    Feed it every period, oldest first (``observe``); it keeps ``window`` values per key and metric (and per
    hour of day with ``seasonal``). Keys not seen for ``window`` periods are forgotten, so the state stays
    bounded by the keys of the recent past.
    """

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self._recent: dict[tuple[str, str, str], deque[float]] = {}
        self._hourly: dict[tuple[str, str, str, int], deque[float]] = {}
        self._last_seen: dict[tuple[str, str], int] = {}
        self._periods = 0

    def observe(
        self,
        period_end_ns: int,
        by_destination: Iterable[RollupLike] = (),
        by_process: Iterable[RollupLike] = (),
    ) -> list[Anomaly]:
        """Judge one period's rollups against the history, then add them to it; highest score first."""
        cfg = self.config
        self._periods += 1
        hour = (period_end_ns // HOUR_NS) % 24
        out: list[Anomaly] = []
        for scope, rollups in ((DESTINATION, by_destination), (PROCESS, by_process)):
            for r in rollups:
                self._last_seen[(scope, r.key)] = self._periods
                if r.flows < cfg.min_samples:
                    continue
                values = metric_values(r)
                for metric in cfg.metrics:
                    value = values.get(metric.name)
                    if value is None:
                        continue
                    ident = (scope, r.key, metric.name)
                    recent = self._recent.setdefault(ident, deque(maxlen=cfg.window))
                    hourly = self._hourly.setdefault((*ident, hour), deque(maxlen=cfg.window))
                    seasonal = cfg.seasonal and len(hourly) >= cfg.min_history
                    history = list(hourly if seasonal else recent)
                    score = deviation(history, value, metric, k=cfg.k, min_history=cfg.min_history)
                    if score is not None:
                        out.append(self._anomaly(period_end_ns, scope, r.key, metric, value, history, score,
                                                 int(r.flows), seasonal))
                    recent.append(value)
                    hourly.append(value)
        self._forget()
        return sorted(out, key=lambda a: (-a.score, a.scope, a.key, a.metric))

    def _anomaly(self, time_ns: int, scope: str, key: str, metric: AnomalyMetric, value: float,
                 history: list[float], score: float, samples: int, seasonal: bool) -> Anomaly:
        b = baseline(history)
        direction = "up" if value > b.median else "down"
        basis = "this hour's baseline" if seasonal else "baseline"
        detail = (f"{scope} {key}: {metric.words} {_fmt(value, metric.unit)} vs {basis} "
                  f"{_fmt(b.median, metric.unit)} (MAD {_fmt(b.mad, metric.unit)}, {score:.1f} sigma, "
                  f"{samples} flows)")
        return Anomaly(time_ns, scope, key, metric.name, value, b.median, b.mad, score, direction, samples,
                       b.n, seasonal, detail)

    def _forget(self) -> None:
        horizon = self._periods - self.config.window
        stale = {k for k, seen in self._last_seen.items() if seen < horizon}
        if not stale:
            return
        for k in stale:
            del self._last_seen[k]
        self._recent = {i: d for i, d in self._recent.items() if (i[0], i[1]) not in stale}
        self._hourly = {i: d for i, d in self._hourly.items() if (i[0], i[1]) not in stale}

    def keys(self) -> int:
        """How many (scope, key) pairs have a history (for status and metrics)."""
        return len(self._last_seen)
