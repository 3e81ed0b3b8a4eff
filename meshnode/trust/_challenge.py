"""Challenge (seed 003): a third node sends test traffic to a suspect; the suspect's next digests must report it.

Cross-validation needs traffic that both ends report; a challenge makes some on demand. The challenger asks a
prober (a trusted third member) to run ``Mesh.Measure`` against the suspect: ``count`` TCP connects, each
closed at once. Every connect that succeeded is an inbound TCP flow at the suspect, from one of the prober's
addresses to the target port, and an honest suspect publishes it in its endpoint records (the prober is a
member). The challenger then watches the suspect's digests:

* **passed** as soon as they report at least ``connected - tolerance`` such flows started during the test;
* **failed** when a digest of a period starting ``settle`` after the test is held, every one of the
  suspect's periods since the test started is held (no gap: gossip keeps only each node's newest digest, so
  one can be skipped), none of them cut endpoint records to fit its size bound, and still too few are
  reported;
* **inconclusive** otherwise: no connect succeeded, a digest was skipped or truncated, or the deadline came.

This module is pure: ``ChallengeWatch`` takes the suspect's digests and says where the test stands;
``MeshTrust.challenge`` (``_wiring``) does the I/O and moves the score (``TrustState.challenged``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal

from meshnode.trust._validate import Evidence

if TYPE_CHECKING:
    from meshnode.v1 import mesh_pb2

Verdict = Literal["passed", "failed", "inconclusive", "pending"]

DEFAULT_COUNT: Final = 10
"""Connects per challenge when the request does not say."""
_INBOUND: Final = 2
_TCP: Final = 6


def tolerance(connected: int) -> int:
    """Connections the suspect may leave out and still pass: a fifth (a handshake's last ACK lost, so that
    the prober counts a connect the suspect never established)."""
    return connected // 5


def _identity(addr: str) -> str:
    return addr


@dataclass(slots=True)
class ChallengeWatch:
    """What the suspect's digests say about one challenge's connections.

    Args:
        suspect: the challenged node id.
        prober_addresses: the prober's addresses (as it publishes them; normalized here).
        port: the suspect's port the prober connected to.
        started_ns: when the prober was asked (wall clock).
        skew_ns: the clock difference allowed between nodes.
        normalize: the fleet's address normalization (``PrivacyPolicy.endpoint_address``).
    """

    suspect: str
    prober_addresses: frozenset[str]
    port: int
    started_ns: int
    skew_ns: int
    normalize: Callable[[str], str] = _identity
    finished_ns: int = 0
    """When the prober's last connect ended; 0 while it runs."""
    flows: set[tuple[str, int]] = field(default_factory=set)
    periods: dict[int, int] = field(default_factory=dict)
    truncated: bool = False
    digests: int = 0

    def __post_init__(self) -> None:
        self.prober_addresses = frozenset(self.normalize(a) for a in self.prober_addresses)

    def add(self, digest: mesh_pb2.Digest) -> None:
        """One verified digest of any node (others' are ignored; a period seen twice counts once)."""
        if digest.node_id != self.suspect or digest.period_start_ns in self.periods:
            return
        if digest.period_end_ns < self.started_ns - self.skew_ns:
            return
        self.periods[digest.period_start_ns] = digest.period_end_ns
        self.digests += 1
        self.truncated = self.truncated or digest.endpoints_truncated > 0
        hi = (self.finished_ns or digest.period_end_ns) + self.skew_ns
        for e in digest.endpoints:
            if (int(e.proto) == _TCP and int(e.direction) == _INBOUND and e.sport == self.port
                    and self.started_ns - self.skew_ns <= e.start_ns <= hi
                    and self.normalize(e.dst) in self.prober_addresses):
                self.flows.add((e.dst, e.dport))

    def add_all(self, digests: Iterable[mesh_pb2.Digest]) -> None:
        """``add`` each."""
        for d in digests:
            self.add(d)

    @property
    def reported(self) -> int:
        """Distinct inbound flows from the prober to the port, started during the test, reported so far."""
        return len(self.flows)

    def covered_until(self) -> int:
        """The end of the suspect's periods held without a gap from the one holding the test's start (0: none)."""
        lo = self.started_ns
        reach = 0
        for start in sorted(self.periods):
            end = self.periods[start]
            if not reach:
                if start > lo:
                    return 0  # the period in which the test started was never seen
                reach = end
            elif start > reach:
                break
            else:
                reach = max(reach, end)
        return reach

    def settled(self, settle_ns: int) -> bool:
        """A digest of a period starting ``settle_ns`` after the test ended is held (the flows are in by then)."""
        return bool(self.finished_ns) and any(s >= self.finished_ns + settle_ns for s in self.periods)

    def verdict(self, connected: int, settle_ns: int) -> tuple[Verdict, str]:
        """Where the challenge stands, and why in words."""
        need = connected - tolerance(connected)
        if self.finished_ns and connected == 0:
            return "inconclusive", "the prober could not connect to the suspect"
        if self.finished_ns and self.reported >= need:
            return "passed", f"the suspect reported {self.reported} of {connected} connections"
        if not self.settled(settle_ns):
            return "pending", f"{self.reported} of {connected} reported so far"
        if self.covered_until() < self.finished_ns + settle_ns:
            return "inconclusive", (f"a digest of the suspect was missed since the test started; "
                                    f"{self.reported} of {connected} reported in those held")
        if self.truncated:
            return "inconclusive", (f"the suspect cut endpoint records to fit its digests; "
                                    f"{self.reported} of {connected} reported")
        return "failed", (f"the suspect's digests report {self.reported} of the {connected} connections the "
                          f"prober made (at least {need} expected)")

    def evidence(self, prober: str, target_host: str, connected: int, at_ns: int) -> Evidence:
        """The evidence of a failed challenge: the suspect's claim (its count) against the prober's."""
        src = sorted(self.prober_addresses)[0] if self.prober_addresses else ""
        return Evidence(self.suspect, prober, "tcp", target_host, self.port, src, 0, "challenge", self.reported,
                        connected, "challenge_connections_unreported", "contradiction", at_ns)


class ChallengeRefused(Exception):
    """A challenge this node will not run; ``code`` is the gRPC status name the servicer answers with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
