"""Transactions: the unit of blame allocation, and the adapters that make them from flows and digests.

A transaction is one attempt by a client process on one host to use one destination service, with the
place of both ends (site and region labels; the destination's only when it is a mesh member) and whether
it had a problem. ``count`` lets one row stand for many identical transactions, so that a node can ship
per-(process, destination, kind) counts instead of flows, and a mesh digest's rollups fit the same model.

Only the client's view is used: a node turns its *outbound* flows into transactions. Inbound flows are the
other end's outbound flows, so counting both would count every transaction twice in a fleet view.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple, Protocol

from meshnode._model import FAILED_OUTCOMES
from meshnode.summary._problems import (
    CONNECT_PENDING,
    OK,
    RETRANSMITS,
    SLOW_CONNECT,
    SLOW_CONNECT_US,
    SLOW_PATH,
    SLOW_SERVER,
    problem_kind,
)

if TYPE_CHECKING:
    from meshnode._model import FlowRecord

PROBLEM_KINDS: Final = (*sorted(FAILED_OUTCOMES), CONNECT_PENDING, RETRANSMITS, SLOW_CONNECT, SLOW_PATH, SLOW_SERVER)
"""Every ``kind`` of a problem transaction: the failed outcomes, a connect still unanswered at a period's
end, then the kinds of degradation: three of the path (``_problems.PATH_KINDS``), one of the server."""

FAILURE_KINDS: Final = frozenset({*FAILED_OUTCOMES, CONNECT_PENDING})
"""Problem kinds that mean the transaction did not happen (as opposed to happening badly); a connect
unanswered for longer than a handshake ever takes in a fleet counts as not happening (yet)."""


class Place(NamedTuple):
    """Where a mesh member lives: its host name and labels."""

    host: str
    site: str
    region: str


FiveTuple = tuple[str, int, str, int, str]
"""``(src, sport, dst, dport, proto)`` of one example flow."""


@dataclass(frozen=True, slots=True)
class Transaction:
    """One (or ``count`` identical) client transactions, seen from the client's host.

    Attributes:
        host: the client host (its ``host`` label, or node id).
        site: the client's ``site`` label ("" when it has none).
        region: the client's ``region`` label ("" when it has none).
        comm: the client process name ("" when unknown, e.g. from a per-destination rollup).
        pid: the client process id (0 when unknown, e.g. a process named by a peer's digest).
        dst: the destination address.
        dport: the destination port.
        service: the destination's service name ("postgresql"), "" when unknown.
        dst_host: the destination's mesh host name, "" when it is not a mesh member.
        dst_site: the destination's ``site`` label, "" when unknown.
        dst_region: the destination's ``region`` label, "" when unknown.
        problem: True when the transaction failed or was degraded.
        kind: ``"ok"`` or one of ``PROBLEM_KINDS``.
        count: how many identical transactions this row stands for.
        flow: one example 5-tuple, when the row came from a flow.
    """

    host: str
    site: str
    region: str
    comm: str
    pid: int
    dst: str
    dport: int
    service: str
    dst_host: str
    dst_site: str
    dst_region: str
    problem: bool
    kind: str
    count: int = 1
    flow: FiveTuple | None = None

    @property
    def destination(self) -> str:
        """``dst:dport`` (IPv6 in brackets), as ``FlowRecord.destination``."""
        host = f"[{self.dst}]" if ":" in self.dst else self.dst
        return f"{host}:{self.dport}"


def transactions_from_flows(
    flows: Iterable[FlowRecord],
    *,
    labels: Mapping[str, str],
    members: Mapping[str, tuple[str, str, str]] | None = None,
    slow_connect_us: int = SLOW_CONNECT_US,
    exclude_discovery: bool = True,
) -> list[Transaction]:
    """The local node's outbound flows as transactions, one per flow.

    Args:
        flows: flow records of this node (final records; interim and ``in_progress`` ones are skipped,
            since their final record will be counted when the flow ends).
        labels: this node's labels (``host``, ``site``, ``region``).
        members: mesh member addresses -> their ``Place`` (or a plain ``(host, site, region)``), to name
            destination hosts and sites.
        slow_connect_us: the slow-handshake threshold.
        exclude_discovery: leave out service-discovery chatter (seed 004), which fails by design and
            would otherwise read as a broken network.
    """
    from meshnode.diagnosis._taxonomy import is_discovery

    members = members or {}
    host, site, region = labels.get("host", ""), labels.get("site", ""), labels.get("region", "")
    out: list[Transaction] = []
    for rec in flows:
        if rec.direction != "outbound" or rec.kind != "final" or rec.outcome == "in_progress":
            continue
        if exclude_discovery and is_discovery(rec):
            continue
        kind = problem_kind(rec, slow_connect_us)
        found = members.get(rec.dst)
        place = Place(*found) if found else None
        out.append(Transaction(
            host=host, site=site, region=region, comm=rec.comm, pid=rec.pid, dst=rec.dst, dport=rec.dport,
            service=rec.service, dst_host=place.host if place else "", dst_site=place.site if place else "",
            dst_region=place.region if place else "", problem=kind != OK, kind=kind,
            flow=(rec.src, rec.sport, rec.dst, rec.dport, rec.proto),
        ))
    return out


class RollupLike(Protocol):
    """The fields of a per-destination rollup (``meshnode.v1.Rollup``) that transactions are made from."""

    key: str
    flows: int
    useful: int
    service: str

    @property
    def failures(self) -> Mapping[str, int]:
        """Failed flows by outcome."""


def split_destination(key: str) -> tuple[str, int]:
    """``"10.0.0.7:5432"`` or ``"[fd00::7]:5432"`` -> ``("10.0.0.7", 5432)``; port 0 when there is none."""
    addr, sep, port = key.rpartition(":")
    if not sep or not port.isdigit():
        return key, 0
    if addr.startswith("[") and addr.endswith("]"):
        addr = addr[1:-1]
    return addr, int(port)


def transactions_from_rollups(
    rollups: Iterable[RollupLike],
    *,
    labels: Mapping[str, str],
    members: Mapping[str, tuple[str, str, str]] | None = None,
    host: str = "",
    problem_flows: Mapping[str, Mapping[str, int]] | None = None,
) -> list[Transaction]:
    """One node's per-destination rollups (from its digest) as counted transactions.

    A rollup knows attempts and failures by outcome but no process, so the rows have ``comm=""``, and
    process entities are not formed from them. A rollup's ``retransmits`` is a count of segments, not of
    flows with retransmissions, so it cannot say how many transactions were degraded; ``problem_flows``
    (destination key -> kind -> flows) supplies those counts when the digest carries them.

    Args:
        rollups: ``Digest.by_destination``.
        labels: the publishing node's labels (``Digest.labels``).
        members: mesh member addresses -> their ``Place`` (or a plain ``(host, site, region)``).
        host: the host name when the labels carry none (the node id).
        problem_flows: extra degraded-flow counts per destination (``retransmits``, ``slow_connect``);
            they are taken out of the useful flows.
    """
    members = members or {}
    name = labels.get("host") or host
    site, region = labels.get("site", ""), labels.get("region", "")
    out: list[Transaction] = []
    for r in rollups:
        dst, dport = split_destination(r.key)
        found = members.get(dst)
        place = Place(*found) if found else None
        def row(kind: str, n: int, dst: str = dst, dport: int = dport, place: Place | None = place,
                service: str = r.service) -> Transaction:
            return Transaction(
                host=name, site=site, region=region, comm="", pid=0, dst=dst, dport=dport, service=service,
                dst_host=place.host if place else "", dst_site=place.site if place else "",
                dst_region=place.region if place else "", problem=kind != OK, kind=kind, count=n,
            )

        degraded = (problem_flows or {}).get(r.key, {})
        ok = int(r.useful)
        for kind, n in sorted(degraded.items()):
            n = min(int(n), ok)
            ok -= n
            if n > 0:
                out.append(row(kind, n))
        for kind, n in sorted(r.failures.items()):
            if n > 0:
                out.append(row(kind, int(n)))
        if ok > 0:
            out.append(row(OK, ok))
    return out
