"""Label aggregation: the health of a destination as seen from a host, a site, a region or the fleet.

Pure functions over verified digests. Hosts are grouped along a label order (``region > site > host`` by
default; a group is the path of label values, so site ``ams1`` of region ``eu`` is ``eu/ams1``).

A member can publish any numbers it likes, so every figure is built so that one host cannot move it by
more than its share:

* each host's values are first clamped to what one host can do in its period (``HostLimits``: flows,
  bytes and packets per second, TCP's RTT ceiling), and a report that needed it is marked ``clamped``;
* totals (attempts, useful, failures, bytes, retransmits) stay sums, because a user needs "how much", but
  they saturate at the wire field's limit (``U64_MAX``) and the row says how many of its hosts were clamped:
  a host still moves a total by up to its clamp, so a total is a figure to read beside the robust ones;
* per-host figures are combined with a robust centre: the median for the useful and failure fractions and
  the RTT percentiles (one value per host; seed 000: majority), the trimmed mean for the per-host rates
  (attempts, bytes and retransmits per second; seed 003: the lowest and highest reports are dropped, the
  rest averaged). With one liar among three or more hosts, each centre stays within the honest hosts'
  range; ``hosts x rate x period`` is then a total the liar moves only by its share.

Every answer says how many hosts contributed, were trimmed or clamped, and how fresh their data is.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from meshnode.v1 import flow_pb2, mesh_pb2

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
    """A centre that drops ``fraction`` of the values at each end, then averages (seed 003).

    A positive ``fraction`` drops at least the lowest and the highest value once there are three or more
    (seed 003 discards the minimum and maximum results): with one liar among three hosts, the centre is
    still an honest host's value. ``fraction`` 0 is the plain mean.
    """

    def center(values: Sequence[float]) -> float:
        xs = sorted(values)
        cut = trimmed_count(len(xs), fraction) // 2
        kept = xs[cut : len(xs) - cut]
        return sum(kept) / len(kept)

    return center


def trimmed_count(n: int, fraction: float) -> int:
    """Values ``trimmed_mean(fraction)`` drops out of ``n``: ``fraction`` of them at each end, at least one
    at each end when ``fraction`` is positive; none when that would drop them all."""
    cut = int(n * fraction)
    if fraction > 0:
        cut = max(cut, 1)
    return 0 if n - 2 * cut <= 0 else 2 * cut


RATE_TRIM: Final = 0.2
"""The fraction of hosts the rates' trimmed mean drops at each end (at least one; seed 003)."""

U64_MAX: Final = 2**64 - 1
"""The largest value of a ``uint64`` field: fleet sums stop there rather than overflow the wire message."""


@dataclass(frozen=True, slots=True)
class HostLimits:
    """What one host can plausibly report for one destination in one export period.

    A digest's value above its limit is counted at the limit (the report is marked ``clamped``). The limits
    are physical, per second of the digest's period (``period_end_ns - period_start_ns``, taken between
    ``min_period_s`` and ``max_period_s``), and far above what a real host reports: they exist to stop a
    number like 2**63, not to judge a busy host, which cross-validation does.

    Attributes:
        flows_per_s: new flows a host can start each second: 1,000,000 (the fastest many-core servers
            accept a few hundred thousand TCP connections a second).
        open_flows: flows open at once, each reported once per period while it lasts: 2**24 (sixteen times
            ``fs.nr_open``'s default of 2**20 file descriptors a process may hold).
        bytes_per_s: payload bytes a host can move each way each second: 100 GB/s (800 Gbit/s, twice a
            400 GbE NIC, and more than loopback copies on today's hosts).
        packets_per_s: packets each second (retransmits are packets): ``bytes_per_s`` in 64-byte frames,
            the smallest Ethernet frame.
        rtt_us: the longest RTT a host can measure: 120 s, TCP's retransmission-timer ceiling
            (``TCP_RTO_MAX``): a segment unacknowledged for longer has been retransmitted, and Karn's rule
            takes no sample from it.
        min_period_s: the shortest period the limits assume (a shorter or inverted one counts as this).
        max_period_s: the longest: 86,400 s, the longest ``export_period`` a node accepts.
    """

    flows_per_s: int = 1_000_000
    open_flows: int = 2**24
    bytes_per_s: int = 100 * 10**9
    packets_per_s: int = 100 * 10**9 // 64
    rtt_us: int = 120_000_000
    min_period_s: float = 1.0
    max_period_s: float = 86_400.0

    def period_s(self, start_ns: int, end_ns: int) -> float:
        """The period length the limits scale with."""
        return min(self.max_period_s, max(self.min_period_s, (end_ns - start_ns) / 1e9))

    def flows(self, period_s: float) -> int:
        """The most flows one host can report in ``period_s``."""
        return self.open_flows + int(self.flows_per_s * period_s)

    def bytes(self, period_s: float) -> int:
        """The most payload bytes one host can move one way in ``period_s``."""
        return int(self.bytes_per_s * period_s)

    def packets(self, period_s: float) -> int:
        """The most packets one host can send in ``period_s``."""
        return int(self.packets_per_s * period_s)


HOST_LIMITS: Final = HostLimits()
"""The limits fleet queries apply."""


@dataclass(frozen=True, slots=True)
class HostReport:
    """One host's rollup of one destination, from its latest digest.

    ``period_s`` is the digest's period as the limits take it (rates are per second of it); ``clamped`` is
    True when a value was above ``HostLimits`` and is counted at the limit.
    """

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
    period_s: float = HOST_LIMITS.max_period_s
    clamped: bool = False


_CLAMPED_FIELDS: Final = ("attempts", "useful", "failures", "bytes_tx", "bytes_rx", "retransmits", "rtt_p50_us",
                          "rtt_p95_us")


def clamp_rollup(
    r: flow_pb2.Rollup, period_s: float, limits: HostLimits = HOST_LIMITS
) -> tuple[dict[str, Any], bool]:
    """The counters of ``r`` clamped to ``limits`` for ``period_s`` (``HostReport`` field names), and whether
    any was above its limit. Useful flows and each failure count are at most the (clamped) attempts."""
    *values, clamped = _clamp(r, limits.flows(period_s), limits.bytes(period_s), limits.packets(period_s),
                              limits.rtt_us)
    return dict(zip(_CLAMPED_FIELDS, values, strict=True)), clamped


def _clamp(r: flow_pb2.Rollup, max_flows: int, max_bytes: int, max_packets: int, max_rtt: int) -> tuple[Any, ...]:
    """``clamp_rollup`` as a tuple in ``HostReport``'s field order, ``clamped`` last (a fleet query makes one per
    host and destination: it is kept cheap for the reports that need no clamping)."""
    flows, useful, failures = r.flows, r.useful, dict(r.failures)
    tx, rx, retx, p50, p95 = r.bytes_tx, r.bytes_rx, r.retransmits, r.rtt_p50_us, r.rtt_p95_us
    if (flows <= max_flows and useful <= flows and tx <= max_bytes and rx <= max_bytes and retx <= max_packets
            and p50 <= max_rtt and p95 <= max_rtt and max(failures.values(), default=0) <= flows):
        return flows, useful, failures, tx, rx, retx, p50, p95, False
    flows = min(flows, max_flows)
    return (flows, min(useful, flows), {k: min(v, flows) for k, v in failures.items()}, min(tx, max_bytes),
            min(rx, max_bytes), min(retx, max_packets), min(p50, max_rtt), min(p95, max_rtt), True)


def host_reports(digests: Iterable[mesh_pb2.Digest], limits: HostLimits = HOST_LIMITS) -> list[HostReport]:
    """Flatten digests (one per node: the latest) into per-host, per-destination reports, clamped to
    ``limits``.

    A host has one report per destination: a repeated key (which ``verify_digest`` refuses) counts once.
    """
    out: list[HostReport] = []
    for d in digests:
        node, end, labels = d.node_id, d.period_end_ns, dict(d.labels)
        period_s = limits.period_s(d.period_start_ns, end)
        caps = (limits.flows(period_s), limits.bytes(period_s), limits.packets(period_s), limits.rtt_us)
        seen: set[str] = set()
        for r in d.by_destination:
            key = r.key
            if key in seen:
                continue
            seen.add(key)
            flows, useful, failures, tx, rx, retx, p50, p95, clamped = _clamp(r, *caps)
            out.append(HostReport(node, labels, key, flows, useful, failures, tx, rx, retx, p50, p95, end,
                                  r.service, period_s, clamped))
    return out


def saturating_sum(values: Iterable[int], limit: int = U64_MAX) -> int:
    """The sum of ``values``, at most ``limit`` (the wire field's largest value)."""
    return min(limit, sum(values))


@dataclass(frozen=True, slots=True)
class Aggregate:
    """The health of one destination as seen from one group of hosts.

    Attributes:
        level: the label grouped by (``"site"``), or ``"fleet"``.
        group: the label path (``"eu/ams1"``), or ``"fleet"``.
        destination: the destination key.
        hosts: hosts that contributed.
        attempts: summed attempts (each host's clamped; saturating at ``U64_MAX``).
        useful: summed useful flows (likewise).
        failures: summed failures by outcome (likewise).
        bytes_tx: summed payload bytes sent (likewise).
        bytes_rx: summed payload bytes received (likewise).
        retransmits: summed retransmits (likewise).
        useful_fraction: the centre (median) over hosts with attempts of useful / attempts; None without.
        rtt_p50_us: the centre over hosts with an RTT of their p50; None without.
        rtt_p95_us: the centre over hosts with an RTT of their p95; None without.
        newest_age_s: age of the freshest contributing digest (since its period ended).
        oldest_age_s: age of the stalest contributing digest.
        node_ids: the contributing hosts, sorted.
        failure_fraction: per outcome, the centre over hosts with attempts of that outcome's failures /
            attempts (0 for a host without that outcome).
        attempts_per_s: the rate centre (trimmed mean) over hosts of each host's attempts per second.
        bytes_tx_per_s: the same of payload bytes sent per second.
        bytes_rx_per_s: the same of payload bytes received per second.
        retransmits_per_s: the same of retransmits per second.
        hosts_trimmed: hosts the rate centre dropped as extremes.
        hosts_clamped: hosts whose reports were above ``HostLimits`` and are counted at the limit.
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
    failure_fraction: dict[str, float] = field(default_factory=dict)
    attempts_per_s: float | None = None
    bytes_tx_per_s: float | None = None
    bytes_rx_per_s: float | None = None
    retransmits_per_s: float | None = None
    hosts_trimmed: int = 0
    hosts_clamped: int = 0


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
    reports: Sequence[HostReport],
    *,
    level: str,
    group: str,
    now_ns: int,
    center: Center = median,
    rate_trim: float = RATE_TRIM,
) -> Aggregate:
    """One group's answer for one destination; ``reports`` hold one report per host."""
    failures: Counter[str] = Counter()
    for r in reports:
        failures.update(r.failures)
    tried = [r for r in reports if r.attempts > 0]
    p50 = [float(r.rtt_p50_us) for r in reports if r.rtt_p50_us > 0]
    p95 = [float(r.rtt_p95_us) for r in reports if r.rtt_p95_us > 0]
    ages = [max(0.0, (now_ns - r.period_end_ns) / 1e9) for r in reports]
    rate = trimmed_mean(rate_trim)

    def per_s(value: Callable[[HostReport], int]) -> float | None:
        return rate([value(r) / r.period_s for r in reports]) if reports else None

    return Aggregate(
        level=level,
        group=group,
        destination=reports[0].destination if reports else "",
        hosts=len({r.node_id for r in reports}),
        attempts=saturating_sum(r.attempts for r in reports),
        useful=saturating_sum(r.useful for r in reports),
        failures={k: min(v, U64_MAX) for k, v in sorted(failures.items())},
        bytes_tx=saturating_sum(r.bytes_tx for r in reports),
        bytes_rx=saturating_sum(r.bytes_rx for r in reports),
        retransmits=saturating_sum(r.retransmits for r in reports),
        useful_fraction=center([r.useful / r.attempts for r in tried]) if tried else None,
        rtt_p50_us=center(p50) if p50 else None,
        rtt_p95_us=center(p95) if p95 else None,
        newest_age_s=min(ages, default=0.0),
        oldest_age_s=max(ages, default=0.0),
        node_ids=tuple(sorted({r.node_id for r in reports})),
        failure_fraction={k: center([r.failures.get(k, 0) / r.attempts for r in tried])
                          for k in sorted(failures) if tried},
        attempts_per_s=per_s(lambda r: r.attempts),
        bytes_tx_per_s=per_s(lambda r: r.bytes_tx),
        bytes_rx_per_s=per_s(lambda r: r.bytes_rx),
        retransmits_per_s=per_s(lambda r: r.retransmits),
        hosts_trimmed=trimmed_count(len(reports), rate_trim),
        hosts_clamped=sum(1 for r in reports if r.clamped),
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


@dataclass(frozen=True, slots=True)
class TrustedAggregates:
    """Label aggregates built without the flagged hosts (what a FleetQuery answers).

    Attributes:
        rows: the aggregates of the hosts not excluded, as ``aggregate`` returns them.
        excluded: the flagged hosts whose reports were left out, sorted.
        left_out: per ``(group, destination)``, how many flagged hosts reported it (rows only flagged hosts
            reported are here and not in ``rows``).
    """

    rows: list[Aggregate]
    excluded: tuple[str, ...]
    left_out: dict[tuple[str, str], int]


def trusted_aggregate(reports: Iterable[HostReport], *, excluded: Iterable[str], now_ns: int,
                      **kwargs: Any) -> TrustedAggregates:
    """``aggregate`` over the reports of hosts not ``excluded`` (flagged by trust: seed 000's corrupted
    reports left out first; the robust centres then bound what any one remaining host can move).

    Args:
        reports: per-host reports (``host_reports`` of the latest digests).
        excluded: flagged hosts (``meshnode.trust.TrustMonitor.excluded``).
        now_ns: wall-clock now.
        **kwargs: passed to ``aggregate`` (``group_by``, ``destination``, ``selector``, ``service``...).
    """
    out = set(excluded)
    rs = list(reports)
    rows = aggregate([r for r in rs if r.node_id not in out], now_ns=now_ns, **kwargs)
    flagged = aggregate([r for r in rs if r.node_id in out], now_ns=now_ns, **kwargs)
    return TrustedAggregates(rows, tuple(sorted({r.node_id for r in rs if r.node_id in out})),
                             {(a.group, a.destination): a.hosts for a in flagged})


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
