"""``NodeSource``: the running node's ``DiagnosisSource``, over its own periods and the digests it holds.

What a node knows, and what each piece becomes:

- **its own period records** (``add_period``, a ``Node.record_listeners`` callback): its client
  transactions (``ClientView``: outbound flows that ended, and outbound connects pending longer than
  ``PENDING_CONNECT_US`` at the period's end, each flow once) become transactions with process and example
  5-tuple, and its outbound final flows samples for Compare (``samples_from_flows``). Each period's
  transactions are collapsed to one counted row per (process, destination, kind) plus a few example rows,
  so a period costs its distinct keys, not its flows. Failed and successful attempts are kept as small
  tuples for the retry taxonomy (seed 004), and discovery chatter per process and protocol;
- **every verified peer digest** (``add_digest``, a ``MeshService.digest_listeners`` callback): its
  destination rollups' ``client_kinds`` (the publisher's outbound flows that ended in the period, by kind,
  which ``decorate_digest`` puts in every digest this node publishes) become counted transactions, and one
  sample per destination. A digest without them (an older publisher) falls back to
  ``transactions_from_rollups``, with ``flows_retransmitting``/``flows_slow_connect`` as the degraded
  counts; its rollups also hold inbound flows and every period of long-lived ones, which dilutes blame.
  A digest's ``processes`` (the publisher's client processes with the most problem transactions, which
  ``decorate_digest`` also adds: ``digest_processes``) name the process of part of those counts, so that
  blame on any node can name ``process app2/billing-sync``, not only blame on app2's.
  The node's own digests are skipped: its own records say the same, with processes.

Destination places (host, site, region) come from the newest digest of each member (``Digest.addresses``
and labels) and this node's own addresses, resolved when a question is asked, so a flow recorded before a
peer's first digest arrived is still attributed to that peer.

Memory is bounded by time and by count: periods (own or a peer's) that ended more than ``horizon_ns``
(1 h) before the newest one are dropped, and at most ``max_periods`` (2,000) own periods, ``max_digests``
(20,000) digests and ``max_attempts`` (100,000) attempt tuples are held; what a bound pushed out is
counted in ``dropped``.
"""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Final, Protocol, overload

import numpy as np

from meshnode._batch import FAILED, USEFUL, FlowBatch, as_batch, factorize
from meshnode._dns import DnsBatch
from meshnode._model import ENUM_NUMBERS, FlowRecord
from meshnode.diagnosis._compare import PeerSample, samples_from_flows
from meshnode.diagnosis._resolvers import MAX_BLAME_DNS
from meshnode.diagnosis._taxonomy import (
    DISCOVERY_PORTS,
    DiscoveryChatter,
    RetryAdvice,
    _is_broadcast_or_multicast,
    discovery_chatter,
    retry_advice,
)
from meshnode.diagnosis._transaction import (
    Place,
    Transaction,
    split_destination,
    transactions_from_rollups,
)
from meshnode.health import ScanPattern, scan_patterns
from meshnode.store import DnsQuery, Store
from meshnode.summary import format_destination
from meshnode.summary._problems import (
    CONNECT_PENDING,
    OK,
    PENDING_CONNECT_US,
    RETRANSMIT_RATE,
    RETRANSMITS,
    SLOW_CONNECT,
    SLOW_CONNECT_US,
    SLOW_PATH,
    SLOW_SERVER,
    queueing,
    slow_answers,
)

if TYPE_CHECKING:
    from numpy.typing import NDArray

    from meshnode.v1 import mesh_pb2

HORIZON_NS: Final = 3600 * 1_000_000_000
"""Periods that ended this long before the newest one are forgotten (1 h)."""

MAX_PERIODS: Final = 2_000
"""Own periods held at most (1 h of 2 s periods)."""

MAX_DIGESTS: Final = 20_000
"""Peer digests held at most (1 h of 10 s periods from 55 peers)."""

MAX_ATTEMPTS: Final = 100_000
"""Outbound attempts held at most for the retry taxonomy."""

MAX_PENDING: Final = 100_000
"""Connects counted while pending that ``ClientView`` remembers at most (until their final record)."""

EXAMPLES_PER_KEY: Final = 3
"""Example 5-tuples kept per (process, destination, kind) and period."""

DIGEST_PROCESSES: Final = 4
"""Client processes with problems a digest names at most (the most problem transactions first)..."""

DIGEST_PROCESS_DESTINATIONS: Final = 4
"""... each with at most this many destinations (the most problems, then the most transactions, first).
16 rows of about 60 bytes: 1 KB of a digest's 8 KB bound at worst, and nothing in a healthy period."""


@dataclass(frozen=True, slots=True)
class _Period:
    end_ns: int
    transactions: tuple[Transaction, ...]
    samples: tuple[PeerSample, ...]
    chatter: tuple[DiscoveryChatter, ...]
    scans: tuple[ScanPattern, ...] = ()


@dataclass(frozen=True, slots=True)
class _Digest:
    node_id: str
    seq: int
    end_ns: int
    labels: Mapping[str, str]
    transactions: tuple[Transaction, ...]
    samples: tuple[PeerSample, ...]


Attempt = tuple[int, str, int, str, int, str, str]
"""``(start_ns, comm, pid, dst, dport, proto, outcome)`` of one outbound attempt."""


ClientTxn = tuple[FlowRecord, str]
"""One client transaction of a period: the record it stands on and its diagnosis kind."""


class ClientTxns(Sequence[ClientTxn]):
    """A period's client transactions as columns: the flows they stand on and each one's diagnosis kind.
    Iterating (or indexing) gives ``(record, kind)`` pairs; the counting below reads the columns."""

    def __init__(self, flows: FlowBatch, kinds: NDArray[Any]) -> None:
        self.flows = flows
        self.kinds = kinds

    def __len__(self) -> int:
        return self.flows.n

    @overload
    def __getitem__(self, i: int) -> ClientTxn: ...
    @overload
    def __getitem__(self, i: slice) -> list[ClientTxn]: ...
    def __getitem__(self, i: int | slice) -> ClientTxn | list[ClientTxn]:
        pairs = list(zip(self.flows.records(), self.kinds.tolist(), strict=True))
        return pairs[i]

    def __iter__(self) -> Iterator[ClientTxn]:
        return iter(zip(self.flows.records(), self.kinds.tolist(), strict=True))

    def take(self, rows: NDArray[Any]) -> ClientTxns:
        """The transactions at ``rows`` (indices or a mask)."""
        return ClientTxns(self.flows.take(rows), self.kinds[rows])

    @staticmethod
    def of(txns: Iterable[ClientTxn]) -> ClientTxns:
        """Pairs (a privacy-filtered list, a test's) as columns."""
        if isinstance(txns, ClientTxns):
            return txns
        pairs = list(txns)
        kinds = np.empty(len(pairs), dtype=object)
        kinds[:] = [k for _, k in pairs]
        return ClientTxns(FlowBatch.from_records(r for r, _ in pairs), kinds)


def client_transactions(records: Iterable[FlowRecord] | FlowBatch, end_ns: int,
                        pending_us: int = PENDING_CONNECT_US) -> ClientTxns:
    """A period's client transactions: outbound flows that ended (their ``problem_kind``) and outbound
    connects pending longer than ``pending_us`` at ``end_ns`` (``connect_pending``); discovery chatter left
    out, as in ``transactions_from_flows``. Stateless: a flow pending at this period's end and ending in the
    next one is in both; ``ClientView`` counts it once. Computed on columns (the rules of ``problem_kind``,
    ``pending_connect`` and ``is_discovery``, row for row)."""
    flows = as_batch(records)
    outcome, kind = flows["outcome"], flows["kind"]
    in_progress = outcome == ENUM_NUMBERS["outcome"]["in_progress"]
    outbound = flows["direction"] == ENUM_NUMBERS["direction"]["outbound"]
    final = outbound & (kind == ENUM_NUMBERS["kind"]["final"]) & ~in_progress
    pending = (outbound & (kind == ENUM_NUMBERS["kind"]["interim"]) & in_progress
               & (flows["proto"] == ENUM_NUMBERS["proto"]["tcp"]) & (flows["start_ns"] < end_ns - pending_us * 1000))
    rows = np.flatnonzero((final | pending) & ~discovery_mask(flows))
    chosen = flows.take(rows)
    kinds = problem_kinds(chosen)
    kinds[pending[rows]] = CONNECT_PENDING
    return ClientTxns(chosen, kinds)


def problem_kinds(flows: FlowBatch, slow_connect_us: int = SLOW_CONNECT_US) -> NDArray[Any]:
    """``problem_kind`` of each flow, on columns."""
    outcome = flows["outcome"]
    retrans = flows["retransmits"]
    failed = np.isin(outcome, FAILED)
    degraded = (retrans > 0) & (retrans >= RETRANSMIT_RATE * np.maximum(1, flows["packets_tx"]))
    slow = flows["connect_us"] > slow_connect_us
    max_rtt = flows["max_rtt_us"]
    path = queueing(max_rtt, flows["min_rtt_us"])
    server = slow_answers(flows["responses"], flows["answer_us_sum"])
    out = np.empty(flows.n, dtype=object)
    out.fill(OK)  # one object in every row (np.full makes a str a row), so factorize groups by identity
    out[server] = SLOW_SERVER  # the network's kinds below overwrite it: they are the more basic fact
    out[path] = SLOW_PATH
    out[slow] = SLOW_CONNECT
    out[degraded] = RETRANSMITS
    out[failed] = flows.names("outcome")[failed]
    return out


def discovery_mask(flows: FlowBatch) -> NDArray[np.bool_]:
    """``is_discovery`` of each flow, on columns (addresses judged once each)."""
    mask: NDArray[np.bool_] = ((flows["outcome"] == ENUM_NUMBERS["outcome"]["udp_unanswered"])
                               & (flows["proto"] == ENUM_NUMBERS["proto"]["udp"])
                               & (flows["direction"] == ENUM_NUMBERS["direction"]["outbound"]))
    rows = np.flatnonzero(mask)
    if len(rows):
        codes, dsts = factorize(flows["dst"][rows])
        group = np.array([bool(_is_broadcast_or_multicast(d)) for d in dsts], dtype=bool)
        mask[rows] = np.isin(flows["dport"][rows], list(DISCOVERY_PORTS)) | group[codes]
    return mask


class ClientView:
    """``client_transactions`` period after period, each flow counted once: a connect counted while pending
    is not counted again when its final record comes (whatever it ended as, it was a problem: see
    ``meshnode.summary.PENDING_CONNECT_US``), nor when it is still pending at the next period's end.

    The answer for the newest period is kept, so that the digest decorator and ``NodeSource.add_period``,
    which see the same period's records one after the other, get the same transactions.

    Args:
        max_pending: flows counted while pending that are remembered at most (the oldest are forgotten
            beyond, counted in ``forgotten``; a forgotten one would be counted again when it ends).
    """

    def __init__(self, max_pending: int = MAX_PENDING, pending_us: int = PENDING_CONNECT_US) -> None:
        self._pending: dict[int, None] = {}
        self._max = max_pending
        self._pending_us = pending_us
        self._last: tuple[int, ClientTxns] | None = None
        self._lock = threading.Lock()
        self.forgotten = 0

    def period(self, end_ns: int, records: Iterable[FlowRecord] | FlowBatch) -> ClientTxns:
        """The client transactions of the period that ended at ``end_ns`` (the same list when asked twice)."""
        with self._lock:
            if self._last is not None and self._last[0] == end_ns:
                return self._last[1]
            txns = client_transactions(records, end_ns, self._pending_us)
            kinds = txns.kinds.tolist()
            if self._pending or CONNECT_PENDING in kinds:
                keep = []
                for i, (fid, kind) in enumerate(zip(txns.flows["flow_id"].tolist(), kinds, strict=True)):
                    if kind == CONNECT_PENDING:
                        if fid in self._pending:
                            continue
                        self._pending[fid] = None
                    elif self._pending.pop(fid, 0) is None:
                        continue  # counted while it was pending
                    keep.append(i)
                txns = txns.take(np.array(keep, dtype=np.intp))
            out = txns
            while len(self._pending) > self._max:
                del self._pending[next(iter(self._pending))]
                self.forgotten += 1
            self._last = (end_ns, out)
            return out


def client_kinds(txns: Iterable[ClientTxn]) -> dict[str, Counter[str]]:
    """Destination ``dst:dport`` -> diagnosis kind -> client transactions (what blame counts of a period)."""
    t = ClientTxns.of(txns)
    out: dict[str, Counter[str]] = {}
    if not len(t):
        return out
    codes, keys = factorize(t.flows["dst"], t.flows["dport"], t.kinds)
    for (dst, dport, kind), n in zip(keys, np.bincount(codes).tolist(), strict=True):
        out.setdefault(format_destination(dst, dport), Counter())[kind] += n
    return out


class FlowFilter(Protocol):
    """What ``decorate_digest`` needs of a privacy policy (``meshnode.trust.PrivacyPolicy``)."""

    def filter_flows(self, recs: Iterable[FlowRecord]) -> list[FlowRecord]:
        """The records as they may leave the node (addresses filtered, ``comm`` dropped where listed)."""


ProcessRow = tuple[str, str, dict[str, int]]
"""``(comm, destination, kinds)``: one client process's ended outbound flows to one destination, by kind."""


def digest_processes(
    txns: Iterable[ClientTxn],
    *,
    max_processes: int = DIGEST_PROCESSES,
    max_destinations: int = DIGEST_PROCESS_DESTINATIONS,
) -> tuple[list[ProcessRow], int]:
    """The client processes with the most problem transactions, each with its busiest destinations, and how
    many (process, destination) rows with problems the bounds left out.

    Counts what ``client_kinds`` counts, keyed by name: blame's process entity is ``host/comm``, so the
    pids of one program add up. Records without a ``comm`` (unknown, or dropped by the privacy policy) are
    left out; processes without a problem too.
    """
    t = ClientTxns.of(txns)
    t = t.take(t.flows["comm"] != "")
    rows: dict[tuple[str, str], Counter[str]] = {}
    if len(t):
        codes, keys = factorize(t.flows["comm"], t.flows["dst"], t.flows["dport"], t.kinds)
        for (comm, dst, dport, kind), n in zip(keys, np.bincount(codes).tolist(), strict=True):
            rows.setdefault((comm, format_destination(dst, dport)), Counter())[kind] += n
    problems: Counter[str] = Counter()
    for (comm, _), kinds in rows.items():
        problems[comm] += sum(n for k, n in kinds.items() if k != OK)
    ranked = sorted((c for c, n in problems.items() if n > 0), key=lambda c: (-problems[c], c))
    out: list[ProcessRow] = []
    left_out = 0
    for i, comm in enumerate(ranked):
        mine = sorted(((d, k) for (c, d), k in rows.items() if c == comm),
                      key=lambda dk: (-(dk[1].total() - dk[1][OK]), -dk[1].total(), dk[0]))
        keep = mine[:max_destinations] if i < max_processes else []
        out.extend((comm, d, dict(k)) for d, k in keep)
        left_out += sum(1 for _, k in mine[len(keep):] if k.total() > k[OK])
    return out, left_out


def decorate_digest(digest: mesh_pb2.Digest, records: Iterable[FlowRecord],
                    policy: FlowFilter | None = None, view: ClientView | None = None) -> None:
    """Fill ``client_kinds`` of every destination rollup of ``digest`` from the period's records, and the
    digest's ``processes`` (a ``MeshService.digest_decorators`` step); each rollup gets an ``ok`` entry, 0
    when it had no outbound flow.

    ``policy`` is the privacy policy the digest was published under (trust's decorator, which runs
    first, filtered its rollup keys): the records go through it too, so that their destinations match
    the filtered keys and the processes whose ``comm`` it drops are not named. ``view`` is the node's
    ``ClientView`` (each flow counted once over periods); without one, the period is taken on its own.
    """
    txns = (view or ClientView()).period(digest.period_end_ns, records)
    if policy is not None:
        txns = ClientTxns.of(zip(policy.filter_flows(r for r, _ in txns), (k for _, k in txns), strict=True))
    kinds = client_kinds(txns)
    for r in digest.by_destination:
        r.client_kinds["ok"] = 0
        for kind, n in kinds.get(r.key, {}).items():
            r.client_kinds[kind] = n
    rows, left_out = digest_processes(txns)
    for comm, dest, k in rows:
        row = digest.processes.add(comm=comm, destination=dest)
        for kind, n in k.items():
            row.kinds[kind] = n
    digest.processes_truncated = left_out


def _from_client_kinds(digest: mesh_pb2.Digest, labels: Mapping[str, str]) -> list[Transaction]:
    """Counted transactions of a digest's ``client_kinds``; those of its ``processes`` carry the process
    name (and are taken out of the anonymous rest, since client_kinds counts them too)."""
    host, site, region = labels.get("host") or digest.node_id, labels.get("site", ""), labels.get("region", "")
    services = {r.key: r.service for r in digest.by_destination}

    def row(comm: str, key: str, kind: str, n: int) -> Transaction:
        dst, dport = split_destination(key)
        return Transaction(host=host, site=site, region=region, comm=comm, pid=0, dst=dst, dport=dport,
                           service=services.get(key, ""), dst_host="", dst_site="", dst_region="",
                           problem=kind != OK, kind=kind, count=n)

    named: Counter[tuple[str, str]] = Counter()
    out: list[Transaction] = []
    for p in digest.processes:
        if not p.comm:
            continue
        for kind, n in sorted(p.kinds.items()):
            if n > 0:
                out.append(row(p.comm, p.destination, kind, int(n)))
                named[(p.destination, kind)] += int(n)
    for r in digest.by_destination:
        for kind, n in sorted(r.client_kinds.items()):
            rest = int(n) - named[(r.key, kind)]
            if rest > 0:
                out.append(row("", r.key, kind, rest))
    return out


def place_of(labels: Mapping[str, str], node_id: str) -> Place:
    """Where a member lives, from its labels (``host`` label, else its node id)."""
    return Place(labels.get("host") or node_id, labels.get("site", ""), labels.get("region", ""))


class NodeSource:
    """A ``DiagnosisSource`` over this node's periods and the peer digests it holds (module docstring).

    Args:
        labels: this node's labels; ``host`` names it (MeshRunner's convention: the node id unless set).
        addresses: this node's own addresses (called when a question is asked), so peers' flows to it
            name it.
        horizon_ns, max_periods, max_digests, max_attempts: the bounds.
        period_ns: the export period (the grid blame's change detection steps on); 0 infers it from the
            own periods' spacing.
        dns: this host's DNS transactions over a range (``store_dns``: from the node's store), from which
            blame judges resolvers; None: blame names no resolver.
    """

    def __init__(
        self,
        labels: Mapping[str, str],
        *,
        addresses: Callable[[], Iterable[str]] | None = None,
        horizon_ns: int = HORIZON_NS,
        max_periods: int = MAX_PERIODS,
        max_digests: int = MAX_DIGESTS,
        max_attempts: int = MAX_ATTEMPTS,
        period_ns: int = 0,
        dns: Callable[[int, int], DnsBatch] | None = None,
    ) -> None:
        self._labels = dict(labels)
        self._dns = dns
        self._period_ns = period_ns
        self._addresses = addresses
        self._horizon = horizon_ns
        self._max_periods = max_periods
        self._max_digests = max_digests
        self._periods: deque[_Period] = deque()
        self._digests: deque[_Digest] = deque()
        self._seen: set[tuple[str, int]] = set()
        self._members: dict[str, tuple[int, Place, tuple[str, ...]]] = {}
        self._attempts: deque[Attempt] = deque(maxlen=max_attempts)
        self._lock = threading.Lock()
        self.view = ClientView()
        """Which records of each period are client transactions (shared with the digest decorator)."""
        self.dropped: Counter[str] = Counter()
        """What the bounds pushed out: ``periods``, ``digests``, ``attempts``."""

    # ------------------------------------------------------------------------------------------ intake

    @property
    def host(self) -> str:
        """This node's host name."""
        return self._labels.get("host", "")

    def add_period(self, period_end_ns: int, records: Sequence[FlowRecord] | FlowBatch) -> None:
        """One of this node's periods (its finals and interims; only outbound finals count)."""
        flows, scans = _without_scans(as_batch(records))
        finals = flows.take((flows["kind"] == ENUM_NUMBERS["kind"]["final"])
                            & (flows["direction"] == ENUM_NUMBERS["direction"]["outbound"]))
        txns = self._collapsed(self.view.period(period_end_ns, flows))
        samples = samples_from_flows(flows, host=self.host, labels=self._labels)
        discovery = discovery_mask(finals)
        chatter = discovery_chatter(finals.take(discovery))
        tried = finals.take(np.isin(finals["outcome"], (*FAILED, *USEFUL)) & ~discovery)
        attempts: list[Attempt] = list(zip(
            tried["start_ns"].tolist(), tried["comm"].tolist(), tried["pid"].tolist(), tried["dst"].tolist(),
            tried["dport"].tolist(), tried.names("proto").tolist(), tried.names("outcome").tolist(), strict=True))
        with self._lock:
            self._periods.append(_Period(period_end_ns, tuple(txns), tuple(samples), tuple(chatter), scans))
            full = self._attempts.maxlen is not None and len(self._attempts) + len(attempts) > self._attempts.maxlen
            if full and self._attempts.maxlen is not None:
                self.dropped["attempts"] += len(self._attempts) + len(attempts) - self._attempts.maxlen
            self._attempts.extend(attempts)
            self._trim(period_end_ns)

    def _collapsed(self, txns: Iterable[ClientTxn], examples: int = EXAMPLES_PER_KEY) -> list[Transaction]:
        """The period's transactions as counted rows: up to ``examples`` rows with their flow per key of a
        problem (in the order they came), then one row per key with the rest (in the order the rest first
        came). Blame counts them the same; memory is per key, not per flow, and no Transaction is made per
        flow: identical ones are counted on columns."""
        t = ClientTxns.of(txns)
        if not len(t):
            return []
        host, site, region = self.host, self._labels.get("site", ""), self._labels.get("region", "")
        f = t.flows
        codes, keys = factorize(f["comm"], f["pid"], f["dst"], f["dport"], f["service"], t.kinds)
        order = np.argsort(codes, kind="stable")
        starts = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=len(keys)))[:-1]))
        rank = np.empty(len(codes), dtype=np.intp)
        rank[order] = np.arange(len(codes)) - starts[codes[order]]
        example = (t.kinds != OK) & (rank < examples)
        at = np.flatnonzero(example)
        out = [
            Transaction(host=host, site=site, region=region, comm=comm, pid=pid, dst=dst, dport=dport,
                        service=service, dst_host="", dst_site="", dst_region="", problem=True, kind=kind,
                        flow=(src, sport, dst, dport, proto))
            for comm, pid, dst, dport, service, kind, src, sport, proto in zip(
                f["comm"][at].tolist(), f["pid"][at].tolist(), f["dst"][at].tolist(), f["dport"][at].tolist(),
                f["service"][at].tolist(), t.kinds[at].tolist(), f["src"][at].tolist(), f["sport"][at].tolist(),
                f.names("proto")[at].tolist(), strict=True)
        ]
        rest = codes[~example]
        if len(rest):
            distinct, first = np.unique(rest, return_index=True)
            counts = np.bincount(rest, minlength=len(keys))
            for code in distinct[np.argsort(first, kind="stable")].tolist():
                comm, pid, dst, dport, service, kind = keys[code]
                out.append(Transaction(host=host, site=site, region=region, comm=comm, pid=pid, dst=dst,
                                       dport=dport, service=service, dst_host="", dst_site="", dst_region="",
                                       problem=kind != OK, kind=kind, count=int(counts[code])))
        return out

    def add_digest(self, digest: mesh_pb2.Digest, own: bool = False) -> None:
        """One verified digest (``own`` ones only update this node's place; its records say more)."""
        labels = dict(digest.labels)
        place = place_of(labels, digest.node_id)
        with self._lock:
            prev = self._members.get(digest.node_id)
            if prev is None or prev[0] <= digest.period_end_ns:
                self._members[digest.node_id] = (digest.period_end_ns, place, tuple(digest.addresses))
            if own or (digest.node_id, digest.seq) in self._seen:
                return
        if digest.processes or any(r.client_kinds for r in digest.by_destination):
            txns = _from_client_kinds(digest, labels)
        else:
            problem_flows = {
                r.key: {RETRANSMITS: r.flows_retransmitting, SLOW_CONNECT: r.flows_slow_connect,
                        SLOW_PATH: r.flows_slow_path, SLOW_SERVER: r.flows_slow_server}
                for r in digest.by_destination
                if r.flows_retransmitting or r.flows_slow_connect or r.flows_slow_path or r.flows_slow_server
            }
            txns = transactions_from_rollups(digest.by_destination, labels=labels, host=digest.node_id,
                                             problem_flows=problem_flows)
        samples = [
            PeerSample(host=place.host, labels=labels, destination=r.key, attempts=r.useful + sum(r.failures.values()),
                       failures=sum(r.failures.values()), rtt_p50_us=float(r.rtt_p50_us),
                       rtt_p95_us=float(r.rtt_p95_us), throughput_bps=float(r.throughput_p50_bps))
            for r in digest.by_destination
        ]
        with self._lock:
            self._seen.add((digest.node_id, digest.seq))
            self._digests.append(_Digest(digest.node_id, digest.seq, digest.period_end_ns, labels,
                                         tuple(txns), tuple(samples)))
            self._trim(digest.period_end_ns)

    def on_digest(self, digest: mesh_pb2.Digest, signed: object, own: bool) -> None:
        """``MeshService.digest_listeners`` signature."""
        self.add_digest(digest, own=own)

    def _trim(self, newest_ns: int) -> None:
        floor = newest_ns - self._horizon
        while self._periods and (self._periods[0].end_ns < floor or len(self._periods) > self._max_periods):
            self._periods.popleft()
            self.dropped["periods"] += 1
        while self._digests and (self._digests[0].end_ns < floor or len(self._digests) > self._max_digests):
            old = self._digests.popleft()
            self._seen.discard((old.node_id, old.seq))
            self.dropped["digests"] += 1
        while self._attempts and self._attempts[0][0] < floor:
            self._attempts.popleft()

    # ------------------------------------------------------------------------------------------ answers

    def members(self) -> dict[str, Place]:
        """Member address -> place, from each member's newest digest and this node's own addresses."""
        with self._lock:
            known = list(self._members.values())
        out: dict[str, Place] = {}
        for _, place, addrs in sorted(known, key=lambda m: m[0]):
            for a in addrs:
                out[a] = place
        if self._addresses is not None:
            me = place_of(self._labels, self.host)
            for a in self._addresses():
                out[a] = me
        return out

    def transactions(self, since_ns: int, until_ns: int) -> list[Transaction]:
        """Own and peers' transactions of the periods that ended in the range, destinations placed."""
        return [t for _, txns in self.periods(since_ns, until_ns) for t in txns]

    def period_ns(self) -> int:
        """The export period: as configured, else the median spacing of the own periods held (10 s when
        fewer than two are held)."""
        if self._period_ns:
            return self._period_ns
        with self._lock:
            ends = [p.end_ns for p in self._periods]
        gaps = sorted(b - a for a, b in pairwise(ends) if b > a)
        return gaps[len(gaps) // 2] if gaps else 10_000_000_000

    def periods(self, since_ns: int, until_ns: int) -> list[tuple[int, list[Transaction]]]:
        """Own and peers' transactions of the periods that ended in the range, grouped on the export-period
        grid (each group's time is the latest period end in it), oldest first; destinations placed.

        Members' periods are not aligned with this node's: each period falls in the grid slot its end is
        in, so one slot holds about one period of every member (the change detection's time step)."""
        grid = self.period_ns()
        with self._lock:
            held = [(p.end_ns, p.transactions) for p in self._periods if since_ns <= p.end_ns <= until_ns]
            held += [(d.end_ns, d.transactions) for d in self._digests if since_ns <= d.end_ns <= until_ns]
        members = self.members()
        slots: dict[int, tuple[int, list[Transaction]]] = {}
        for end_ns, txns in held:
            slot = slots.setdefault(end_ns // grid, (end_ns, []))
            if end_ns > slot[0]:
                slots[end_ns // grid] = slot = (end_ns, slot[1])
            for t in txns:
                found = members.get(t.dst)
                if found is not None and not t.dst_host:
                    t = replace(t, dst_host=found.host, dst_site=found.site, dst_region=found.region)
                slot[1].append(t)
        return [slots[k] for k in sorted(slots)]

    def held_since_ns(self) -> int:
        """The end of the oldest period (own or a peer's) held; 0 when none is."""
        with self._lock:
            ends = [q[0].end_ns for q in (self._periods, self._digests) if q]
        return min(ends, default=0)

    def samples(self, since_ns: int, until_ns: int) -> list[PeerSample]:
        """The newest sample per (host, destination) of the periods that ended in the range."""
        newest: dict[tuple[str, str], PeerSample] = {}
        with self._lock:
            groups = [p.samples for p in self._periods if since_ns <= p.end_ns <= until_ns]
            groups += [d.samples for d in self._digests if since_ns <= d.end_ns <= until_ns]
        for samples in groups:
            for s in samples:
                newest[(s.host, s.destination)] = s
        return list(newest.values())

    def labels(self) -> Mapping[str, str]:
        """This node's labels."""
        return dict(self._labels)

    def retry_advice(self, since_ns: int, until_ns: int) -> list[RetryAdvice]:
        """Seed 004's retry taxonomy over this node's own outbound attempts that started in the range."""
        with self._lock:
            attempts = [a for a in self._attempts if since_ns <= a[0] <= until_ns]
        records = [
            FlowRecord(flow_id=0, src="", sport=0, dst=dst, dport=dport, proto=proto, direction="outbound",
                       comm=comm, pid=pid, start_ns=start, outcome=outcome)
            for start, comm, pid, dst, dport, proto, outcome in attempts
        ]
        return retry_advice(records)

    def discovery(self, since_ns: int, until_ns: int) -> list[DiscoveryChatter]:
        """Unanswered discovery chatter of this node's processes in the range, summed per process and protocol
        (``destinations`` is the most seen in one period)."""
        flows: Counter[tuple[str, str]] = Counter()
        dsts: dict[tuple[str, str], int] = {}
        with self._lock:
            groups = [p.chatter for p in self._periods if since_ns <= p.end_ns <= until_ns]
        for chatter in groups:
            for c in chatter:
                flows[(c.comm, c.protocol)] += c.flows
                dsts[(c.comm, c.protocol)] = max(dsts.get((c.comm, c.protocol), 0), c.destinations)
        out = [DiscoveryChatter(c, p, n, dsts[(c, p)]) for (c, p), n in flows.items()]
        return sorted(out, key=lambda d: (-d.flows, d.comm, d.protocol))

    def scans(self, since_ns: int, until_ns: int) -> list[ScanPattern]:
        """Inbound scans of this node's ports in the range (their flows are not in the transactions), summed
        per scanner over the periods; the most ports first."""
        ports: Counter[str] = Counter()
        failures: Counter[str] = Counter()
        with self._lock:
            groups = [p.scans for p in self._periods if since_ns <= p.end_ns <= until_ns]
        for scans in groups:
            for s in scans:
                ports[s.src] += s.ports
                failures[s.src] += s.failures
        out = [ScanPattern(src, n, failures[src]) for src, n in ports.items()]
        return sorted(out, key=lambda s: (-s.ports, -s.failures, s.src))

    def dns(self, since_ns: int, until_ns: int) -> DnsBatch:
        """This host's DNS transactions answered in the range (none when no store backs the source)."""
        return self._dns(since_ns, until_ns) if self._dns is not None else DnsBatch({}, 0)

    def held(self) -> dict[str, int]:
        """What is held now (for status and tests): ``periods``, ``digests``, ``attempts``, ``members``."""
        with self._lock:
            return {"periods": len(self._periods), "digests": len(self._digests), "attempts": len(self._attempts),
                    "members": len(self._members)}


def _without_scans(flows: FlowBatch) -> tuple[FlowBatch, tuple[ScanPattern, ...]]:
    """A period's flows without the inbound scans among them (seed 004: one source failing across many local
    ports), and those scans: a scanner's refusals say nothing about the host's services."""
    inbound_failed = (flows["direction"] == ENUM_NUMBERS["direction"]["inbound"]) & np.isin(flows["outcome"], FAILED)
    if not inbound_failed.any():
        return flows, ()
    scans = tuple(scan_patterns(flows.take(inbound_failed)))
    if not scans:
        return flows, ()
    scanned = inbound_failed & np.isin(flows["dst"], [s.src for s in scans])
    return flows.take(~scanned), scans




def store_dns(store: Store) -> Callable[[int, int], DnsBatch]:
    """``store``'s DNS transactions answered in a range, the newest ``MAX_BLAME_DNS`` (``NodeSource(dns=...)``)."""

    def dns(since_ns: int, until_ns: int) -> DnsBatch:
        with store.reader() as conn:
            got, _ = store.query_dns(DnsQuery(since_ns, until_ns), conn, limit=MAX_BLAME_DNS)
        return got

    return dns
