"""Label aggregation: the health of a destination as seen from a host, a site, a region or the fleet.

Pure functions over verified digests. Hosts are grouped along a label order (``region > site > host`` by
default; a group is the path of label values, so site ``ams1`` of region ``eu`` is ``eu/ams1``). Counts
are summed, but per-host values (useful fraction, RTT percentiles) are combined with a robust centre,
the median by default, so that one broken or lying host cannot move a group's answer on its own (seed
000: majority voting; seed 003: trimmed mean). Every answer says how many hosts contributed and how
fresh their data is.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from meshnode.v1 import mesh_pb2

DEFAULT_LABEL_ORDER: Final = ("region", "site", "host")
"""Coarse to fine."""

FLEET: Final = "fleet"
"""The group of the whole fleet."""

MISSING_LABEL: Final = "-"
"""The value of a label a host does not carry."""

Center = Callable[[Sequence[float]], float]
"""Combines one value per host into one value per group."""


def median(values: Sequence[float]) -> float:
    """The median (the mean of the middle two for an even count)."""
    return float(statistics.median(values))


def trimmed_mean(fraction: float) -> Center:
    """A centre that drops ``fraction`` of the values at each end, then averages (seed 003)."""

    def center(values: Sequence[float]) -> float:
        xs = sorted(values)
        cut = int(len(xs) * fraction)
        kept = xs[cut : len(xs) - cut] or xs
        return sum(kept) / len(kept)

    return center


@dataclass(frozen=True, slots=True)
class HostReport:
    """One host's rollup of one destination, from its latest digest."""

    node_id: str
    labels: Mapping[str, str]
    destination: str
    attempts: int
    useful: int
    failures: Mapping[str, int]
    bytes_tx: int
    bytes_rx: int
    retransmits: int
    rtt_p50_us: int
    rtt_p95_us: int
    period_end_ns: int
    service: str = ""


def host_reports(digests: Iterable[mesh_pb2.Digest]) -> list[HostReport]:
    """Flatten digests (one per node: the latest) into per-host, per-destination reports."""
    out: list[HostReport] = []
    for d in digests:
        labels = dict(d.labels)
        for r in d.by_destination:
            out.append(HostReport(
                node_id=d.node_id, labels=labels, destination=r.key, attempts=r.flows, useful=r.useful,
                failures=dict(r.failures), bytes_tx=r.bytes_tx, bytes_rx=r.bytes_rx,
                retransmits=r.retransmits, rtt_p50_us=r.rtt_p50_us, rtt_p95_us=r.rtt_p95_us,
                period_end_ns=d.period_end_ns, service=r.service,
            ))
    return out


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The health of one destination as seen from one group of hosts.

    Attributes:
        level: the label grouped by (``"site"``), or ``"fleet"``.
        group: the label path (``"eu/ams1"``), or ``"fleet"``.
        destination: the destination key.
        hosts: hosts that contributed.
        attempts: summed attempts.
        useful: summed useful flows.
        failures: summed failures by outcome.
        bytes_tx: summed payload bytes sent.
        bytes_rx: summed payload bytes received.
        retransmits: summed retransmits.
        useful_fraction: the centre (median) over hosts with attempts of useful / attempts; None without.
        rtt_p50_us: the centre over hosts with an RTT of their p50; None without.
        rtt_p95_us: the centre over hosts with an RTT of their p95; None without.
        newest_age_s: age of the freshest contributing digest (since its period ended).
        oldest_age_s: age of the stalest contributing digest.
        node_ids: the contributing hosts, sorted.
    """

    level: str
    group: str
    destination: str
    hosts: int
    attempts: int
    useful: int
    failures: dict[str, int] = field(default_factory=dict)
    bytes_tx: int = 0
    bytes_rx: int = 0
    retransmits: int = 0
    useful_fraction: float | None = None
    rtt_p50_us: float | None = None
    rtt_p95_us: float | None = None
    newest_age_s: float = 0.0
    oldest_age_s: float = 0.0
    node_ids: tuple[str, ...] = ()


def group_of(labels: Mapping[str, str], level: str | None, order: Sequence[str] = DEFAULT_LABEL_ORDER) -> str:
    """The group a host with ``labels`` falls in when grouping by ``level``.

    ``None`` or ``"fleet"`` is the whole fleet; a level in ``order`` is the path down to it
    (``eu/ams1``); any other label is its value alone.
    """
    if level is None or level == FLEET:
        return FLEET
    if level in order:
        path = order[: order.index(level) + 1]
        return "/".join(labels.get(k) or MISSING_LABEL for k in path)
    return labels.get(level) or MISSING_LABEL


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    """True when ``labels`` carry every ``key=value`` of ``selector`` (an empty selector matches all)."""
    return all(labels.get(k) == v for k, v in selector.items())


def combine(
    reports: Sequence[HostReport], *, level: str, group: str, now_ns: int, center: Center = median
) -> Aggregate:
    """One group's answer for one destination; ``reports`` hold one report per host."""
    failures: Counter[str] = Counter()
    for r in reports:
        failures.update(r.failures)
    fractions = [r.useful / r.attempts for r in reports if r.attempts > 0]
    p50 = [float(r.rtt_p50_us) for r in reports if r.rtt_p50_us > 0]
    p95 = [float(r.rtt_p95_us) for r in reports if r.rtt_p95_us > 0]
    ages = [max(0.0, (now_ns - r.period_end_ns) / 1e9) for r in reports]
    return Aggregate(
        level=level,
        group=group,
        destination=reports[0].destination if reports else "",
        hosts=len({r.node_id for r in reports}),
        attempts=sum(r.attempts for r in reports),
        useful=sum(r.useful for r in reports),
        failures=dict(sorted(failures.items())),
        bytes_tx=sum(r.bytes_tx for r in reports),
        bytes_rx=sum(r.bytes_rx for r in reports),
        retransmits=sum(r.retransmits for r in reports),
        useful_fraction=center(fractions) if fractions else None,
        rtt_p50_us=center(p50) if p50 else None,
        rtt_p95_us=center(p95) if p95 else None,
        newest_age_s=min(ages, default=0.0),
        oldest_age_s=max(ages, default=0.0),
        node_ids=tuple(sorted({r.node_id for r in reports})),
    )


def aggregate(
    reports: Iterable[HostReport],
    *,
    now_ns: int,
    group_by: str | None = None,
    destination: str | None = None,
    selector: Mapping[str, str] | None = None,
    order: Sequence[str] = DEFAULT_LABEL_ORDER,
    max_age_s: float | None = None,
    center: Center = median,
    service: str | None = None,
) -> list[Aggregate]:
    """Health per (group, destination), sorted by group then destination.

    Args:
        reports: per-host reports (``host_reports`` of the latest digest of each node).
        now_ns: wall-clock now, for ages.
        group_by: a label (``"region"``, ``"site"``, ``"host"``), or None for the whole fleet.
        destination: only this destination; None for all.
        selector: only hosts whose labels match all of these.
        order: the label order, coarse to fine.
        max_age_s: leave out reports older than this.
        center: how per-host values are combined (median, or ``trimmed_mean(0.2)``...).
        service: only destinations of this service name.
    """
    groups: dict[tuple[str, str], list[HostReport]] = {}
    for r in reports:
        if destination is not None and r.destination != destination:
            continue
        if service is not None and r.service != service:
            continue
        if selector and not matches(r.labels, selector):
            continue
        if max_age_s is not None and (now_ns - r.period_end_ns) / 1e9 > max_age_s:
            continue
        groups.setdefault((group_of(r.labels, group_by, order), r.destination), []).append(r)
    level = group_by or FLEET
    return [
        combine(rs, level=level, group=g, now_ns=now_ns, center=center)
        for (g, _), rs in sorted(groups.items())
    ]


def health_of(
    reports: Iterable[HostReport],
    destination: str,
    *,
    now_ns: int,
    scope: Mapping[str, str] | None = None,
    max_age_s: float | None = None,
    center: Center = median,
) -> Aggregate | None:
    """"Health of ``destination`` as seen from ``scope``": ``{"site": "ams1"}``, ``{"region": "eu"}``, or
    None / ``{}`` for the fleet. None when no host in scope reported on it."""
    rows = aggregate(reports, now_ns=now_ns, destination=destination, selector=scope or {},
                     max_age_s=max_age_s, center=center)
    if not rows:
        return None
    level = ",".join(f"{k}={v}" for k, v in sorted((scope or {}).items())) or FLEET
    return dataclasses.replace(rows[0], level=level, group=level)


def hierarchy(
    reports: Iterable[HostReport],
    destination: str,
    *,
    now_ns: int,
    order: Sequence[str] = DEFAULT_LABEL_ORDER,
    max_age_s: float | None = None,
    center: Center = median,
) -> list[Aggregate]:
    """The fleet, then every group at every level of ``order``, for one destination (a drill-down)."""
    rs = list(reports)
    out = aggregate(rs, now_ns=now_ns, destination=destination, max_age_s=max_age_s, center=center)
    for level in order:
        out.extend(aggregate(rs, now_ns=now_ns, group_by=level, destination=destination, order=order,
                             max_age_s=max_age_s, center=center))
    return out
