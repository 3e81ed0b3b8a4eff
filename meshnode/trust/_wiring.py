"""Trust in the running node: endpoint records into every digest, every digest into a ``TrustMonitor``.

``MeshTrust`` plugs into the seams of ``meshnode.mesh.MeshService``:

* a digest decorator (``decorate``) puts the period's records whose remote address belongs to another member
  into ``Digest.endpoints`` (``endpoint_records``, kind final or interim, so the validator applies the
  right tolerance), then applies the privacy policy to everything in the digest that names an address
  (rollup keys, endpoint records, the published addresses, active-task targets) before it is signed;
* a digest listener (``on_digest``) hands every verified digest, the node's own included, to the monitor;
* a record listener (``on_period``, after the mesh's) refreshes the member map (address -> node id, from the
  held digests' ``addresses`` and the members' mesh addresses) and closes the monitor's period;
* ``excluded`` is the mesh's ``exclude`` hook: flagged members' digests stay out of fleet aggregates.

Members are matched on addresses as the policy publishes them (``PrivacyPolicy.endpoint_address``), so a
fleet that hashes its addresses with one secret still finds both ends of its flows.

``Lie`` is a test-only fault (``MESHNODE_TEST_LIE``, refused unless ``MESHNODE_ALLOW_FAKE_SENSOR=1``): it
makes this node misreport its endpoint records about one peer, so that lab tests can watch a liar be caught.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

from meshnode._exceptions import ConfigError
from meshnode.mesh import endpoint_records
from meshnode.trust._monitor import TrustMonitor
from meshnode.trust._validate import ValidationConfig
from meshnode.v1 import trust_pb2

if TYPE_CHECKING:
    import grpc

    from meshnode._model import FlowRecord
    from meshnode.mesh import FlowLike, MeshService, PeriodLike
    from meshnode.trust._privacy import PrivacyPolicy
    from meshnode.v1 import flow_pb2, mesh_pb2

log = logging.getLogger(__name__)

TRUST_SERVICE: Final = trust_pb2.DESCRIPTOR.services_by_name["Trust"].full_name
"""``"meshnode.v1.Trust"``, for health checking and reflection (``ApiServer.add_servicer``)."""

LIE_ENV: Final = "MESHNODE_TEST_LIE"
"""Test-only: ``double_tx:ADDR[:PORT]`` or ``hide:ADDR[:PORT]`` (needs ``MESHNODE_ALLOW_FAKE_SENSOR=1``)."""
_ALLOW_ENV: Final = "MESHNODE_ALLOW_FAKE_SENSOR"


@dataclass(frozen=True, slots=True)
class Lie:
    """A test-only misreport of this node's endpoint records about one peer address.

    Attributes:
        kind: ``double_tx`` reports twice the bytes sent on every flow to ``peer``; ``hide`` leaves out
            the flows to ``peer``.
        peer: the peer's address, as the sensor records it.
        port: only flows to this remote port; 0 means all.
    """

    kind: Literal["double_tx", "hide"]
    peer: str
    port: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Lie | None:
        """The lie in ``MESHNODE_TEST_LIE``, or None.

        Raises:
            ConfigError: the variable is set without ``MESHNODE_ALLOW_FAKE_SENSOR=1``, or is malformed.
        """
        env = os.environ if environ is None else environ
        spec = env.get(LIE_ENV, "").strip()
        if not spec:
            return None
        if env.get(_ALLOW_ENV) != "1":
            raise ConfigError(f"{LIE_ENV} is a test-only fault (this node would misreport its flows); "
                              f"it is refused unless {_ALLOW_ENV}=1")
        kind, _, rest = spec.partition(":")
        if kind in ("double_tx", "hide") and rest:
            host, sep, port = rest.rpartition(":")
            if sep and port.isdigit() and "." in host:  # IPv4 with a port; a bare IPv6 has no dot
                return cls(kind, host, int(port))  # type: ignore[arg-type]
            return cls(kind, rest)  # type: ignore[arg-type]
        raise ConfigError(f"{LIE_ENV}={spec!r}: expected double_tx:ADDR[:PORT] or hide:ADDR[:PORT]")


def apply_lie(lie: Lie, digest: mesh_pb2.Digest) -> int:
    """Misreport ``digest``'s endpoint records (raw addresses) as ``lie`` says; returns records changed."""
    def hit(e: flow_pb2.Flow) -> bool:
        return e.dst == lie.peer and (not lie.port or e.dport == lie.port)

    if lie.kind == "double_tx":
        changed = 0
        for e in digest.endpoints:
            if hit(e):
                e.bytes_tx *= 2
                changed += 1
        return changed
    keep = [e for e in digest.endpoints if not hit(e)]
    changed = len(digest.endpoints) - len(keep)
    if changed:
        del digest.endpoints[:]
        digest.endpoints.extend(keep)
    return changed


def _identity(addr: str) -> str:
    return addr


def _host(addr: str) -> str:
    return addr.rpartition(":")[0].strip("[]")


class MeshTrust:
    """Cross-validation wired into one node's mesh.

    Args:
        mesh: the node's mesh service (its seams are used; call ``attach`` before it starts).
        export_period: seconds per export period (the validator's timing).
        policy: the privacy policy applied to each digest before it is signed; None publishes as measured.
        lie: a test-only misreport (``Lie.from_env``).
        clock: wall-clock nanoseconds.
    """

    def __init__(
        self,
        mesh: MeshService,
        *,
        export_period: float,
        policy: PrivacyPolicy | None = None,
        lie: Lie | None = None,
        clock: Callable[[], int] = time.time_ns,
    ) -> None:
        self.mesh = mesh
        self.policy = policy
        self.lie = lie
        self._clock = clock
        self._normalize: Callable[[str], str] = policy.endpoint_address if policy is not None else _identity
        self.monitor = TrustMonitor(mesh.node_id, validation=ValidationConfig(period_s=export_period),
                                    normalize=self._normalize, now_ns=clock())
        self.periods = 0

    def attach(self) -> None:
        """Register on the mesh's seams: decorator, digest listener, fleet-query exclusions."""
        self.mesh.digest_decorators.append(self.decorate)
        self.mesh.digest_listeners.append(self.on_digest)
        self.mesh.exclude = self.excluded

    def register(self, server: grpc.aio.Server) -> None:
        """Serve ``meshnode.v1.Trust`` on ``server`` (before it starts)."""
        from meshnode.trust._service import add_trust_servicer

        add_trust_servicer(self.monitor, server)

    # ------------------------------------------------------------------ members

    def owners(self) -> dict[str, str]:
        """Raw address -> node id of every known member, this node included.

        From the held digests' ``addresses`` (what each node says are its own) and the members' mesh
        addresses; this node's addresses come from ``mesh.addresses``.
        """
        out: dict[str, str] = {}
        if self.mesh.running:
            for held in self.mesh.exchange.held().values():
                for a in held.digest.addresses:
                    out[a] = held.digest.node_id
            for m in self.mesh.membership.members():
                out.setdefault(_host(m.addr), m.node_id)
        if self.mesh.addresses is not None:
            for a in self.mesh.addresses():
                out[a] = self.mesh.node_id
        return out

    # ------------------------------------------------------------------ seams

    def decorate(self, digest: mesh_pb2.Digest, period: PeriodLike, records: Sequence[FlowRecord]) -> None:
        """Endpoint records of flows with other members, then the privacy policy (a digest decorator)."""
        owners = {self._normalize(a): n for a, n in self.owners().items()}
        others = {r.dst for r in records
                  if owners.get(self._normalize(r.dst), self.mesh.node_id) != self.mesh.node_id}
        # FlowRecord is frozen; FlowLike declares plain attributes, which a frozen dataclass does not match
        digest.endpoints.extend(endpoint_records(cast("Sequence[FlowLike]", records), others))
        if self.lie is not None:
            n = apply_lie(self.lie, digest)
            log.warning("TEST FAULT %s: %s:%s misreported in %d endpoint record(s)", LIE_ENV, self.lie.kind,
                        self.lie.peer, n)
        if self.policy is not None:
            filter_published(self.policy, digest)

    def on_digest(self, digest: mesh_pb2.Digest, signed: mesh_pb2.SignedDigest, own: bool) -> None:
        """Every verified peer digest and each own one, into the monitor (a digest listener)."""
        self.monitor.on_digest(digest, "self" if own else "gossip")

    def on_period(self, period: PeriodLike, records: Sequence[FlowRecord] = ()) -> None:
        """After the mesh published the period's digest: refresh members, judge, update scores."""
        if not self.mesh.running:
            return
        self.monitor.set_members(self.owners())
        report = self.monitor.close_period(self._clock())
        self.periods += 1
        if report.evidence:
            log.info("trust: %d evidence in %d claims checked", len(report.evidence), report.checked)

    def excluded(self, node_ids: Iterable[str]) -> set[str]:
        """The flagged nodes among ``node_ids`` (the mesh leaves their digests out of aggregates)."""
        return self.monitor.excluded(node_ids)


def filter_published(policy: PrivacyPolicy, digest: mesh_pb2.Digest) -> None:
    """Apply ``policy`` in place to every address ``digest`` carries before it is signed.

    Rollup keys are coarsened or hashed (``PrivacyPolicy.filter_digest``); endpoint records and the node's
    own addresses are hashed or kept, never coarsened (peers must still tell members apart); active-task
    targets are filtered like rollup keys.
    """
    filtered = policy.filter_digest(digest)
    addrs = sorted({policy.endpoint_address(a) for a in filtered.addresses})
    del filtered.addresses[:]
    filtered.addresses.extend(addrs)
    for m in filtered.measurements:
        m.target = policy.destination_key(m.target)
    digest.CopyFrom(filtered)
