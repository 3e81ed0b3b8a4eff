"""Failing DNS resolvers as blame suspects, from the node's own stored DNS transactions.

A failed lookup leaves no flow behind (the client never learns an address to connect to), so the flow
transactions blame ranks cannot show a resolver that fails: its answers are counted apart. A resolver is an
entity of its own (``resolver``, level 1 as a service: ``address:port``); its transactions are the answers it
sent, its problems the SERVFAIL, NXDOMAIN and REFUSED among them, and it is flagged by the same rule as any
entity (``_blame._flagged``: enough answers and problems, or enough sequential evidence over a short regime,
at the threshold's fraction). Its evidence reads "N of M queries failed (SERVFAIL)".

Flow suspects and resolver suspects explain different problems, so neither explains the other away: the
two ranked lists are merged by the problems each suspect explains (the flow rule's own order kept). A
resolver's answers per period (``resolver_counts`` of ``by_period``) join change detection beside the flow
entities, so a resolver that begins to fail begins a regime of its own, as a service would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Final

import numpy as np

from meshnode._dns import DnsBatch
from meshnode.diagnosis._blame import (
    LEVELS,
    RESOLVER,
    BlameConfig,
    BlameReport,
    EntityStats,
    Suspect,
    _flagged,
    _is_address,
)
from meshnode.health import ResolverHealth, resolver_health

MAX_BLAME_DNS: Final = 1_000_000
"""DNS transactions one blame reads from the store at most (the newest in its range)."""

__all__ = ["MAX_BLAME_DNS", "RESOLVER", "by_period", "resolver_counts", "resolver_suspects", "resolver_verdict",
           "with_resolvers"]

Entity = tuple[str, str]


def resolver_counts(dns: DnsBatch) -> dict[Entity, tuple[int, int]]:
    """``(resolver, address:port)`` -> ``(answers, failed answers)``: what change detection follows."""
    return {(RESOLVER, r.resolver): (r.queries, r.failed) for r in resolver_health(dns, top=dns.n)}


def by_period(dns: DnsBatch, ends: Sequence[int]) -> list[DnsBatch]:
    """The transactions of each period that ends at ``ends`` (oldest first): those answered after the previous
    end, up to its own (the first period takes everything before its end; answers after the last end are in
    none)."""
    slot = np.searchsorted(np.asarray(ends, dtype=np.int64), dns["time_ns"], side="left")
    return [dns.take(slot == i) for i in range(len(ends))]


def _kinds(failures: dict[str, int]) -> str:
    items = sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(items) == 1:
        return items[0][0]
    return ", ".join(f"{k} {n:,}" for k, n in items)


def resolver_verdict(r: ResolverHealth) -> str:
    """``resolver 10.0.0.53:53 is failing: 8 of 10 queries failed (SERVFAIL)``."""
    return f"resolver {r.resolver} is failing: {r.failed:,} of {r.queries:,} queries failed ({_kinds(r.failures)})"


def _matches(resolver: str, target: str) -> bool:
    if resolver == target:
        return True
    return _is_address(target) and resolver.rpartition(":")[0].strip("[]") == target.strip("[]")


def resolver_suspects(resolvers: Iterable[ResolverHealth], config: BlameConfig | None = None, *, host: str = "",
                      target: str = "") -> list[Suspect]:
    """The flagged resolvers as suspects (ranks from 1), the most failed answers first. ``host`` is the node
    that asked them; ``target`` keeps the resolver it names (``address:port`` or an address)."""
    cfg = config or BlameConfig()
    out: list[Suspect] = []
    for r in sorted(resolvers, key=lambda r: (-r.failed, -r.queries, r.resolver)):
        if not _flagged(r.queries, r.failed, cfg) or (target and not _matches(r.resolver, target)):
            continue
        stats = EntityStats(kind=RESOLVER, name=r.resolver, display=f"resolver {r.resolver}", level=LEVELS[RESOLVER],
                            transactions=r.queries, problems=r.failed, problem_kinds=dict(r.failures),
                            hosts=(host,) if host else (), problem_destinations={r.resolver: r.failed})
        # shared: the failed answer is the resolver's own word, so there is no other end to tell it from
        out.append(Suspect(len(out) + 1, stats, True, resolver_verdict(r)))
    return out


def with_resolvers(report: BlameReport, suspects: Sequence[Suspect], max_suspects: int) -> BlameReport:
    """``report`` with resolver ``suspects`` merged in by the problems each explains (the flow suspects'
    order kept; a tie goes to the flow suspect), ranks renumbered, at most ``max_suspects``."""
    if not suspects:
        return report
    flows, dns = list(report.suspects), list(suspects)
    merged: list[Suspect] = []
    while (flows or dns) and len(merged) < max_suspects:
        take = flows if flows and (not dns or flows[0].stats.problems >= dns[0].stats.problems) else dns
        merged.append(dataclasses.replace(take.pop(0), rank=len(merged) + 1))
    return dataclasses.replace(report, suspects=tuple(merged), verdict=merged[0].verdict if merged else report.verdict)
