"""DNS resolvers' health from the host's own DNS transactions: a SERVFAIL, NXDOMAIN or REFUSED answer is a
failure of the resolver it came from (the host asked it and got no address), counted per answer code.

A transaction sums the answers of one question between two sensor polls, with the mean latency of its timed
answers: latency percentiles weigh each transaction's mean by its timed answers (exact for the usual single
answer, a mean's weight for repeats within one poll).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

import numpy as np

from meshnode._batch import factorize
from meshnode._dns import DnsBatch
from meshnode.summary import format_destination, weighted_quantiles

MAX_RESOLVERS: Final = 1_000
"""Resolver rows a report keeps at most (the most failures first)."""


@dataclass(frozen=True, slots=True)
class ResolverHealth:
    """One resolver's answers over a range (``meshnode.v1.ResolverHealth``)."""

    resolver: str
    """``address:port``."""
    queries: int
    failed: int
    failures: dict[str, int] = field(default_factory=dict)
    """Failed answers by answer code."""
    latency_p50_us: int = 0
    latency_p95_us: int = 0
    names: int = 0
    """Distinct names asked."""

    @property
    def failed_fraction(self) -> float:
        """failed / queries (0 without queries)."""
        return self.failed / self.queries if self.queries else 0.0


def resolver_health(dns: DnsBatch, top: int = MAX_RESOLVERS) -> list[ResolverHealth]:
    """Per resolver (address and port) of ``dns``: answers, failed answers by code, latency p50/p95 and names
    asked; the most failed answers first, then the most answers, then by resolver. At most ``top`` rows."""
    if not dns.n:
        return []
    codes, keys = factorize(dns["server"], dns["port"])
    answers = dns["answers"]
    failed = dns.failed()
    out = []
    for i, (server, port) in enumerate(keys):
        rows = np.flatnonzero(codes == i)
        bad = rows[failed[rows]]
        failures: dict[str, int] = {}
        for rcode, n in zip(dns["rcode"][bad].tolist(), answers[bad].tolist(), strict=True):
            failures[rcode] = failures.get(rcode, 0) + n
        p50, p95 = weighted_quantiles(dns["latency_us"][rows], dns["timed"][rows], (0.5, 0.95))
        out.append(ResolverHealth(
            resolver=format_destination(server, port), queries=int(answers[rows].sum()),
            failed=sum(failures.values()), failures=dict(sorted(failures.items())),
            latency_p50_us=int(p50), latency_p95_us=int(p95), names=len(set(dns["query"][rows].tolist())),
        ))
    out.sort(key=lambda r: (-r.failed, -r.queries, r.resolver))
    return out[:top]
