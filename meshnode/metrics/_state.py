"""The mesh's and trust's state as metric families: members by state, digests accepted and refused by reason,
every bounded thing's counter (what ``meshctl peers`` and ``meshctl validate`` show), trust scores.

The views are plain data the wiring reads once a period in the event loop (the mesh and trust are not
thread-safe; a scrape runs in the HTTP server's thread and only reads the last view). Node ids as labels
are bounded: trust lists the ``TRUST_LISTED`` lowest scores, and counts the rest.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

TRUST_LISTED: Final = 20
"""Nodes whose trust score has a series of its own: the lowest scores (the flagged ones first)."""

MEMBER_STATES: Final = ("alive", "suspect", "dead", "left")

_DIGEST_PREFIX: Final = "digests_"
_DIGEST_NOT_REFUSED: Final = frozenset(("accepted", "published", "history_filled", "evicted"))
"""The mesh counts each digest it drops as ``digests_<reason>``; these ``digests_*`` counters are not drops
(``evicted`` is a held digest pushed out by a newer member's, counted with the other bounded things)."""
_BYTES_SUFFIX: Final = "_bytes_sent"


@dataclass(frozen=True, slots=True)
class MeshView:
    """The mesh as the metrics show it."""

    members: Mapping[str, int]
    """Members (this node included) by state: ``alive``, ``suspect``, ``dead``, ``left``."""
    counters: Mapping[str, int]
    """The mesh's counters by name (``MeshService.counter_totals``), each counting up from the start."""
    health_score: int = 0
    """The awareness score (0 is healthy; higher means this node's own probes are failing)."""
    digests_held: int = 0
    accounts: Sequence[tuple[str, Mapping[str, int]]] = ()
    """Seed 003's accounting: (requester, ``Account`` fields by name), busiest first (``Ledger.accounts``)."""
    accounts_evicted: int = 0
    """Accounts the ledger's bound dropped."""


@dataclass(frozen=True, slots=True)
class TrustView:
    """Trust as the metrics show it."""

    scores: Sequence[tuple[str, float, bool]]
    """(node id, score, flagged) of every node with a score below 1 or evidence, lowest score first."""
    threshold: float
    counters: Mapping[str, int] = field(default_factory=dict)
    """Cross-validation's counters (digests validated, challenges, ...), as ``meshctl validate`` shows."""


class StateCollector(Collector):
    """Serves the last ``MeshView`` and ``TrustView``; nothing until the wiring sets one (a node without
    the mesh shows no mesh families)."""

    def __init__(self) -> None:
        self._mesh: MeshView | None = None
        self._trust: TrustView | None = None
        self._lock = threading.Lock()

    def set_mesh(self, view: MeshView) -> None:
        with self._lock:
            self._mesh = view

    def set_trust(self, view: TrustView) -> None:
        with self._lock:
            self._trust = view

    def describe(self) -> Iterator[Metric]:
        return iter(())  # the families come and go with the views: nothing to check names against up front

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            mesh, trust = self._mesh, self._trust
        out = mesh_families(mesh) if mesh is not None else []
        if trust is not None:
            out += trust_families(trust)
        return iter(out)


def mesh_families(view: MeshView) -> list[Metric]:
    """The mesh families of one view."""
    members = GaugeMetricFamily("meshnode_mesh_members", "Mesh members by state, this node included.",
                                labels=["state"])
    for state in MEMBER_STATES:
        members.add_metric([state], view.members.get(state, 0))
    for state, n in sorted(view.members.items()):
        if state not in MEMBER_STATES:
            members.add_metric([state], n)
    accepted = CounterMetricFamily("meshnode_mesh_digests_accepted", "Peer digests verified and held.")
    published = CounterMetricFamily("meshnode_mesh_digests_published", "Digests this node signed and published.")
    refused = CounterMetricFamily("meshnode_mesh_digests_refused", "Peer digests dropped, by reason (bad_signature, "
                                  "oversize, stale, denied, not_member, ...).", labels=["reason"])
    sent = CounterMetricFamily("meshnode_mesh_sent_bytes", "Bytes of mesh messages sent, by kind (packet: "
                               "probes and gossip; stream: push-pull and digest transfers).", labels=["kind"])
    events = CounterMetricFamily("meshnode_mesh_events", "The mesh's other counters by name, as meshctl peers "
                                 "shows them: refusals and drops of every bounded thing (members_refused_table_full, "
                                 "broadcasts_dropped, gossip_refused_*, ...), probes, suspicions, deaths.",
                                 labels=["event"])
    accepted.add_metric([], view.counters.get("digests_accepted", 0))
    published.add_metric([], view.counters.get("digests_published", 0))
    for name, value in sorted(view.counters.items()):
        if name.startswith(_DIGEST_PREFIX):
            reason = name[len(_DIGEST_PREFIX):]
            if reason not in _DIGEST_NOT_REFUSED:
                refused.add_metric([reason], value)
                continue
            if reason in ("accepted", "published"):
                continue
        if name.endswith(_BYTES_SUFFIX):
            sent.add_metric([name[:-len(_BYTES_SUFFIX)]], value)
            continue
        events.add_metric([name], value)
    health = GaugeMetricFamily("meshnode_mesh_health_score", "This node's awareness score (0 is healthy; it "
                               "rises while its own probes fail, and stretches its timeouts).", value=view.health_score)
    held = GaugeMetricFamily("meshnode_mesh_digests_held", "Peer digests held (newest and history).",
                             value=view.digests_held)
    return [members, accepted, published, refused, sent, events, health, held, *account_families(view)]


ACCOUNTS_LISTED = 50
"""Members with series of their own; the rest are summed as ``other`` (the label's cardinality bound)."""
_NODE_ID = re.compile(r"^[0-9a-f]{16}$")


def account_families(view: MeshView, listed: int = ACCOUNTS_LISTED) -> list[Metric]:
    """Per requester: what this node served it and asked of it, and its requests refused over quota.

    Labels never hold an address: members are labelled by node id (the busiest ``listed``; the rest summed
    as ``other``), callers that are not members (operators' meshctl, by address in ``meshctl peers``) are
    summed as ``callers``."""
    fam = CounterMetricFamily("meshnode_mesh_account", "Seed 003's accounting per requester (a member's node id, "
                              "the busiest 50, then 'other'; non-member callers summed as 'callers'): "
                              "served_tasks, served_queries, served_bytes, asked_tasks, asked_queries, asked_bytes, "
                              "refused (over its quota).", labels=["peer", "what"])
    sums: dict[str, dict[str, int]] = {"other": {}, "callers": {}}
    members = 0
    for peer, fields in view.accounts:
        group = "" if _NODE_ID.match(peer) else "callers"
        if not group:
            members += 1
            group = "" if members <= listed else "other"
        for what, n in fields.items():
            if group:
                sums[group][what] = sums[group].get(what, 0) + n
            else:
                fam.add_metric([peer, what], n)
    for group, fields in sums.items():
        for what, n in fields.items():
            fam.add_metric([group, what], n)
    evicted = CounterMetricFamily("meshnode_mesh_accounts_evicted", "Accounts dropped to stay within the ledger's "
                                  "bound (least recently used first).", value=view.accounts_evicted)
    return [fam, evicted]


def trust_families(view: TrustView, listed: int = TRUST_LISTED) -> list[Metric]:
    """The trust families of one view; scores of at most ``listed`` nodes."""
    flagged = sum(1 for _, _, f in view.scores if f)
    nodes = GaugeMetricFamily("meshnode_trust_flagged_nodes", "Nodes flagged by cross-validation (their digests "
                              "are left out of fleet aggregates).", value=flagged)
    scored = GaugeMetricFamily("meshnode_trust_scored_nodes", "Nodes with a trust score below 1 or evidence "
                               "against them.", value=len(view.scores))
    threshold = GaugeMetricFamily("meshnode_trust_score_threshold", "A node is flagged when its score drops "
                                  "below this.", value=view.threshold)
    score = GaugeMetricFamily("meshnode_trust_score", f"Trust score (0..1) of the {listed} lowest-scored nodes.",
                              labels=["node_id"])
    is_flagged = GaugeMetricFamily("meshnode_trust_flagged", f"1 when the node is flagged, of the {listed} "
                                   "lowest-scored nodes.", labels=["node_id"])
    ordered = sorted(view.scores, key=lambda s: (not s[2], s[1], s[0]))
    for node_id, value, f in ordered[:listed]:
        score.add_metric([node_id], value)
        is_flagged.add_metric([node_id], 1.0 if f else 0.0)
    unlisted = GaugeMetricFamily("meshnode_trust_scores_unlisted", "Scored nodes left out of "
                                 "meshnode_trust_score (beyond the lowest listed).",
                                 value=max(0, len(view.scores) - listed))
    events = CounterMetricFamily("meshnode_trust_events", "Cross-validation's counters by name, as meshctl "
                                 "validate shows them.", labels=["event"])
    for name, value in sorted(view.counters.items()):
        events.add_metric([name], value)
    return [nodes, scored, threshold, score, is_flagged, unlisted, events]
