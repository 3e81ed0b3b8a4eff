"""Distributed blame allocation (seed 000, section II-D.1; anchor: 007's votes from flows with retransmissions).

Every problem transaction (``Transaction.problem``: a failed flow, a flow with retransmissions, a slow
handshake) votes against every entity it involved, and every transaction, good or bad, counts toward the
entities it involved, so that blame is normalised by how much of an entity's traffic had problems.
Entities, with their level (higher is more shared):

    level 0  process      a client process: ``host/comm``
    level 1  service      a destination service: ``dst:dport``
    level 2  host         a client host
    level 2  dst_host     a destination host: its mesh host name, or its address when not a member
    level 3  site         the client's site (``region/site``)
    level 3  dst_site     the destination's site (mesh members only)
    level 3  path         the path between two different sites (``eu/s1<->eu/s2``, unordered)
    level 4  uplink       all cross-site traffic of one site, both ways (only for a site that talks to two
                          or more other sites; with one, its uplink is that one path)
    level 5  region       the client's region
    level 5  dst_region   the destination's region (mesh members only)
    level 5  region_path  the path between two different regions

The rule, applied to the transactions of all hosts (local flows or every node's digest alike):

1. **Normalise.** An entity's *problem fraction* is its problem transactions over all transactions that
   involved it. It is *flagged* when it has at least ``MIN_TRANSACTIONS`` transactions, at least
   ``MIN_PROBLEMS`` problems, and a problem fraction of at least ``PROBLEM_THRESHOLD`` (20 %).
2. **Shared cause.** An entity's transactions are split along five dimensions: client host, client
   process, destination service, destination host and route (the site pair, or the one site for
   intra-site traffic). A part with at least ``MIN_PART_TRANSACTIONS`` transactions is *affected* when its
   own problem fraction reaches ``PART_THRESHOLD_RATIO`` (half) of the threshold: parts are small and
   noisy, and a shared cause must hurt every part, not push each one past the bar on its own. A flagged
   entity is a *shared cause* when at least one dimension has two or more such parts, and in every
   dimension that does, at least ``SPREAD_FRACTION`` (75 %) of the parts are affected: the problem is
   everywhere the entity is, not in one corner of it. A client site whose cross-site traffic fails while
   its intra-site traffic is fine fails this test on the route dimension, and the path passes it; a
   server host with one bad port fails it on the service dimension, and the service passes it; a service
   that fails for one client process only fails it on the client dimensions.
3. **Walk up.** Among shared causes, those whose problem fraction is at least ``TIE_BAND`` (75 %) of the
   highest are equally good explanations; of those the one that explains the most problem transactions
   wins, then the one at the highest level. Along one chain of the hierarchy the entity with the most
   problems is the highest one (seed 000: one shared cause is likelier than many separate ones); across
   chains it is the one that explains the most (007: the link with the most votes). Purity comes first
   so that an entity whose fraction is merely diluted by another entity's problem (every client of a
   dead server) never outranks the dead server. When a lower-level candidate involves exactly the same
   transactions as the winner (a region with one site is that site; a server with one port in use is
   that service), the lowest such one is named: both are one cause, and the narrower claim is the one
   the data supports.
4. **Explain away.** The winner becomes the next suspect and all of its transactions are removed;
   fractions are recomputed over what is left and step 2 repeats, until nothing is flagged or
   ``MAX_SUSPECTS`` are found.
5. **No shared cause.** When entities are flagged but none is a shared cause (one process retrying a dead
   address that nobody else uses: one client, one destination, nothing to tell the two ends apart), the
   most specific entity within ``TIE_BAND`` of the highest fraction is the suspect, marked ``shared=False``.

A suspect's figures (fraction, transactions, hosts) are those at its selection, i.e. over transactions not
already explained by a higher-ranked suspect; for the first suspect that is all of them.
"""

from __future__ import annotations

import ipaddress
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from meshnode.diagnosis._change import hypotheses, llr
from meshnode.diagnosis._taxonomy import slowness
from meshnode.diagnosis._transaction import FiveTuple, Transaction

PROBLEM_THRESHOLD: Final = 0.20
"""An entity with at least this problem fraction is flagged."""

MIN_TRANSACTIONS: Final = 20
"""An entity with fewer transactions is never flagged: 2 problems of 3 are not evidence."""

MIN_PROBLEMS: Final = 5
"""An entity with fewer problem transactions is never flagged."""

MIN_PART_TRANSACTIONS: Final = 5
"""A part of an entity (one client host, one route...) with fewer transactions does not vote on spread."""

PART_THRESHOLD_RATIO: Final = 0.5
"""A part of an entity is affected when its problem fraction is at least this times the threshold."""

SPREAD_FRACTION: Final = 0.75
"""A shared cause has at least this fraction of its parts flagged in every dimension ("most of the PoPs")."""

TIE_BAND: Final = 0.75
"""Candidates with a problem fraction at least this times the best one are equally good explanations."""

MAX_SUSPECTS: Final = 10
"""The most suspects one analysis returns."""

MAX_EXAMPLES: Final = 3
"""Example flows kept per suspect."""

PROCESS: Final = "process"
SERVICE: Final = "service"
HOST: Final = "host"
DST_HOST: Final = "dst_host"
SITE: Final = "site"
DST_SITE: Final = "dst_site"
PATH: Final = "path"
UPLINK: Final = "uplink"
REGION: Final = "region"
DST_REGION: Final = "dst_region"
REGION_PATH: Final = "region_path"
RESOLVER: Final = "resolver"
"""A DNS resolver the node's host asked (``_resolvers``: from the node's DNS transactions, not flows)."""

LEVELS: Final = {
    PROCESS: 0, SERVICE: 1, HOST: 2, DST_HOST: 2, SITE: 3, DST_SITE: 3, PATH: 3, UPLINK: 4, REGION: 5,
    DST_REGION: 5, REGION_PATH: 5, RESOLVER: 1,
}
"""Entity kind -> level in the hierarchy (higher is more shared)."""

ENTITY_KINDS: Final = tuple(LEVELS)

DIMENSIONS: Final = ("client host", "process", "service", "destination host", "route")
"""The dimensions an entity's transactions are split along to test for a shared cause."""

_WORDS: Final = {
    PROCESS: "process", SERVICE: "service", HOST: "host", DST_HOST: "destination host", SITE: "site",
    DST_SITE: "destination site", PATH: "path", UPLINK: "uplink of site", REGION: "region",
    DST_REGION: "destination region", REGION_PATH: "path", RESOLVER: "resolver",
}


@dataclass(frozen=True, slots=True)
class BlameConfig:
    """The thresholds of the blame rule (defaults: the module constants).

    ``evidence`` and ``part_evidence`` (0: off) let sequential evidence stand in for the counts, for
    blame over a short regime (``_change``): an entity is also flagged when its problem fraction reaches
    the threshold and its transactions are ``evidence`` nats likelier at the threshold than at a tenth of
    it (the CUSUM's own test: a blackholed server whose clients wait out their connect timeouts is called
    only a few times a period, fewer than ``min_transactions``, every call failing); and a part with fewer
    than ``min_part_transactions`` votes on spread when its log-likelihood ratio is at least
    ``part_evidence`` nats either way (affected when it favours the threshold).
    """

    threshold: float = PROBLEM_THRESHOLD
    min_transactions: int = MIN_TRANSACTIONS
    min_problems: int = MIN_PROBLEMS
    min_part_transactions: int = MIN_PART_TRANSACTIONS
    part_threshold_ratio: float = PART_THRESHOLD_RATIO
    spread_fraction: float = SPREAD_FRACTION
    tie_band: float = TIE_BAND
    max_suspects: int = MAX_SUSPECTS
    max_examples: int = MAX_EXAMPLES
    evidence: float = 0.0
    part_evidence: float = 0.0


@dataclass(frozen=True, slots=True)
class EntityStats:
    """What the transactions say about one entity.

    Attributes:
        kind: one of ``ENTITY_KINDS``.
        name: the entity's key (``h1/curl``, ``10.0.0.7:5432``, ``db-1``, ``eu/s1<->eu/s2``...).
        display: how a human reads it (``destination host db-1 (10.0.0.7)``).
        level: its level (``LEVELS``).
        transactions: transactions that involved it.
        problems: problem transactions among them.
        problem_kinds: problems by kind.
        hosts: client hosts that reported its transactions.
        sites: client sites they are in.
        problem_destinations: problem transactions by destination ``dst:dport``.
        examples: up to ``MAX_EXAMPLES`` 5-tuples of problem flows.
    """

    kind: str
    name: str
    display: str
    level: int
    transactions: int
    problems: int
    problem_kinds: dict[str, int] = field(default_factory=dict)
    hosts: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()
    problem_destinations: dict[str, int] = field(default_factory=dict)
    examples: tuple[FiveTuple, ...] = ()

    @property
    def problem_fraction(self) -> float:
        """problems / transactions (0 without transactions)."""
        return self.problems / self.transactions if self.transactions else 0.0


@dataclass(frozen=True, slots=True)
class Suspect:
    """One entity blamed, in rank order.

    Attributes:
        rank: 1 for the top suspect.
        stats: the entity's figures at its selection (see the module docstring).
        shared: True when the problem is spread over the entity's parts (a shared cause); False for the
            fallback of rule 5 (the data cannot tell this entity from the other end).
        verdict: one line for a human.
    """

    rank: int
    stats: EntityStats
    shared: bool
    verdict: str

    @property
    def kind(self) -> str:
        """The entity kind."""
        return self.stats.kind

    @property
    def name(self) -> str:
        """The entity key."""
        return self.stats.name

    @property
    def problem_fraction(self) -> float:
        """The entity's problem fraction at its selection."""
        return self.stats.problem_fraction


@dataclass(frozen=True, slots=True)
class BlameReport:
    """The answer of one blame allocation.

    Attributes:
        suspects: ranked suspects (empty for a healthy fleet).
        verdict: the top suspect's verdict, or ``"no problem above 20%"``.
        transactions: transactions analysed.
        problems: problem transactions among them.
        hosts: distinct client hosts that reported.
        threshold: the problem-fraction threshold used.
    """

    suspects: tuple[Suspect, ...]
    verdict: str
    transactions: int
    problems: int
    hosts: int
    threshold: float


# ---------------------------------------------------------------------------------------------- rows


def _site_key(region: str, site: str) -> str:
    return f"{region or '-'}/{site}" if site else ""


def _pair(a: str, b: str) -> str:
    x, y = sorted((a, b))
    return f"{x}<->{y}"


@dataclass(slots=True)
class _Row:
    """Identical transactions collapsed: one representative, a count, the entities and dimension values."""

    txn: Transaction
    count: int
    entities: tuple[tuple[str, str], ...]
    dims: tuple[str, ...]
    examples: list[FiveTuple]


def _entities(t: Transaction) -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    site = _site_key(t.region, t.site)
    dsite = _site_key(t.dst_region, t.dst_site)
    dhost = t.dst_host or t.dst
    process = f"{t.host}/{t.comm}" if t.comm else ""
    ents: list[tuple[str, str]] = []
    if process:
        ents.append((PROCESS, process))
    ents.append((SERVICE, t.destination))
    if t.host:
        ents.append((HOST, t.host))
    ents.append((DST_HOST, dhost))
    if site:
        ents.append((SITE, site))
    if dsite:
        ents.append((DST_SITE, dsite))
    if site and dsite and site != dsite:
        ents.append((PATH, _pair(site, dsite)))
    if t.region:
        ents.append((REGION, t.region))
    if t.dst_region:
        ents.append((DST_REGION, t.dst_region))
    if t.region and t.dst_region and t.region != t.dst_region:
        ents.append((REGION_PATH, _pair(t.region, t.dst_region)))
    if site and dsite:
        route = site if site == dsite else _pair(site, dsite)
    else:
        route = f"{site or '?'}->{dsite or 'outside'}"
    # A process known by name only (pid 0: from a peer's digest, which names only its processes with
    # problems) does not split its host along the process dimension: the host's unnamed rest would be
    # healthy by construction and read as an unaffected part of every shared cause.
    dims = (t.host, process if process and t.pid else f"{t.host}/?", t.destination, dhost, route)
    return tuple(ents), dims


def _collapse(transactions: Iterable[Transaction], max_examples: int) -> list[_Row]:
    rows: dict[tuple[object, ...], _Row] = {}
    for t in transactions:
        if t.count <= 0:
            continue
        key = (t.host, t.site, t.region, t.comm, t.pid, t.dst, t.dport, t.service, t.dst_host, t.dst_site,
               t.dst_region, t.problem, t.kind)
        row = rows.get(key)
        if row is None:
            ents, dims = _entities(t)
            row = rows[key] = _Row(t, 0, ents, dims, [])
        row.count += t.count
        if t.problem and t.flow is not None and len(row.examples) < max_examples:
            row.examples.append(t.flow)
    out = list(rows.values())
    _add_uplinks(out)
    return out


def _add_uplinks(rows: Sequence[_Row]) -> None:
    """Give cross-site rows the uplink entities of their end sites that talk to two or more other sites."""
    partners: dict[str, set[str]] = {}
    for row in rows:
        ends = _ends(row.txn)
        if ends:
            partners.setdefault(ends[0], set()).add(ends[1])
            partners.setdefault(ends[1], set()).add(ends[0])
    for row in rows:
        ends = _ends(row.txn)
        if ends:
            extra = tuple((UPLINK, s) for s in sorted(ends) if len(partners[s]) >= 2)
            row.entities = row.entities + extra


def _ends(t: Transaction) -> tuple[str, str] | None:
    site, dsite = _site_key(t.region, t.site), _site_key(t.dst_region, t.dst_site)
    return (site, dsite) if site and dsite and site != dsite else None


# ---------------------------------------------------------------------------------------------- counting


@dataclass(slots=True)
class _Acc:
    transactions: int = 0
    problems: int = 0
    kinds: Counter[str] = field(default_factory=Counter)
    hosts: set[str] = field(default_factory=set)
    sites: set[str] = field(default_factory=set)
    problem_dsts: Counter[str] = field(default_factory=Counter)
    examples: list[FiveTuple] = field(default_factory=list)
    addresses: set[str] = field(default_factory=set)
    services: set[str] = field(default_factory=set)
    dst_hosts: set[str] = field(default_factory=set)
    parts: list[dict[str, list[int]]] = field(default_factory=lambda: [{} for _ in DIMENSIONS])


def _count(rows: Sequence[_Row], max_examples: int) -> dict[tuple[str, str], _Acc]:
    accs: dict[tuple[str, str], _Acc] = {}
    for row in rows:
        t = row.txn
        bad = row.count if t.problem else 0
        for ent in row.entities:
            acc = accs.get(ent)
            if acc is None:
                acc = accs[ent] = _Acc()
            acc.transactions += row.count
            acc.hosts.add(t.host)
            if t.site:
                acc.sites.add(_site_key(t.region, t.site))
            acc.addresses.add(t.dst)
            if t.service:
                acc.services.add(t.service)
            if t.dst_host:
                acc.dst_hosts.add(t.dst_host)
            if bad:
                acc.problems += bad
                acc.kinds[t.kind] += bad
                acc.problem_dsts[t.destination] += bad
                room = max_examples - len(acc.examples)
                if room > 0:
                    acc.examples.extend(row.examples[:room])
    return accs


def _count_parts(rows: Sequence[_Row], accs: dict[tuple[str, str], _Acc], wanted: set[tuple[str, str]]) -> None:
    for row in rows:
        bad = row.count if row.txn.problem else 0
        for ent in row.entities:
            if ent not in wanted:
                continue
            parts = accs[ent].parts
            for i, value in enumerate(row.dims):
                cell = parts[i].get(value)
                if cell is None:
                    parts[i][value] = [row.count, bad]
                else:
                    cell[0] += row.count
                    cell[1] += bad


def _display(kind: str, name: str, acc: _Acc) -> str:
    words = _WORDS[kind]
    if kind == PROCESS:
        host, _, comm = name.partition("/")
        return f"process {comm} on {host}"
    if kind == DST_HOST:
        addrs = sorted(acc.addresses - {name})
        return f"{words} {name} ({', '.join(addrs)})" if addrs else f"{words} {name}"
    if kind == SERVICE:
        notes = sorted(acc.services)
        if len(acc.dst_hosts) == 1:
            addr, _, port = name.rpartition(":")
            notes.append(addr.strip("[]"))
            name = f"{next(iter(acc.dst_hosts))}:{port}"
        return f"{words} {name} ({', '.join(notes)})" if notes else f"{words} {name}"
    if kind in (PATH, REGION_PATH):
        return f"{words} {name.replace('<->', ' <-> ')}"
    return f"{words} {name}"


def _stats(kind: str, name: str, acc: _Acc) -> EntityStats:
    return EntityStats(
        kind=kind, name=name, display=_display(kind, name, acc), level=LEVELS[kind],
        transactions=acc.transactions, problems=acc.problems, problem_kinds=dict(sorted(acc.kinds.items())),
        hosts=tuple(sorted(acc.hosts)), sites=tuple(sorted(acc.sites)),
        problem_destinations=dict(sorted(acc.problem_dsts.items())), examples=tuple(acc.examples),
    )


def entities(transactions: Iterable[Transaction], config: BlameConfig | None = None) -> list[EntityStats]:
    """Every entity the transactions involve, with its figures; the highest problem fraction first.

    The drill-down behind a blame report: what ``blame`` ranks, before any explaining away.
    """
    cfg = config or BlameConfig()
    accs = _count(_collapse(transactions, cfg.max_examples), cfg.max_examples)
    out = [_stats(kind, name, acc) for (kind, name), acc in accs.items()]
    return sorted(out, key=lambda s: (-s.problem_fraction, -s.level, -s.problems, s.kind, s.name))


def entity_counts(transactions: Iterable[Transaction]) -> dict[tuple[str, str], tuple[int, int]]:
    """``(kind, name)`` -> ``(transactions, problems)`` of every entity the transactions involve: what
    change detection (``_change``) follows period by period."""
    out: dict[tuple[str, str], tuple[int, int]] = {}
    for row in _collapse(transactions, 0):
        bad = row.count if row.txn.problem else 0
        for ent in row.entities:
            n, x = out.get(ent, (0, 0))
            out[ent] = (n + row.count, x + bad)
    return out


# ---------------------------------------------------------------------------------------------- the rule


def _llr(transactions: int, problems: int, cfg: BlameConfig) -> float:
    """Log-likelihood ratio of the threshold over a tenth of it for ``problems`` of ``transactions``."""
    a, b = llr(*hypotheses(cfg.threshold))
    return problems * a + (transactions - problems) * b


def _flagged(transactions: int, problems: int, cfg: BlameConfig) -> bool:
    if problems < cfg.threshold * transactions or problems == 0:
        return False
    if transactions >= cfg.min_transactions and problems >= cfg.min_problems:
        return True
    return cfg.evidence > 0 and _llr(transactions, problems, cfg) >= cfg.evidence


def _votes(n: int, bad: int, cfg: BlameConfig) -> bool | None:
    """A part's vote on spread: affected (True), not (False), or too small to say (None)."""
    if n >= cfg.min_part_transactions:
        return bad >= cfg.part_threshold_ratio * cfg.threshold * n
    if cfg.part_evidence > 0 and n > 0:
        ratio = _llr(n, bad, cfg)
        if abs(ratio) >= cfg.part_evidence:
            return ratio > 0
    return None


def _shared(acc: _Acc, cfg: BlameConfig) -> bool:
    """Rule 2: some dimension has two or more parts, and in each such one most parts are affected."""
    evidence = False
    for parts in acc.parts:
        voting = [v for v in (_votes(n, bad, cfg) for n, bad in parts.values()) if v is not None]
        if len(voting) < 2:
            continue
        evidence = True
        if sum(voting) < cfg.spread_fraction * len(voting):
            return False
    return evidence


def _rank(ent: tuple[str, str], acc: _Acc, shared: bool) -> tuple[int, int, float, str, str]:
    """Rule 3 (shared causes: the most problems, then the highest level) and rule 5 (otherwise: the most
    specific, then the most problems)."""
    if shared:
        return (acc.problems, LEVELS[ent[0]], acc.problems / acc.transactions, ent[0], ent[1])
    return (-LEVELS[ent[0]], acc.problems, acc.problems / acc.transactions, ent[0], ent[1])


def _narrowest_equal(
    pick: tuple[str, str], band: Sequence[tuple[str, str]], accs: dict[tuple[str, str], _Acc], rows: Sequence[_Row]
) -> tuple[str, str]:
    """Rule 3's last clause: the lowest-level candidate with exactly ``pick``'s transactions."""
    acc = accs[pick]
    same = [e for e in band if LEVELS[e[0]] < LEVELS[pick[0]] and accs[e].transactions == acc.transactions
            and accs[e].problems == acc.problems]
    if not same:
        return pick
    mine = {i for i, r in enumerate(rows) if pick in r.entities}
    equal = [e for e in same if {i for i, r in enumerate(rows) if e in r.entities} == mine]
    return min(equal, key=lambda e: (LEVELS[e[0]], e[0], e[1]), default=pick)


def _pct(x: float) -> str:
    p = 100 * x
    if p >= 99.5 and x < 1:
        return f"{math.floor(p * 10) / 10:.1f}%"
    return f"{p:.0f}%" if p >= 1 or p == 0 else f"{p:.1f}%"


def verdict_of(stats: EntityStats) -> str:
    """One line: ``destination host db-1 (10.0.0.7) is failing: 100% of 240 transactions from 5 hosts in
    2 sites (timeout)``; a degraded entity is ``slow to carry`` or ``slow to answer`` when its problems
    say which (``_taxonomy.slowness``)."""
    state = slowness(stats.problem_kinds)
    hosts = len(stats.hosts)
    where = f"from {hosts} host{'s' if hosts != 1 else ''}"
    if stats.sites:
        where += f" in {len(stats.sites)} site{'s' if len(stats.sites) != 1 else ''}"
    kinds = ", ".join(k for k, _ in sorted(stats.problem_kinds.items(), key=lambda kv: (-kv[1], kv[0])))
    line = (f"{stats.display} is {state}: {_pct(stats.problem_fraction)} of {stats.transactions:,} "
            f"transactions {where} ({kinds})")
    if stats.kind in (PROCESS, HOST, SITE, REGION) and len(stats.problem_destinations) == 1:
        line += f", all to {next(iter(stats.problem_destinations))}"
    return line


def healthy_verdict(threshold: float = PROBLEM_THRESHOLD) -> str:
    """What a report says when no entity is flagged."""
    return f"no problem above {_pct(threshold)}"


def _is_address(target: str) -> bool:
    try:
        ipaddress.ip_address(target.strip("[]"))
    except ValueError:
        return False
    return True


def _matches_target(acc: _Acc, target: str) -> bool:
    """True when ``acc`` has problems to ``target``: a ``dst:dport`` destination, or an address."""
    if not _is_address(target):
        return acc.problem_dsts.get(target, 0) > 0
    addr = target.strip("[]")
    return any(d.rpartition(":")[0].strip("[]") == addr for d in acc.problem_dsts)


def blame(
    transactions: Iterable[Transaction],
    config: BlameConfig | None = None,
    *,
    target: str = "",
) -> BlameReport:
    """Ranked suspects for the problems in ``transactions`` (the rule of the module docstring).

    Args:
        transactions: transactions of any number of hosts.
        config: thresholds; the module constants by default.
        target: only suspects explaining problems to this destination (``dst:dport``, or an address);
            the analysis still uses every transaction, since blaming needs the healthy ones to compare.
    """
    cfg = config or BlameConfig()
    rows = _collapse(transactions, cfg.max_examples)
    total = sum(r.count for r in rows)
    problems = sum(r.count for r in rows if r.txn.problem)
    hosts = len({r.txn.host for r in rows})
    suspects: list[Suspect] = []
    while rows and len(suspects) < cfg.max_suspects:
        accs = _count(rows, cfg.max_examples)
        flagged = {e for e, a in accs.items() if _flagged(a.transactions, a.problems, cfg)}
        if not flagged:
            break
        _count_parts(rows, accs, flagged)
        shared = [e for e in flagged if _shared(accs[e], cfg)]
        pool = shared or list(flagged)
        best = max(accs[e].problems / accs[e].transactions for e in pool)
        band = [e for e in pool if accs[e].problems / accs[e].transactions >= cfg.tie_band * best]

        prefer_high = bool(shared)
        pick = max(band, key=lambda e: _rank(e, accs[e], prefer_high))
        pick = _narrowest_equal(pick, band, accs, rows)
        acc = accs[pick]
        stats = _stats(pick[0], pick[1], acc)
        if not target or _matches_target(acc, target):
            suspects.append(Suspect(len(suspects) + 1, stats, bool(shared), verdict_of(stats)))
        rows = [r for r in rows if pick not in r.entities]
    verdict = suspects[0].verdict if suspects else healthy_verdict(cfg.threshold)
    return BlameReport(tuple(suspects), verdict, total, problems, hosts, cfg.threshold)
