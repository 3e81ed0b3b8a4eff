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

Hour of day (``seasonal``, the default): traffic that recurs at the same time every day (a nightly backup,
a morning batch) is judged against the same UTC hour on previous days too. Each clock hour, every key's
per-period values of that hour are rolled up into their median ("this hour on that day"); the last
``SEASON_DAYS`` days of each hour are kept. When the hour has at least ``MIN_SEASON_DAYS`` previous days, a
value is an anomaly only when it is out of line with both the recent window (which a persisting change
joins within half a window, so a new normal stops being news) and this hour's medians (so what this hour
always does is not news); a key with too little recent history (one seen only at night) is judged by its
hour alone. Otherwise the recent window alone judges. A burst shorter than half its hour leaves the hour's
median alone, so a nightly burst of a few minutes is still reported each night.

The hour rollups are small (one value per key, metric and hour) and are what a restart needs beyond the
last hour: ``take_rolled`` hands each closed hour's to the node, which keeps them in its store, and
``load`` puts them back at start (``meshnode.diagnosis._history``), so the verdicts after a restart are
those the node would have given without one.
"""

from __future__ import annotations

import json
import statistics
from collections import OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Protocol

import numpy as np

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
DAY_NS: Final = 24 * HOUR_NS

SEASON_DAYS: Final = 7
"""Previous days of each hour of day kept per key and metric (the store's default retention is a week)."""

MIN_SEASON_DAYS: Final = 3
"""Previous days an hour needs before its own baseline takes part."""

MAX_HOUR_VALUES: Final = 720
"""Per-period values an hour's median is taken over per key and metric (an hour of 5 s periods); beyond,
every other one is kept, and then every fourth..., the same ones whether or not the node restarted."""

MAX_SEASONAL_KEYS: Final = 4_096
"""Keys (scope and key) with hour-of-day history; the least recently rolled go first (``seasonal_evicted``)."""

MAX_ROLLED: Final = 100_000
"""Hour rollups waiting for ``take_rolled``; beyond, the oldest are dropped (``rolled_dropped``)."""

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
    seasonal: bool = True
    season_days: int = SEASON_DAYS
    min_season_days: int = MIN_SEASON_DAYS
    max_seasonal_keys: int = MAX_SEASONAL_KEYS
    metrics: tuple[AnomalyMetric, ...] = ANOMALY_METRICS


@dataclass(frozen=True, slots=True)
class HourBaseline:
    """One key's clock hour rolled up: the median of each metric over the hour's periods that counted.

    Attributes:
        hour_ns: the start of the UTC clock hour.
        scope: ``destination`` or ``process``.
        key: ``dst:dport`` or ``comm/pid``.
        medians: metric key -> median.
    """

    hour_ns: int
    scope: str
    key: str
    medians: dict[str, float]

    def to_row(self) -> tuple[int, str, str, str]:
        """The store's row (``Store.record_hour_baselines``)."""
        return self.hour_ns, self.scope, self.key, json.dumps(self.medians, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_row(cls, row: tuple[int, str, str, str]) -> HourBaseline:
        """Inverse of ``to_row``."""
        hour_ns, scope, key, data = row
        return cls(int(hour_ns), scope, key, {str(k): float(v) for k, v in json.loads(data).items()})


class _Season:
    """One key's hour-of-day history: ``days[h, d % n]`` is the day whose medians ``medians[h, d % n, m]``
    hold (NaN: no value of metric ``m`` that hour), -1 when empty. Arrays, not deques: 24 hours x a week
    of 4 metrics per key."""

    __slots__ = ("days", "medians")

    def __init__(self, days: int, metrics: int) -> None:
        self.days = np.full((24, days), -1, dtype=np.int64)
        self.medians = np.full((24, days, metrics), np.nan, dtype=np.float32)


class _HourValues:
    """One key and metric's values in the clock hour being accumulated, every ``stride``-th kept."""

    __slots__ = ("seen", "stride", "values")

    def __init__(self) -> None:
        self.values: list[float] = []
        self.stride = 1
        self.seen = 0

    def add(self, value: float) -> None:
        if self.seen % self.stride == 0:
            self.values.append(value)
            if len(self.values) >= MAX_HOUR_VALUES:
                del self.values[1::2]
                self.stride *= 2
        self.seen += 1


class AnomalyDetector:
    """Baselines per (scope, key, metric) from this node's own periods, and the anomalies of each new one.

    Feed it every period, oldest first (``observe``); it keeps ``window`` values per key and metric, and with
    ``seasonal`` the medians of each hour of day on the last ``season_days`` days (module docstring). Keys
    not seen for ``window`` periods leave the recent window, and keys with no hour in ``season_days`` days
    leave the hourly history, so the state stays bounded by the keys of the recent past.
    """

    def __init__(self, config: AnomalyConfig | None = None) -> None:
        self.config = config or AnomalyConfig()
        self._recent: dict[tuple[str, str, str], deque[float]] = {}
        self._last_seen: dict[tuple[str, str], int] = {}
        self._periods = 0
        self._hour_ns: int | None = None
        self._hour: dict[tuple[str, str, str], _HourValues] = {}
        self._seasons: OrderedDict[tuple[str, str], _Season] = OrderedDict()
        self._rolled: deque[HourBaseline] = deque()
        self.seasonal_evicted = 0
        """Keys whose hourly history was dropped to keep ``max_seasonal_keys``."""
        self.rolled_dropped = 0
        """Hour rollups dropped before anyone took them (``MAX_ROLLED``)."""

    def observe(
        self,
        period_end_ns: int,
        by_destination: Iterable[RollupLike] = (),
        by_process: Iterable[RollupLike] = (),
    ) -> list[Anomaly]:
        """Judge one period's rollups against the history, then add them to it; highest score first."""
        cfg = self.config
        self._periods += 1
        hour_ns = (period_end_ns - 1) // HOUR_NS * HOUR_NS  # a period ending at 03:00:00 belongs to 02:00
        if self._hour_ns is not None and hour_ns != self._hour_ns:
            self._roll()
        self._hour_ns = hour_ns
        day, hour = divmod(hour_ns // HOUR_NS, 24)
        out: list[Anomaly] = []
        for scope, rollups in ((DESTINATION, by_destination), (PROCESS, by_process)):
            for r in rollups:
                self._last_seen[(scope, r.key)] = self._periods
                if r.flows < cfg.min_samples:
                    continue
                values = metric_values(r)
                past = self._past(self._seasons.get((scope, r.key)), hour, day) if cfg.seasonal else None
                for m, metric in enumerate(cfg.metrics):
                    value = values.get(metric.name)
                    if value is None:
                        continue
                    ident = (scope, r.key, metric.name)
                    recent = self._recent.setdefault(ident, deque(maxlen=cfg.window))
                    found = self._judge(list(recent), past[m] if past else [], value, metric)
                    if found is not None:
                        history, score, seasonal = found
                        out.append(self._anomaly(period_end_ns, scope, r.key, metric, value, history, score,
                                                 int(r.flows), seasonal))
                    recent.append(value)
                    if cfg.seasonal:
                        held = self._hour.get(ident)
                        if held is None:
                            held = self._hour[ident] = _HourValues()
                        held.add(value)
        self._forget()
        return sorted(out, key=lambda a: (-a.score, a.scope, a.key, a.metric))

    def _judge(self, recent: list[float], past: list[float], value: float,
               metric: AnomalyMetric) -> tuple[list[float], float, bool] | None:
        """``(history, score, seasonal)`` when ``value`` is an anomaly (module docstring), else None."""
        cfg = self.config
        score = deviation(recent, value, metric, k=cfg.k, min_history=cfg.min_history)
        if len(past) < cfg.min_season_days:
            return None if score is None else (recent, score, False)
        hour_score = deviation(past, value, metric, k=cfg.k, min_history=cfg.min_season_days)
        if hour_score is None:
            return None
        # with a recent window, both must see it, on the same side: the window knows today, the hour the day
        if len(recent) >= cfg.min_history and (
                score is None or (value - statistics.median(recent)) * (value - statistics.median(past)) <= 0):
            return None
        return past, hour_score, True

    def _past(self, season: _Season | None, hour: int, day: int) -> list[list[float]] | None:
        """This hour's medians on the previous ``season_days`` days (not today's), per metric."""
        if season is None:
            return None
        days = season.days[hour]
        held = (days >= day - self.config.season_days) & (days < day)
        if not held.any():
            return None
        return [[v for v in column if v == v] for column in season.medians[hour, held].T.tolist()]  # v != NaN

    def _roll(self) -> None:
        """Close the accumulated clock hour: each key's medians into its hourly history and ``_rolled``."""
        assert self._hour_ns is not None
        medians: dict[tuple[str, str], dict[str, float]] = {}
        for (scope, key, metric), held in self._hour.items():
            if held.values:
                medians.setdefault((scope, key), {})[metric] = float(statistics.median(held.values))
        self._hour = {}
        for (scope, key), m in medians.items():
            hb = HourBaseline(self._hour_ns, scope, key, m)
            self._apply(hb)
            self._rolled.append(hb)
        while len(self._rolled) > MAX_ROLLED:
            self._rolled.popleft()
            self.rolled_dropped += 1
        oldest = self._hour_ns // DAY_NS - self.config.season_days
        for k in [k for k, s in self._seasons.items() if int(s.days.max()) < oldest]:
            del self._seasons[k]

    def _apply(self, hb: HourBaseline) -> None:
        cfg = self.config
        ident = (hb.scope, hb.key)
        season = self._seasons.get(ident)
        if season is None:
            season = self._seasons[ident] = _Season(cfg.season_days, len(cfg.metrics))
            while len(self._seasons) > cfg.max_seasonal_keys:
                self._seasons.popitem(last=False)
                self.seasonal_evicted += 1
        self._seasons.move_to_end(ident)
        day, hour = divmod(hb.hour_ns // HOUR_NS, 24)
        slot = day % cfg.season_days
        if season.days[hour, slot] > day:
            return  # a newer day holds the slot
        season.days[hour, slot] = day
        season.medians[hour, slot] = [hb.medians.get(m.name, np.nan) for m in cfg.metrics]

    def load(self, hours: Iterable[HourBaseline]) -> int:
        """Put back hours rolled before (oldest first; what the store kept): a restart's hourly history.
        Returns how many were taken."""
        n = 0
        for hb in hours:
            self._apply(hb)
            n += 1
        return n

    def take_rolled(self) -> list[HourBaseline]:
        """The hours rolled up since the last call, for the store (``HourBaseline.to_row``)."""
        out = list(self._rolled)
        self._rolled.clear()
        return out

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

    def keys(self) -> int:
        """How many (scope, key) pairs have a recent history (for status and metrics)."""
        return len(self._last_seen)

    def seasonal_keys(self) -> int:
        """How many (scope, key) pairs have an hourly history."""
        return len(self._seasons)
