"""Change detection per entity (Page's CUSUM on the problem fraction): where the current regime begins.

Blame over a whole range weighs every period alike, so a fault that began seconds ago is diluted by the
healthy minutes before it, and a fault that healed seconds ago stays blamed until it leaves the range.
Blame therefore analyses the *current regime*: the periods since the most recent change in any entity's
problem fraction. Within it every entity is (as far as the data tells) stationary, and the blame rule's
fractions are the entity's present state.

Per entity, each period gives ``n`` transactions of which ``x`` had a problem. Two hypotheses, anchored to
the blame rule's own threshold: *healthy* (problem fraction ``p0``, a tenth of the threshold) and
*flagged* (``p1``, the threshold). Each transaction adds its log-likelihood ratio of flagged over healthy
(``ln(p1/p0)`` for a problem, ``ln((1-p1)/(1-p0))`` for a good one) to a one-sided CUSUM,
``S = max(0, S + llr)``: while the entity is healthy the statistic watches for a rise; once it crosses
``h`` the entity is flagged and a second CUSUM watches for the fall, testing healthy against the faulty
regime's own level (``fault_level``: what the periods since the onset showed, at least ``p1``), as a
generalised-likelihood CUSUM does: a dead service's heal is proven by a handful of good transactions. A crossing is
a change; its onset is the first period of the run that crossed (the period after the statistic was last
zero), which is the maximum-likelihood change point of the CUSUM (Page 1954; Basseville & Nikiforov 1993,
§2.2). A period where the fault began late (a small share of problems) leaves the statistic at zero, so
the onset is the next, wholly faulty, period; likewise for a heal.

``h`` is the evidence needed, in nats: ``DEFAULT_H`` = 10 is about five problem transactions beyond what a
healthy entity explains (ln 10 = 2.3 each; a good one takes 0.2 off), so a dead service called a handful
of times per period is found once a wholly faulty period is in, while a healthy entity at 1 % problems
drifts down by 0.18 per transaction and never reaches it. An entity above 8 % (or hovering near the
threshold) may cross back and forth; each crossing only moves the regime's start later, which can make
blame less sensitive, never blame a healthy entity (the rule still needs its threshold over the regime).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

DEFAULT_H: Final = 10.0
"""Evidence (nats) a CUSUM needs to declare a change."""

PART_H: Final = math.log(20)
"""Evidence (nats) that lets a part of an entity with few transactions vote on spread in blame (a
likelihood ratio of 20: two failed calls of two, or fifteen good ones; one failed call is not enough)."""

HEALTHY_RATIO: Final = 0.1
"""The healthy hypothesis' problem fraction, as a share of the blame threshold (2 % for 20 %: the
background of a healthy fleet, about 1 % in the lab). An entity drifts toward a change only above 8 %."""

MAX_FAULT_LEVEL: Final = 0.95
"""The highest problem fraction a heal is tested against (a fault of 100 % would make one good
transaction infinite evidence)."""

UP: Final = "up"
DOWN: Final = "down"

Entity = tuple[str, str]
"""``(kind, name)``: an entity of the blame rule."""


@dataclass(frozen=True, slots=True)
class Change:
    """A change in one entity's problem fraction.

    Attributes:
        entity: ``(kind, name)``.
        direction: ``up`` (became flagged) or ``down`` (became healthy).
        onset: index of the first period of the new regime.
        detected: index of the period in which the change was confirmed.
    """

    entity: Entity
    direction: str
    onset: int
    detected: int


def llr(p0: float, p1: float) -> tuple[float, float]:
    """Log-likelihood ratio of ``p1`` over ``p0`` for one problem transaction and for one good one."""
    if not 0 < p0 < p1 < 1:
        raise ValueError(f"need 0 < p0 < p1 < 1, not p0={p0}, p1={p1}")
    return math.log(p1 / p0), math.log((1 - p1) / (1 - p0))


def hypotheses(threshold: float) -> tuple[float, float]:
    """``(p0, p1)`` for a blame threshold: healthy at a tenth of it, flagged at it (capped below 1)."""
    p1 = min(threshold, 0.99)
    return HEALTHY_RATIO * p1, p1


def changes(series: Sequence[tuple[int, int]], p0: float, p1: float, h: float = DEFAULT_H,
            entity: Entity = ("", "")) -> list[Change]:
    """The changes in one entity's series of ``(transactions, problems)`` per period, oldest first.

    The entity starts healthy; each confirmed change flips the direction watched. Periods without
    transactions add nothing (no evidence either way).
    """
    up_a, up_b = llr(p0, p1)
    out: list[Change] = []
    direction = UP
    s = 0.0
    start = 0
    seen: list[tuple[int, int]] = []  # the periods of the run being tested (the new regime, if it is one)
    level = (0, 0)  # transactions and problems of the faulty regime so far
    for i, (n, x) in enumerate(series):
        if direction == UP:
            s = max(0.0, s + x * up_a + (n - x) * up_b)
        else:
            a, b = llr(p0, fault_level(*level, p1))
            s = max(0.0, s - (x * a + (n - x) * b))
        seen.append((n, x))
        if s == 0.0:
            if direction == DOWN:  # still faulty: its level is better known
                level = (level[0] + sum(m for m, _ in seen), level[1] + sum(y for _, y in seen))
            seen = []
            start = i + 1
        elif s >= h:
            out.append(Change(entity, direction, start, i))
            level = (sum(m for m, _ in seen), sum(y for _, y in seen)) if direction == UP else (0, 0)
            direction = DOWN if direction == UP else UP
            s = 0.0
            seen = []
            start = i + 1
    return out


def fault_level(transactions: int, problems: int, p1: float) -> float:
    """The problem fraction a heal is tested against: the faulty regime's own (at least ``p1``, at most
    ``MAX_FAULT_LEVEL``). Against a dead service's 100 %, a few good transactions prove the heal; against
    the threshold's 20 % each proves little (0.17 nats), and a heal would take a period of 60 of them."""
    seen = problems / transactions if transactions else p1
    return min(max(seen, p1), MAX_FAULT_LEVEL)


def latest_changes(periods: Sequence[Mapping[Entity, tuple[int, int]]], threshold: float,
                   h: float = DEFAULT_H) -> list[Change]:
    """Each entity's latest change (entities that never changed left out), in entity order.

    Args:
        periods: per period, oldest first, each entity's ``(transactions, problems)``.
        threshold: the blame rule's problem-fraction threshold.
        h: the evidence a change needs.
    """
    p0, p1 = hypotheses(threshold)
    names: set[Entity] = set()
    for counts in periods:
        names.update(counts)
    out: list[Change] = []
    for ent in sorted(names):
        found = changes([counts.get(ent, (0, 0)) for counts in periods], p0, p1, h, ent)
        if found:
            out.append(found[-1])
    return out


def regime_start(periods: Sequence[Mapping[Entity, tuple[int, int]]], threshold: float,
                 h: float = DEFAULT_H) -> tuple[int, Change | None]:
    """The index of the first period of the current regime and the change that began it (``(0, None)``
    when no entity changed): the latest onset over every entity's changes, the later-detected one on a tie
    (then the first in entity order; ``latest_changes`` has them all)."""
    best: Change | None = None
    for last in latest_changes(periods, threshold, h):
        if best is None or (last.onset, last.detected) > (best.onset, best.detected):
            best = last
    return (best.onset, best) if best is not None else (0, None)
