"""The failure taxonomy of seed 004: service-discovery chatter, retries that ignore outage inertia, and
(seed 001) whether a slow transaction was slowed by its path or by its server.

**Service-discovery chatter.** mDNS, SSDP, NetBIOS, LLMNR, DHCP and WS-Discovery ask a broadcast or
multicast group (or a well-known port) "is anybody there?", and most questions get no answer on that flow:
the answer, if any, comes from another address. Seed 004 finds such flows among the biggest sources of
"failures" on healthy hosts, and leaves them out of health. Here they get a category of their own,
``discovery``, so that health and blame never see them, while ``discovery_chatter`` still shows who is
chattering and how much.

**Outage inertia.** Seed 004, §4.1: the longer an outage has lasted, the longer it is likely to last, yet
applications retry at a fixed interval (80 % of retries within a minute while the 80th percentile outage
lasted 53 minutes), so a long outage turns into thousands of failed flows that load the very service that
is struggling. ``retry_advice`` finds, per process and destination, outages (first failure to the next
success) and the retry interval during them; when a process makes more than ``MAX_ATTEMPTS_PER_OUTAGE``
attempts per outage at a fixed interval, it suggests exponential backoff and says how many attempts
doubling would have made instead.

**Slow path or slow server.** Seed 001: end-to-end slowness is not easily attributed to its source unless
the application's phases are related to what the network did meanwhile. The sensor times each flow's
phases in the kernel (connect, first byte, each request to the first byte of its answer) beside its RTT and
retransmissions, so a degraded transaction has a *cause* (``cause_of``): ``path`` when the network was slow
to carry it (retransmitted segments, a round trip swollen by a queue, a SYN that had to be sent again),
``server`` when the answers were late while the round trip stayed normal (``slow_server``), ``failure``
when it did not happen at all. ``slowness`` names what a set of problems says about an entity: failing,
slow to carry, slow to answer, or degraded when neither cause dominates.
"""

from __future__ import annotations

import ipaddress
import itertools
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from meshnode._model import FAILED_OUTCOMES, USEFUL_OUTCOMES
from meshnode.summary._problems import CONNECT_PENDING, PATH_KINDS, SERVER_KINDS

if TYPE_CHECKING:
    from meshnode._model import FlowRecord

DISCOVERY_PORTS: Final = {
    67: "dhcp", 68: "dhcp", 137: "netbios-ns", 138: "netbios-dgm", 1900: "ssdp", 3702: "ws-discovery",
    5353: "mdns", 5355: "llmnr",
}
"""UDP destination ports of service-discovery protocols, with the protocol's name."""

USEFUL: Final = "useful"
FAILURE: Final = "failure"
DISCOVERY: Final = "discovery"
IN_PROGRESS: Final = "in_progress"
CATEGORIES: Final = (USEFUL, FAILURE, DISCOVERY, IN_PROGRESS)

MAX_ATTEMPTS_PER_OUTAGE: Final = 10
"""More failed attempts than this in one outage is retrying faster than outages end (seed 004: hosts made
11 failed flows a minute through a day-long outage)."""

FIXED_INTERVAL_CV: Final = 0.5
"""Retry gaps whose coefficient of variation is below this are a fixed interval (with jitter); a process
that backs off has gaps that grow, so their spread is large."""

BACKOFF_GROWTH: Final = 1.5
"""A process whose late gaps in an outage are this many times its early gaps is already backing off."""

MIN_OUTAGE_ATTEMPTS: Final = 3
"""Fewer failed attempts than this is not an outage worth judging (no interval to speak of)."""

BACKOFF_CAP_S: Final = 300.0
"""The cap of the suggested exponential backoff, for the "attempts with backoff" estimate."""


CAUSE_FAILURE: Final = "failure"
CAUSE_PATH: Final = "path"
CAUSE_SERVER: Final = "server"
CAUSES: Final = (CAUSE_FAILURE, CAUSE_PATH, CAUSE_SERVER)

FAILING: Final = "failing"
SLOW_TO_CARRY: Final = "slow to carry"
SLOW_TO_ANSWER: Final = "slow to answer"
DEGRADED: Final = "degraded"
SLOWNESS: Final = (FAILING, SLOW_TO_CARRY, SLOW_TO_ANSWER, DEGRADED)
"""What ``slowness`` says of an entity's problems, worst first."""


def cause_of(kind: str) -> str:
    """The cause of one problem kind (``problem_kind``): ``failure``, ``path``, ``server``, "" for ``ok``."""
    if kind in FAILED_OUTCOMES or kind == CONNECT_PENDING:
        return CAUSE_FAILURE
    if kind in PATH_KINDS:
        return CAUSE_PATH
    if kind in SERVER_KINDS:
        return CAUSE_SERVER
    return ""


def slowness(problem_kinds: Mapping[str, int]) -> str:
    """What an entity's problems (kind -> transactions) say: ``failing`` when at least half did not happen,
    else ``slow to carry`` or ``slow to answer`` when at least two thirds of the degraded ones have that
    cause, else ``degraded``."""
    by_cause: Counter[str] = Counter()
    for kind, n in problem_kinds.items():
        by_cause[cause_of(kind)] += n
    total = sum(problem_kinds.values())
    if not total or 2 * by_cause[CAUSE_FAILURE] >= total:
        return FAILING
    slow = by_cause[CAUSE_PATH] + by_cause[CAUSE_SERVER]
    if slow and 3 * by_cause[CAUSE_PATH] >= 2 * slow:
        return SLOW_TO_CARRY
    if slow and 3 * by_cause[CAUSE_SERVER] >= 2 * slow:
        return SLOW_TO_ANSWER
    return DEGRADED


def _is_broadcast_or_multicast(addr: str) -> bool:
    try:
        ip = ipaddress.ip_address(addr)
    except ValueError:
        return False
    if ip.is_multicast:
        return True
    return isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255")


def discovery_protocol(rec: FlowRecord) -> str:
    """The discovery protocol of a UDP flow (``"mdns"``, ``"ssdp"``...), ``"broadcast"`` or
    ``"multicast"`` for other group traffic, "" when the flow is not discovery traffic."""
    if rec.proto != "udp" or rec.direction != "outbound":
        return ""
    name = DISCOVERY_PORTS.get(rec.dport)
    if name:
        return name
    if _is_broadcast_or_multicast(rec.dst):
        return "multicast" if ipaddress.ip_address(rec.dst).is_multicast else "broadcast"
    return ""


def is_discovery(rec: FlowRecord) -> bool:
    """True for an unanswered outbound UDP flow to a discovery port or a broadcast/multicast address.

    Answered discovery flows are ordinary useful flows and stay in health.
    """
    return rec.outcome == "udp_unanswered" and bool(discovery_protocol(rec))


def classify(rec: FlowRecord) -> str:
    """The category of a flow: ``useful``, ``failure``, ``discovery`` or ``in_progress``."""
    if is_discovery(rec):
        return DISCOVERY
    if rec.outcome in USEFUL_OUTCOMES:
        return USEFUL
    if rec.outcome in FAILED_OUTCOMES:
        return FAILURE
    return IN_PROGRESS


def split_discovery(records: Iterable[FlowRecord]) -> tuple[list[FlowRecord], list[FlowRecord]]:
    """``(the rest, discovery chatter)``: what health should count, and what it should not."""
    rest: list[FlowRecord] = []
    chatter: list[FlowRecord] = []
    for rec in records:
        (chatter if is_discovery(rec) else rest).append(rec)
    return rest, chatter


@dataclass(frozen=True, slots=True)
class DiscoveryChatter:
    """One process's unanswered discovery traffic of one protocol.

    Attributes:
        comm: the process name.
        protocol: ``mdns``, ``ssdp``, ``netbios-ns``..., ``broadcast`` or ``multicast``.
        flows: unanswered flows.
        destinations: distinct destination addresses.
    """

    comm: str
    protocol: str
    flows: int
    destinations: int


def discovery_chatter(records: Iterable[FlowRecord]) -> list[DiscoveryChatter]:
    """Unanswered discovery flows per (process, protocol); most flows first."""
    flows: Counter[tuple[str, str]] = Counter()
    dsts: dict[tuple[str, str], set[str]] = defaultdict(set)
    for rec in records:
        if is_discovery(rec):
            key = (rec.comm, discovery_protocol(rec))
            flows[key] += 1
            dsts[key].add(rec.dst)
    out = [DiscoveryChatter(c, p, n, len(dsts[(c, p)])) for (c, p), n in flows.items()]
    return sorted(out, key=lambda d: (-d.flows, d.comm, d.protocol))


# ---------------------------------------------------------------------------------------------- retries


@dataclass(frozen=True, slots=True)
class Outage:
    """One run of failures of a process to a destination.

    Attributes:
        first_failure_ns: start of the first failed attempt.
        end_ns: start of the first successful attempt after it, or of the last failure when the outage had
            not ended when the records stop.
        attempts: failed attempts in the outage.
        ended: True when a success ended it.
        gaps_ms: the intervals between consecutive failed attempts.
    """

    first_failure_ns: int
    end_ns: int
    attempts: int
    ended: bool
    gaps_ms: tuple[float, ...]

    @property
    def duration_ms(self) -> float:
        """From the first failure to the first success (or the last failure, if it had not ended)."""
        return (self.end_ns - self.first_failure_ns) / 1e6


def outages(attempts: Sequence[tuple[int, bool]]) -> list[Outage]:
    """The outages in one process's attempts to one destination.

    Args:
        attempts: ``(start_ns, succeeded)`` per attempt, in any order.
    """
    out: list[Outage] = []
    run: list[int] = []
    for start, ok in sorted(attempts):
        if not ok:
            run.append(start)
            continue
        if run:
            out.append(_outage(run, start, ended=True))
            run = []
    if run:
        out.append(_outage(run, run[-1], ended=False))
    return out


def _outage(starts: list[int], end_ns: int, *, ended: bool) -> Outage:
    gaps = tuple((b - a) / 1e6 for a, b in itertools.pairwise(starts))
    return Outage(starts[0], end_ns, len(starts), ended, gaps)


def backoff_attempts(interval_s: float, duration_s: float, cap_s: float = BACKOFF_CAP_S) -> int:
    """How many attempts exponential backoff (``interval_s`` doubling up to ``cap_s``) makes in
    ``duration_s``: the comparison seed 004 asks for."""
    if interval_s <= 0 or duration_s <= 0:
        return 1
    n, t, gap = 1, 0.0, interval_s
    while t + gap <= duration_s:
        t += gap
        n += 1
        gap = min(gap * 2, cap_s)
    return n


@dataclass(frozen=True, slots=True)
class RetryAdvice:
    """How one process retries one destination through its outages, and what to do about it.

    Attributes:
        comm: the process name.
        pid: the process id.
        destination: ``dst:dport``.
        outages: outages seen (at least ``MIN_OUTAGE_ATTEMPTS`` failures each).
        attempts: failed attempts in them.
        attempts_per_outage: the median failed attempts per outage.
        retry_interval_ms: the median gap between failed attempts.
        outage_p50_ms: the median outage duration.
        outage_max_ms: the longest outage.
        fixed_interval: True when the gaps do not grow (coefficient of variation below
            ``FIXED_INTERVAL_CV`` and no growth by ``BACKOFF_GROWTH``).
        suggest_backoff: True when it retries faster than outages end: more than
            ``MAX_ATTEMPTS_PER_OUTAGE`` per outage at a fixed interval.
        attempts_with_backoff: attempts exponential backoff would have made in the longest outage.
        suggestion: one line for a human.
    """

    comm: str
    pid: int
    destination: str
    outages: int
    attempts: int
    attempts_per_outage: float
    retry_interval_ms: float
    outage_p50_ms: float
    outage_max_ms: float
    fixed_interval: bool
    suggest_backoff: bool
    attempts_with_backoff: int
    suggestion: str


def _fmt_s(ms: float) -> str:
    s = ms / 1000
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _is_fixed(gaps: Sequence[float]) -> bool:
    if len(gaps) < 2:
        return True
    mean = statistics.fmean(gaps)
    if mean <= 0:
        return True
    cv = statistics.pstdev(gaps) / mean
    half = len(gaps) // 2
    early = statistics.median(gaps[:half])
    late = statistics.median(gaps[half:])
    growing = early > 0 and late / early >= BACKOFF_GROWTH
    return cv < FIXED_INTERVAL_CV and not growing


def retry_advice(
    records: Iterable[FlowRecord],
    *,
    max_attempts_per_outage: int = MAX_ATTEMPTS_PER_OUTAGE,
    min_outage_attempts: int = MIN_OUTAGE_ATTEMPTS,
) -> list[RetryAdvice]:
    """Retry behaviour per (process, destination) of outbound flows; the worst (most attempts) first.

    Discovery chatter is left out (it fails by design and has no outage to end). Only groups with at
    least one outage of ``min_outage_attempts`` failures are returned.
    """
    groups: dict[tuple[str, int, str], list[tuple[int, bool]]] = defaultdict(list)
    for rec in records:
        if rec.direction != "outbound" or is_discovery(rec):
            continue
        if rec.outcome in FAILED_OUTCOMES or rec.outcome in USEFUL_OUTCOMES:
            groups[(rec.comm, rec.pid, rec.destination)].append((rec.start_ns, rec.outcome in USEFUL_OUTCOMES))
    out: list[RetryAdvice] = []
    for (comm, pid, dest), attempts in groups.items():
        found = [o for o in outages(attempts) if o.attempts >= min_outage_attempts]
        if not found:
            continue
        gaps = [g for o in found for g in o.gaps_ms]
        interval = float(statistics.median(gaps)) if gaps else 0.0
        fixed = all(_is_fixed(o.gaps_ms) for o in found)
        per_outage = float(statistics.median(o.attempts for o in found))
        durations = [o.duration_ms for o in found]
        longest = max(found, key=lambda o: o.duration_ms)
        with_backoff = backoff_attempts(interval / 1000, longest.duration_ms / 1000)
        suggest = fixed and per_outage > max_attempts_per_outage
        still = "" if all(o.ended for o in found) else " (still failing)"
        if suggest:
            text = (f"{comm}/{pid} retries {dest} every {_fmt_s(interval)} through outages of "
                    f"{_fmt_s(statistics.median(durations))}{still} ({per_outage:.0f} attempts per outage): "
                    f"back off exponentially; doubling from {_fmt_s(interval)} would have made "
                    f"{with_backoff} attempts instead of {longest.attempts} in the longest outage")
        elif not fixed:
            text = f"{comm}/{pid} backs off while {dest} is down ({per_outage:.0f} attempts per outage)"
        else:
            text = (f"{comm}/{pid} retries {dest} every {_fmt_s(interval)}, {per_outage:.0f} attempts per "
                    f"outage: within {max_attempts_per_outage}")
        out.append(RetryAdvice(
            comm=comm, pid=pid, destination=dest, outages=len(found), attempts=sum(o.attempts for o in found),
            attempts_per_outage=per_outage, retry_interval_ms=interval,
            outage_p50_ms=float(statistics.median(durations)), outage_max_ms=max(durations),
            fixed_interval=fixed, suggest_backoff=suggest, attempts_with_backoff=with_backoff,
            suggestion=text,
        ))
    return sorted(out, key=lambda a: (-a.suggest_backoff, -a.attempts, a.comm, a.pid, a.destination))

