"""Trust scores: how far this node believes each peer's reports, from cross-validation evidence.

Seed 003 derives trust from validating results and blacklists the untrustable; seed 000 resolves
disagreement by majority. A score lives in [0, 1]: every period it recovers exponentially toward 1
(``1 - s`` shrinks by ``exp(-dt / recovery_s)``), and each piece of evidence multiplies it by
``1 - weight[severity]``. A node is flagged when its score falls below ``threshold`` and stays flagged
until it climbs back above ``recover_above`` (hysteresis, so that a node hovering at the threshold does
not flap in and out of aggregates).

Evidence names two ends, and a single disagreement cannot say which one lied. Attribution:

1. this node is one of the ends: it knows its own records are true, so the other end takes the blame;
2. exactly one end is already flagged: it takes the blame;
3. one end is disputed by at least ``quorum`` (3) distinct peers within ``dispute_window_s`` and by more than
   the other: it takes the blame (majority: a liar disagrees with everyone it lies about, an honest node only
   with the liar). Three, not two: an honest node's own record goes missing now and then (a sensor or digest
   miss makes one honest dispute), and that one beside a liar's dispute of it would be two, the same count as
   a liar with two victims; blamed on it, an honest node took a liar's penalty. Under mutual TLS peers are
   counted by certificate (``certificate``): one certificate is one voice however many keys its holder signs
   with, and a key no certificate vouches for has none;
4. otherwise nobody is blamed: the evidence is kept (unblamed) and the dispute counts toward rule 3. A liar
   that lies about one honest peer (inventing flows with it, or omitting the flows it had with it) looks
   exactly like that peer lying about it, so any share of the penalty would hit the honest end as hard as the
   liar; the honest end blames the liar itself (rule 1).

Evidence wrong on the face of the reporter's own digest (``ON_ITS_FACE``: it publishes another member's mesh
address as its own) blames the reporter whoever holds it, and is no dispute.

Several pieces of evidence about the same flow in one update count once, at the heaviest severity.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from meshnode.trust._validate import Evidence, FlowKey

ON_ITS_FACE: Final = frozenset({"claims_member_address"})
"""Evidence reasons that are wrong on the face of the reporter's own digest: it takes the blame, whoever holds it."""

DEFAULT_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType(
    {"contradiction": 0.6, "mismatch": 0.3, "minor": 0.05}
)


@dataclass(frozen=True, slots=True)
class ScoreConfig:
    """Parameters of the trust score.

    Attributes:
        threshold: a node is flagged when its score drops below this.
        recover_above: a flagged node is unflagged when its score reaches this.
        recovery_s: time constant of the recovery toward 1.
        weights: penalty per evidence severity (the score is multiplied by ``1 - weight``).
        quorum: distinct disputing peers needed to blame a node that this node cannot judge itself.
        dispute_window_s: how long a dispute between two peers counts toward the quorum.
    """

    threshold: float = 0.5
    recover_above: float = 0.8
    recovery_s: float = 60.0
    weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_WEIGHTS)
    quorum: int = 3
    dispute_window_s: float = 120.0


@dataclass(frozen=True, slots=True)
class Blame:
    """A penalty applied to one node: the evidence and the weight actually used."""

    node_id: str
    weight: float
    evidence: Evidence
    attribution: str


@dataclass(frozen=True, slots=True)
class NodeTrust:
    """One node's trust as seen here."""

    node_id: str
    score: float
    flagged: bool
    evidence: int
    last_evidence_ns: int


@dataclass(slots=True)
class _Node:
    score: float = 1.0
    flagged: bool = False
    evidence: int = 0
    last_evidence_ns: int = 0


class TrustState:
    """Per-node trust scores, updated once per period with the evidence found; pure, clock injected.

    Args:
        self_id: this node's id (its own records are ground truth for attribution).
        config: score parameters.
        now_ns: the clock reading the state starts at.
        certificate: a node id's certificate fingerprint, None when no certificate vouches for it
            (``meshnode.mesh.IdentityGuard.certificate``); unset, disputing peers count by node id (plaintext).
    """

    def __init__(self, self_id: str, config: ScoreConfig | None = None, now_ns: int = 0,
                 certificate: Callable[[str], str | None] | None = None) -> None:
        self.self_id = self_id
        self.certificate = certificate
        self.config = config or ScoreConfig()
        self._now = now_ns
        self._nodes: dict[str, _Node] = {}
        self._disputes: dict[str, dict[str, int]] = {}

    def _node(self, node_id: str) -> _Node:
        n = self._nodes.get(node_id)
        if n is None:
            n = self._nodes[node_id] = _Node()
        return n

    def _recover(self, now_ns: int) -> None:
        dt = max(0, now_ns - self._now) / 1e9
        self._now = max(self._now, now_ns)
        if dt <= 0:
            return
        factor = math.exp(-dt / self.config.recovery_s)
        for n in self._nodes.values():
            n.score = 1.0 - (1.0 - n.score) * factor
            if n.flagged and n.score >= self.config.recover_above:
                n.flagged = False

    def _disputants(self, node_id: str) -> int:
        horizon = self._now - int(self.config.dispute_window_s * 1e9)
        peers = [p for p, t in self._disputes.get(node_id, {}).items() if t >= horizon]
        if self.certificate is None:
            return len(peers)
        return len({c for c in map(self.certificate, peers) if c is not None})

    def update(self, now_ns: int, evidence: Iterable[Evidence]) -> list[Blame]:
        """Recover every score to ``now_ns``, then apply this period's evidence; returns the penalties."""
        self._recover(now_ns)
        evs = list(evidence)
        for e in evs:
            if self.self_id not in (e.reporter, e.witness) and e.reporter != e.witness and e.reason not in ON_ITS_FACE:
                self._disputes.setdefault(e.reporter, {})[e.witness] = now_ns
                self._disputes.setdefault(e.witness, {})[e.reporter] = now_ns
        heaviest: dict[tuple[str, FlowKey | str], Blame] = {}
        for e in evs:
            base = self.config.weights.get(e.severity, 0.0)
            blame = self._attribute(e, base)
            if blame is None:
                continue
            k = (blame.node_id, e.flow)
            if k not in heaviest or blame.weight > heaviest[k].weight:
                heaviest[k] = blame
        for b in heaviest.values():
            n = self._node(b.node_id)
            n.score *= 1.0 - b.weight
            n.evidence += 1
            n.last_evidence_ns = now_ns
            if n.score < self.config.threshold:
                n.flagged = True
        self._prune()
        return list(heaviest.values())

    def _attribute(self, e: Evidence, base: float) -> Blame | None:
        if e.reporter == e.witness:
            return Blame(e.reporter, base, e, "self_contradiction")
        if e.reason in ON_ITS_FACE:
            return Blame(e.reporter, base, e, "on_its_face")
        if e.witness == self.self_id:
            return Blame(e.reporter, base, e, "witnessed_here")
        if e.reporter == self.self_id:
            return Blame(e.witness, base, e, "reported_here")
        r_flagged, w_flagged = self.is_flagged(e.reporter), self.is_flagged(e.witness)
        if r_flagged != w_flagged:
            return Blame(e.reporter if r_flagged else e.witness, base, e, "already_flagged")
        dr, dw = self._disputants(e.reporter), self._disputants(e.witness)
        if dr >= self.config.quorum and dr > dw:
            return Blame(e.reporter, base, e, "majority")
        if dw >= self.config.quorum and dw > dr:
            return Blame(e.witness, base, e, "majority")
        return None

    def challenged(self, node_id: str, passed: bool, now_ns: int, evidence: Evidence | None = None) -> Blame | None:
        """Apply a challenge's outcome (``_challenge``): a failure is a contradiction this node saw itself (it
        asked for the traffic and the suspect left it out); a pass halves the distance to 1, since the node
        just reported what it was tested on. Returns the penalty of a failure."""
        self._recover(now_ns)
        n = self._node(node_id)
        if passed:
            n.score = 1.0 - (1.0 - n.score) * 0.5
            if n.flagged and n.score >= self.config.recover_above:
                n.flagged = False
            return None
        weight = self.config.weights.get("contradiction", 0.0)
        n.score *= 1.0 - weight
        n.evidence += 1
        n.last_evidence_ns = now_ns
        if n.score < self.config.threshold:
            n.flagged = True
        return None if evidence is None else Blame(node_id, weight, evidence, "challenge")

    def _prune(self) -> None:
        horizon = self._now - int(self.config.dispute_window_s * 1e9)
        for node_id in list(self._disputes):
            peers = {p: t for p, t in self._disputes[node_id].items() if t >= horizon}
            if peers:
                self._disputes[node_id] = peers
            else:
                del self._disputes[node_id]

    def advance(self, now_ns: int) -> None:
        """Recover scores to ``now_ns`` without evidence (a period in which nothing was found)."""
        self._recover(now_ns)

    def score(self, node_id: str) -> float:
        """The node's score (1.0 for a node never accused)."""
        n = self._nodes.get(node_id)
        return 1.0 if n is None else n.score

    def is_flagged(self, node_id: str) -> bool:
        """True while the node is flagged."""
        n = self._nodes.get(node_id)
        return n is not None and n.flagged

    def flagged(self) -> frozenset[str]:
        """Every flagged node."""
        return frozenset(k for k, n in self._nodes.items() if n.flagged)

    def excluded(self, node_ids: Iterable[str]) -> set[str]:
        """The nodes among ``node_ids`` whose digests aggregates must leave out now (the flagged ones)."""
        return {n for n in node_ids if self.is_flagged(n)}

    def snapshot(self) -> list[NodeTrust]:
        """Every node with a score below 1 or evidence, sorted by score then id."""
        out = [NodeTrust(k, n.score, n.flagged, n.evidence, n.last_evidence_ns) for k, n in self._nodes.items()]
        return sorted(out, key=lambda t: (t.score, t.node_id))

    def forget(self, node_ids: Iterable[str]) -> None:
        """Drop the state of nodes gone for good."""
        for n in node_ids:
            self._nodes.pop(n, None)
            self._disputes.pop(n, None)
