"""Robust fleet answers: centres and votes that one lying or broken host cannot move, saying who was left out.

Seed 000 mitigates corrupted reports by majority voting; seed 003 takes a trimmed mean over several nodes.
Flagged nodes (``TrustState.excluded``) are left out first; the trimmed mean then drops the extremes of
what remains. Every result says how many hosts were used, excluded as flagged, and trimmed, so that an
answer built from 3 of 50 hosts does not look like one built from 50. The centres are the mesh's own
(``meshnode.mesh.median``, ``trimmed_mean`` and ``trimmed_count``), which fleet queries use at run time
(``meshnode.mesh.aggregate``: medians of fractions and RTTs, trimmed means of rates), so that both layers
compute the same numbers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from meshnode.mesh import Aggregate, HostReport, aggregate, median, trimmed_count, trimmed_mean

Method = Literal["median", "trimmed_mean"]


@dataclass(frozen=True, slots=True)
class RobustValue:
    """A centre over hosts.

    Attributes:
        value: the centre; None when no host was left.
        used: hosts whose values entered the centre (after trimming).
        excluded: hosts left out because they are flagged.
        trimmed: hosts dropped as extremes by the trimmed mean.
        node_ids: the hosts used before trimming, sorted.
    """

    value: float | None
    used: int
    excluded: int
    trimmed: int
    node_ids: tuple[str, ...]


def robust_center(
    values: Mapping[str, float],
    *,
    excluded: Iterable[str] = (),
    method: Method = "median",
    trim: float = 0.2,
) -> RobustValue:
    """The centre of one value per host (``node id -> value``), flagged hosts left out.

    Args:
        values: one value per host.
        excluded: hosts to leave out (flagged).
        method: ``median`` or ``trimmed_mean``.
        trim: the fraction dropped at each end by the trimmed mean.
    """
    out = set(excluded)
    kept = {k: v for k, v in values.items() if k not in out}
    n = len(kept)
    if not kept:
        return RobustValue(None, 0, len(values) - n, 0, ())
    xs = list(kept.values())
    if method == "median":
        value, trimmed = median(xs), 0
    else:
        value, trimmed = trimmed_mean(trim)(xs), trimmed_count(n, trim)
    return RobustValue(value, n - trimmed, len(values) - n, trimmed, tuple(sorted(kept)))


@dataclass(frozen=True, slots=True)
class Vote:
    """A yes/no majority over hosts.

    Attributes:
        outcome: True or False by strict majority of the voters; None on a tie or below ``min_voters``.
        yes: voters for yes.
        no: voters for no.
        excluded: flagged hosts whose votes were not counted.
    """

    outcome: bool | None
    yes: int
    no: int
    excluded: int


def majority_vote(votes: Mapping[str, bool], *, excluded: Iterable[str] = (), min_voters: int = 1) -> Vote:
    """The strict majority of one yes/no per host, flagged hosts left out (seed 000)."""
    out = set(excluded)
    counted = [v for k, v in votes.items() if k not in out]
    yes = sum(1 for v in counted if v)
    no = len(counted) - yes
    outcome: bool | None = None
    if len(counted) >= max(1, min_voters) and yes != no:
        outcome = yes > no
    return Vote(outcome, yes, no, len(votes) - len(counted))


@dataclass(frozen=True, slots=True)
class TrustedAggregates:
    """Label aggregates built without the flagged hosts.

    Attributes:
        rows: the aggregates (``meshnode.mesh.Aggregate``), as ``meshnode.mesh.aggregate`` returns them.
        excluded: the flagged hosts whose reports were left out, sorted.
        trimmed: per row (same order), hosts the trimmed mean dropped from each per-host centre.
    """

    rows: list[Aggregate]
    excluded: tuple[str, ...]
    trimmed: list[int]


def trusted_aggregate(
    reports: Iterable[HostReport],
    *,
    excluded: Iterable[str],
    now_ns: int,
    trim: float | None = None,
    **kwargs: Any,
) -> TrustedAggregates:
    """``meshnode.mesh.aggregate`` over the reports of hosts not excluded.

    Args:
        reports: per-host reports (``host_reports`` of the latest digests).
        excluded: flagged hosts (``TrustState.excluded``).
        now_ns: wall-clock now.
        trim: None for the median; a fraction for the trimmed mean.
        **kwargs: passed to ``aggregate`` (``group_by``, ``destination``, ``selector``, ``max_age_s``...).
    """
    out = set(excluded)
    rs = list(reports)
    kept = [r for r in rs if r.node_id not in out]
    left_out = tuple(sorted({r.node_id for r in rs if r.node_id in out}))
    center = median if trim is None else trimmed_mean(trim)
    rows = aggregate(kept, now_ns=now_ns, center=center, **kwargs)
    trimmed = [0 if trim is None else trimmed_count(r.hosts, trim) for r in rows]
    return TrustedAggregates(rows, left_out, trimmed)
