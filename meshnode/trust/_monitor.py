"""The node's trust loop: verified digests in; evidence, scores and exclusions out, once per export period.

``TrustMonitor`` ties the cross-validator (``_validate``) to the scores (``_score``) and keeps the recent
evidence for the ``Trust.Validate`` answer. It does no I/O and reads no clock: the mesh hands it every
verified digest (its own included) and calls ``close_period`` with the wall clock once per period.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import TYPE_CHECKING

from meshnode.trust._score import Blame, ScoreConfig, TrustState
from meshnode.trust._validate import (
    CrossValidator,
    Evidence,
    ValidationConfig,
    ValidationReport,
    address_claims,
    claims_from_digest,
)
from meshnode.v1 import trust_pb2

if TYPE_CHECKING:
    from meshnode.v1 import mesh_pb2

log = logging.getLogger(__name__)

_SEVERITY = {"contradiction": trust_pb2.CONTRADICTION, "mismatch": trust_pb2.MISMATCH, "minor": trust_pb2.MINOR}


def evidence_to_proto(e: Evidence, blamed: str = "") -> trust_pb2.Evidence:
    """``meshnode.v1.Evidence`` of one piece of evidence (values as text: they are bytes or outcomes)."""
    return trust_pb2.Evidence(
        reporter=e.reporter, witness=e.witness, proto=e.proto, src=e.src, sport=e.sport, dst=e.dst, dport=e.dport,
        field=e.field, claimed=str(e.claimed), witnessed=str(e.witnessed), reason=e.reason,
        severity=_SEVERITY.get(e.severity, trust_pb2.SEVERITY_UNKNOWN), at_ns=e.at_ns, blamed=blamed,
    )


def _identity(addr: str) -> str:
    return addr


class TrustMonitor:
    """Cross-validation and trust scores of one node.

    Args:
        self_id: this node's id.
        validation: tolerances and timing (``period_s`` must be the export period).
        score: score parameters.
        normalize: address normalization (``PrivacyPolicy.endpoint_address`` when the fleet hashes).
        now_ns: the wall clock at start.
        max_evidence: evidence kept for ``Validate``.
    """

    def __init__(
        self,
        self_id: str,
        *,
        validation: ValidationConfig | None = None,
        score: ScoreConfig | None = None,
        normalize: Callable[[str], str] = _identity,
        now_ns: int = 0,
        max_evidence: int = 1000,
    ) -> None:
        self.self_id = self_id
        self.validator = CrossValidator(validation, normalize=normalize)
        self._normalize = normalize
        self._on_its_face: list[Evidence] = []
        self.trust = TrustState(self_id, score, now_ns)
        self._recent: deque[Blame | tuple[Evidence, str]] = deque(maxlen=max_evidence)
        self.counters: Counter[str] = Counter()
        self._last_pass: dict[str, int] = {}

    def set_members(self, owners: Mapping[str, str]) -> None:
        """The members' addresses: address -> node id (on every membership change)."""
        self.validator.set_owners(owners)

    def on_digest(self, digest: mesh_pb2.Digest, source: str = "") -> None:
        """Take one verified digest (a peer's, from ``DigestExchange.on_accept``, or this node's own)."""
        pc, dropped = claims_from_digest(digest, source)
        self.counters["endpoint_records_dropped"] += dropped
        if self.validator.add(pc):
            self.counters["digests_validated"] += 1

    def check_addresses(self, digest: mesh_pb2.Digest, mesh_hosts: Mapping[str, Collection[str]]) -> None:
        """Check a peer digest's own addresses against the members' mesh hosts (``address_claims``); what is found
        counts at the next ``close_period``."""
        found = address_claims(digest, mesh_hosts, self._normalize)
        self._on_its_face.extend(found[:16])
        self.counters["address_claims"] += len(found)

    def close_period(self, now_ns: int) -> ValidationReport:
        """Judge what is ripe, update scores; call once per export period after the digests came in."""
        report = self.validator.evaluate(now_ns)
        report.evidence.extend(self._on_its_face[:256])
        self._on_its_face.clear()
        blames = self.trust.update(now_ns, report.evidence)
        blamed = {id(b.evidence) for b in blames}
        for b in blames:
            self._recent.append(b)
        for e in report.evidence:
            if id(e) not in blamed:
                self._recent.append((e, ""))
        for b in blames:
            log.warning("trust: %s blamed (%s, weight %.2f): %s %s %s:%d -> %s:%d %s claimed %s, witnessed %s",
                        b.node_id, b.attribution, b.weight, b.evidence.reason, b.evidence.proto, b.evidence.src,
                        b.evidence.sport, b.evidence.dst, b.evidence.dport, b.evidence.field, b.evidence.claimed,
                        b.evidence.witnessed)
        return report

    def challenged(self, node_id: str, passed: bool, now_ns: int, evidence: Evidence | None = None) -> None:
        """Record a challenge's outcome: the score moves (``TrustState.challenged``), a failure's evidence is kept
        for ``Validate``."""
        if passed:
            # at most one pass an export period counts: a flagged node asking for challenges of itself (or
            # having them asked) must not talk its score back up faster than its digests are judged
            last = self._last_pass.get(node_id)
            if last is not None and now_ns - last < int(self.validator.config.period_s * 1e9):
                self.counters["challenges_passed_not_scored"] += 1
                return
            self._last_pass[node_id] = now_ns
        blame = self.trust.challenged(node_id, passed, now_ns, evidence)
        self.counters["challenges_passed" if passed else "challenges_failed"] += 1
        if blame is not None:
            self._recent.append(blame)
            log.warning("trust: %s failed a challenge (%s claimed %s, prober saw %s)", node_id, blame.evidence.field,
                        blame.evidence.claimed, blame.evidence.witnessed)

    def excluded(self, node_ids: Iterable[str]) -> set[str]:
        """The flagged nodes among ``node_ids`` (leave their digests out of aggregates)."""
        return self.trust.excluded(node_ids)

    def forget(self, node_ids: Iterable[str]) -> None:
        """Drop everything about members gone for good, except a flagged node's score: one that leaves and
        comes back with the same key comes back flagged."""
        ids = [n for n in node_ids if not self.trust.is_flagged(n)]
        self.validator.forget(ids)
        self.trust.forget(ids)
        for n in ids:
            self._last_pass.pop(n, None)

    def validate_response(self, peer: str = "", max_evidence: int = 0) -> trust_pb2.ValidateResponse:
        """The ``Trust.Validate`` answer: scores (lowest first), newest evidence first, counters."""
        limit = max_evidence or 100
        resp = trust_pb2.ValidateResponse(threshold=self.trust.config.threshold)
        for t in self.trust.snapshot():
            if peer and t.node_id != peer:
                continue
            resp.scores.add(node_id=t.node_id, score=t.score, flagged=t.flagged, evidence=t.evidence,
                            last_evidence_ns=t.last_evidence_ns)
        for item in reversed(self._recent):
            e, blamed = (item.evidence, item.node_id) if isinstance(item, Blame) else item
            if peer and peer not in (e.reporter, e.witness):
                continue
            resp.evidence.append(evidence_to_proto(e, blamed))
            if len(resp.evidence) >= limit:
                break
        for k, v in (self.validator.counters + self.counters).items():
            resp.counters[k] = v
        return resp
