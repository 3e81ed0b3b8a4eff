"""Trust in the running node: endpoint records into every digest, every digest into a ``TrustMonitor``.

``MeshTrust`` plugs into the seams of ``meshnode.mesh.MeshService``:

* a digest decorator (``decorate``) puts the period's records whose remote address belongs to another member,
  or to a mesh contact (below), into ``Digest.endpoints`` (``endpoint_records``, kind final or interim, so the
  validator applies the right tolerance), then applies the privacy policy to everything in the digest that
  names an address (rollup keys, endpoint records, the published addresses, active-task targets) before it is
  signed;
* a digest listener (``on_digest``) hands every verified digest, the node's own included, to the monitor;
* a record listener (``on_period``, after the mesh's) refreshes the member map (address -> node id, from the
  held digests' ``addresses`` and the members' mesh addresses) and closes the monitor's period;
* ``excluded`` is the mesh's ``exclude`` hook: flagged members' digests stay out of fleet aggregates;
* ``certificate`` is the score's quorum count: under mTLS disputing peers count by certificate.

Members are matched on addresses as the policy publishes them (``PrivacyPolicy.endpoint_address``), so a
fleet that hashes its addresses with one secret still finds both ends of its flows.

Membership views differ for a while: a node that joined late (its seeds were down) is known to the seed, and it
knows the members the seed told it of, before every member has heard of it, and its mesh connections to them are
open meanwhile. The end that knows the other publishes its record and the other end, by members alone, would not:
the validator would call the record missing (the whole span is covered by the ignorant end's digests) and blame an
honest node. So a host that had a flow on a mesh port with this node (its own mesh port inbound, a member's or a
seed's outbound) in the last ``CONTACT_PERIODS`` periods is a *mesh contact*, and its flows are published as a
member's are, whether or not membership knows it yet. The validator grants no exemption for it: an end that leaves
a member's flow out is still missing it, so a liar gains nothing by claiming not to have known the reporter.

``Lie`` is a test-only fault (``MESHNODE_TEST_LIE``, refused unless ``MESHNODE_ALLOW_FAKE_SENSOR=1``): it
makes this node misreport its endpoint records about one peer, so that lab tests can watch a liar be caught.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, cast

import grpc
import numpy as np

from meshnode._batch import as_batch, factorize
from meshnode._exceptions import ConfigError
from meshnode._model import ENUM_NUMBERS
from meshnode.mesh import MEMBER_CALLER, audience_metadata, endpoint_records
from meshnode.trust._challenge import DEFAULT_COUNT, ChallengeRefused, ChallengeWatch, tolerance
from meshnode.trust._monitor import TrustMonitor
from meshnode.trust._validate import ValidationConfig
from meshnode.v1 import flow_pb2, trust_pb2
from meshnode.v1 import mesh_pb2 as _mesh_pb2

if TYPE_CHECKING:
    from meshnode._batch import FlowBatch
    from meshnode._model import FlowRecord
    from meshnode.mesh import FlowLike, Member, MeshService, PeriodLike
    from meshnode.trust._privacy import PrivacyPolicy
    from meshnode.v1 import mesh_pb2

log = logging.getLogger(__name__)

TRUST_SERVICE: Final = trust_pb2.DESCRIPTOR.services_by_name["Trust"].full_name
"""``"meshnode.v1.Trust"``, for health checking and reflection (``ApiServer.add_servicer``)."""

LIE_ENV: Final = "MESHNODE_TEST_LIE"
"""Test-only: ``KIND:ADDR[:PORT]`` with KIND one of ``double_tx``, ``halve_tx``, ``hide``, ``invent``, ``claim``,
several separated by commas (needs ``MESHNODE_ALLOW_FAKE_SENSOR=1``)."""
_LIE_KINDS: Final = ("double_tx", "halve_tx", "hide", "invent", "claim")
_ALLOW_ENV: Final = "MESHNODE_ALLOW_FAKE_SENSOR"

CONTACT_PERIODS: Final = 10
"""Periods a mesh contact's flows are still published after its last flow on a mesh port (an open mesh connection
is in every period's records as an interim, so a peer that keeps talking stays a contact)."""
MAX_CONTACTS: Final = 4096
"""Mesh contacts held at most (the least recently seen are dropped first, counted ``mesh_contacts_dropped``)."""
_INBOUND: Final = ENUM_NUMBERS["direction"]["inbound"]
_OUTBOUND: Final = ENUM_NUMBERS["direction"]["outbound"]


@dataclass(frozen=True, slots=True)
class Lie:
    """A test-only misreport of this node's endpoint records about one peer address.

    Attributes:
        kind: ``double_tx`` reports twice the bytes sent on every flow to ``peer`` (inflating), ``halve_tx``
            half of them (deflating); ``hide`` leaves out the flows to ``peer`` (omitting); ``invent`` adds, to
            each digest, a TCP flow to ``peer`` (port ``port``, or 443) that never happened; ``claim`` publishes
            ``peer`` among this node's own addresses (another member's address).
        peer: the peer's address, as the sensor records it.
        port: only flows of this service port (the remote port of an outbound flow, the local port of an
            inbound one); 0 means all.
        also: further lies told at the same time (``MESHNODE_TEST_LIE`` with commas).
    """

    kind: Literal["double_tx", "halve_tx", "hide", "invent", "claim"]
    peer: str
    port: int = 0
    also: tuple[Lie, ...] = ()

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
        first, *more = [cls._parse(part.strip()) for part in spec.split(",") if part.strip()]
        return dataclasses.replace(first, also=tuple(more)) if more else first

    @classmethod
    def _parse(cls, spec: str) -> Lie:
        kind, _, rest = spec.partition(":")
        if kind in _LIE_KINDS and rest:
            host, sep, port = rest.rpartition(":")
            if sep and port.isdigit() and "." in host:  # IPv4 with a port; a bare IPv6 has no dot
                return cls(kind, host, int(port))  # type: ignore[arg-type]
            return cls(kind, rest)  # type: ignore[arg-type]
        raise ConfigError(f"{LIE_ENV}={spec!r}: expected KIND:ADDR[:PORT], KIND one of {', '.join(_LIE_KINDS)}")


def apply_lie(lie: Lie, digest: mesh_pb2.Digest) -> int:
    """Misreport ``digest``'s endpoint records (raw addresses) as ``lie`` (and ``lie.also``) says; returns
    records changed."""
    return _apply_one(lie, digest) + sum(_apply_one(more, digest) for more in lie.also)


def _apply_one(lie: Lie, digest: mesh_pb2.Digest) -> int:
    def hit(e: flow_pb2.Flow) -> bool:
        service = e.sport if e.direction == flow_pb2.INBOUND else e.dport
        return e.dst == lie.peer and (not lie.port or service == lie.port)

    if lie.kind in ("double_tx", "halve_tx"):
        changed = 0
        for e in digest.endpoints:
            if hit(e):
                e.bytes_tx = e.bytes_tx * 2 if lie.kind == "double_tx" else e.bytes_tx // 2
                changed += 1
        return changed
    if lie.kind == "claim":
        digest.addresses.append(lie.peer)
        return 1
    if lie.kind == "invent":
        own = sorted(a for a in digest.addresses if (":" in a) == (":" in lie.peer))
        if not own:
            return 0
        span = max(2, (digest.period_end_ns - digest.period_start_ns) // 4)
        digest.endpoints.add(
            src=own[0], sport=40_000 + digest.period_end_ns // 10**9 % 20_000, dst=lie.peer,
            dport=lie.port or 443, proto=flow_pb2.TCP, direction=flow_pb2.OUTBOUND, bytes_tx=4096, bytes_rx=512,
            packets_tx=6, packets_rx=5, outcome=flow_pb2.ESTABLISHED, start_ns=digest.period_start_ns + span,
            end_ns=digest.period_end_ns - span, kind=flow_pb2.FINAL)
        return 1
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


def _port(addr: str) -> int:
    port = addr.rpartition(":")[2]
    return int(port) if port.isdigit() else 0


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
        # a claim whose witness's digests have a gap waits one period for the missing one to be fetched
        self.monitor = TrustMonitor(mesh.node_id, validation=ValidationConfig(period_s=export_period,
                                                                              gap_fetch_periods=1),
                                    normalize=self._normalize, now_ns=clock())
        self.periods = 0
        self._watches: list[ChallengeWatch] = []
        self._export_period = export_period
        self._contacts: dict[str, int] = {}
        """Raw host -> end (ns) of the last period in which it had a flow on a mesh port with this node."""

    def attach(self) -> None:
        """Register on the mesh's seams: decorator, digest listener, fleet-query exclusions."""
        self.mesh.digest_decorators.append(self.decorate)
        self.mesh.digest_listeners.append(self.on_digest)
        self.mesh.exclude = self.excluded
        self.mesh.forget_listeners.append(self.monitor.forget)  # flagged nodes stay flagged
        self.monitor.trust.certificate = self.certificate

    def certificate(self, node_id: str) -> str | None:
        """What a disputing peer counts as in a quorum: under mTLS the certificate it called this node with
        (None: no certificate vouches for it, it counts for nothing); in plaintext its node id."""
        if self.mesh.node_certificates_only:
            return self.mesh.identity.certificate(node_id)
        return node_id

    def register(self, server: grpc.aio.Server) -> None:
        """Serve ``meshnode.v1.Trust`` on ``server`` (before it starts)."""
        from meshnode.trust._service import add_trust_servicer

        add_trust_servicer(self.monitor, server, challenge=self.challenge)

    # ------------------------------------------------------------------ members

    def owners(self) -> dict[str, str]:
        """Raw address -> node id of every known member, this node included.

        The members' mesh addresses first (where each one answers the mesh: a digest cannot take one from its
        member), then what each held digest says are its publisher's other addresses; this node's addresses
        come from ``mesh.addresses``.
        """
        out = {h: min(ids) for h, ids in self.mesh_hosts().items()}
        taken = {self._normalize(h) for h in out}
        if self.mesh.running:
            for held in self.mesh.exchange.held().values():
                for a in held.digest.addresses:
                    if self._normalize(a) not in taken:
                        out.setdefault(a, held.digest.node_id)
        if self.mesh.addresses is not None:
            for a in self.mesh.addresses():
                out[a] = self.mesh.node_id
        return out

    def mesh_contacts(self, flows: FlowBatch, period_end_ns: int) -> set[str]:
        """The raw hosts that had a flow on a mesh port with this node in the last ``CONTACT_PERIODS`` periods,
        this period's ``flows`` included (see the module docstring).

        A mesh port is this node's own (inbound flows) or a member's or a seed's (outbound flows): members talk
        to each other there, and a peer that does so is one, or is joining, whether or not membership has told
        this node yet.
        """
        own = _port(self.mesh.advertise)
        ports = {_port(s) for s in self.mesh.seeds} | {own}
        if self.mesh.running:
            ports |= {_port(m.addr) for m in self.mesh.membership.members()}
        ports.discard(0)
        if flows and ports:
            direction = flows["direction"]
            on_mesh = (((direction == _INBOUND) & (flows["sport"] == own))
                       | ((direction == _OUTBOUND) & np.isin(flows["dport"], sorted(ports))))
            for host in set(flows["dst"][on_mesh].tolist()):
                self._contacts.pop(host, None)  # re-inserted last: the dict stays in order of last contact
                self._contacts[host] = period_end_ns
        horizon = period_end_ns - CONTACT_PERIODS * int(self._export_period * 1e9)
        for h in [h for h, seen in self._contacts.items() if seen < horizon]:
            del self._contacts[h]
        over = len(self._contacts) - MAX_CONTACTS
        if over > 0:
            for h in list(self._contacts)[:over]:
                del self._contacts[h]
            self.monitor.counters["mesh_contacts_dropped"] += over
        return set(self._contacts)

    def mesh_hosts(self) -> dict[str, set[str]]:
        """The host of each member's mesh address -> the node ids of the members there."""
        out: dict[str, set[str]] = {}
        if self.mesh.running:
            for m in self.mesh.membership.members():
                out.setdefault(_host(m.addr), set()).add(m.node_id)
        return out

    # ------------------------------------------------------------------ seams

    def decorate(self, digest: mesh_pb2.Digest, period: PeriodLike, records: Sequence[FlowRecord]) -> None:
        """Endpoint records of flows with other members and with mesh contacts, then the privacy policy (a digest
        decorator)."""
        owners = {self._normalize(a): n for a, n in self.owners().items()}
        flows = as_batch(records)
        contacts = self.mesh_contacts(flows, digest.period_end_ns)
        codes, dsts = factorize(flows["dst"]) if flows else (np.zeros(0, dtype=np.intp), [])
        me = self.mesh.node_id
        member = [i for i, d in enumerate(dsts)
                  if owners.get(self._normalize(d), me if d not in contacts else "") != me]
        unknown = [i for i in member if self._normalize(dsts[i]) not in owners]
        if unknown:  # a contact membership has not told this node of (yet)
            self.monitor.counters["endpoint_records_for_contacts"] += int(np.isin(codes, unknown).sum())
        if member:  # only the flows with other members become records (the rest is most of a busy period)
            others = {dsts[i] for i in member}
            with_members = flows.take(np.isin(codes, member))
            # FlowRecord is frozen; FlowLike declares plain attributes, which a frozen dataclass does not match
            digest.endpoints.extend(endpoint_records(cast("Sequence[FlowLike]", with_members), others))
        if self.lie is not None:
            n = apply_lie(self.lie, digest)
            log.warning("TEST FAULT %s: %s:%s misreported in %d endpoint record(s)", LIE_ENV, self.lie.kind,
                        self.lie.peer, n)
        if self.policy is not None:
            filter_published(self.policy, digest)

    def on_digest(self, digest: mesh_pb2.Digest, signed: mesh_pb2.SignedDigest, own: bool) -> None:
        """Every verified peer digest and each own one, into the monitor (a digest listener)."""
        self.monitor.on_digest(digest, "self" if own else "gossip")
        if not own and self.mesh.running:
            self.monitor.check_addresses(digest, self.mesh_hosts())
        for w in self._watches:
            w.add(digest)

    def on_period(self, period: PeriodLike, records: Sequence[FlowRecord] = ()) -> None:
        """After the mesh published the period's digest: refresh members, judge, update scores."""
        if not self.mesh.running:
            return
        self.monitor.set_members(self.owners())
        report = self.monitor.close_period(self._clock())
        for witness, after_ns in self.monitor.validator.take_wanted().items():
            self.mesh.exchange.request_gap(witness, after_ns)
        self.periods += 1
        if report.evidence:
            log.info("trust: %d evidence in %d claims checked", len(report.evidence), report.checked)

    def excluded(self, node_ids: Iterable[str]) -> set[str]:
        """The flagged nodes among ``node_ids`` (the mesh leaves their digests out of aggregates)."""
        return self.monitor.excluded(node_ids)

    # ------------------------------------------------------------------ challenge

    def _pick_prober(self, suspect: str, wanted: str) -> Member:
        from meshnode.mesh import State

        m = self.mesh.membership
        if wanted:
            prober = m.member(wanted)
            if prober is None or prober.state != State.ALIVE or wanted == suspect:
                raise ChallengeRefused("FAILED_PRECONDITION", f"prober {wanted} is not an alive member other "
                                                              "than the suspect")
            return prober
        trust = self.monitor.trust
        third = [x for x in m.members() if x.state == State.ALIVE and x.node_id not in (suspect, self.mesh.node_id)
                 and not trust.is_flagged(x.node_id)]
        if third:
            return min(third, key=lambda x: (-trust.score(x.node_id), x.node_id))
        me = m.member(self.mesh.node_id)
        assert me is not None
        return me

    async def _measure(self, prober: Member, req: _mesh_pb2.MeasureRequest, timeout: float,
                       ) -> _mesh_pb2.MeasureResponse:
        if prober.node_id == self.mesh.node_id:
            token = MEMBER_CALLER.set(None)  # this node's own task, whoever asked for the challenge
            try:
                return await self.mesh.measure(req, "")
            finally:
                MEMBER_CALLER.reset(token)
        stub = self.mesh.transport.stub(prober.addr)
        self.mesh.ledger.asked(prober.node_id, tasks=1)
        resp: _mesh_pb2.MeasureResponse = await stub.Measure(req, timeout=timeout,
                                                             metadata=audience_metadata(prober.node_id))
        self.mesh.ledger.asked(prober.node_id, nbytes=resp.ByteSize())
        return resp

    async def _poll(self, suspect: Member, watch: ChallengeWatch) -> None:
        """The suspect's newest digest, straight from it (gossip may skip one), verified, into ``watch``."""
        from meshnode.mesh import DigestRejected, verify_digest

        if suspect.node_id == self.mesh.node_id:
            return
        try:
            resp = await self.mesh.transport.stub(suspect.addr).Digests(
                _mesh_pb2.DigestsRequest(node_ids=[suspect.node_id]), timeout=max(1.0, self._export_period))
        except grpc.aio.AioRpcError as exc:
            log.info("challenge: digests of %s not fetched: %s", suspect.node_id, exc)
            return
        for signed in resp.digests:
            try:
                d = verify_digest(signed, self.mesh.digest_config.max_bytes, self._clock())
            except DigestRejected as exc:
                log.warning("challenge: digest from %s dropped: %s", suspect.addr, exc)
                continue
            if d.node_id == suspect.node_id:
                watch.add(d)

    async def challenge(self, req: trust_pb2.ChallengeRequest) -> trust_pb2.ChallengeResponse:
        """Run one challenge (``Trust.Challenge``; see ``meshnode.trust._challenge``) and record its outcome.

        Raises:
            ChallengeRefused: the suspect is not an alive member (or is this node), the prober is unusable,
                or the count is out of bounds.
        """
        from meshnode.mesh import State, TaskRefused

        if not self.mesh.running:
            raise ChallengeRefused("FAILED_PRECONDITION", "the mesh is not running")
        m = self.mesh.membership
        suspect = m.member(req.suspect)
        if suspect is None or suspect.state not in (State.ALIVE, State.SUSPECT):
            raise ChallengeRefused("NOT_FOUND", f"suspect {req.suspect!r} is not an alive member")
        if suspect.node_id == self.mesh.node_id:
            raise ChallengeRefused("INVALID_ARGUMENT", "a node cannot challenge itself")
        caller = MEMBER_CALLER.get()  # a member's node key signed the request (None: an operator's)
        if caller == suspect.node_id:  # a flagged node must not talk its own score back up
            raise ChallengeRefused("PERMISSION_DENIED", "a member cannot ask for challenges of itself")
        count = req.count or DEFAULT_COUNT
        if not 1 <= count <= 100:
            raise ChallengeRefused("INVALID_ARGUMENT", f"count: {count} is outside 1..100")
        prober = self._pick_prober(suspect.node_id, req.prober)
        host = _host(suspect.addr)
        port = req.port or int(suspect.addr.rpartition(":")[2])
        target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        cfg = self.monitor.validator.config
        period = self._export_period
        loop = asyncio.get_running_loop()
        longest = 4 * period + 10.0  # the suspect's next digests, with room for gossip
        deadline = loop.time() + (min(req.deadline_ms / 1000, 4 * longest) if req.deadline_ms else longest)
        prober_addrs = {a for a, n in self.owners().items() if n == prober.node_id} | {_host(prober.addr)}
        started = self._clock()
        watch = ChallengeWatch(suspect.node_id, frozenset(prober_addrs), port, started, cfg.skew_ns,
                               self._normalize)
        out = trust_pb2.ChallengeResponse(suspect=suspect.node_id, prober=prober.node_id, target=target,
                                          started_ns=started)
        held = self.mesh.exchange.latest(suspect.node_id)
        if held is not None:
            watch.add(held.digest)
        self._watches.append(watch)
        try:
            measure = _mesh_pb2.MeasureRequest(target=target, count=count, timeout_ms=1000,
                                               requester_id=self.mesh.node_id)
            try:
                resp = await self._measure(prober, measure, max(1.0, deadline - loop.time()))
            except (grpc.aio.AioRpcError, TaskRefused) as exc:  # nothing to judge the suspect by
                detail = f"{exc.code().name}: {exc.details()}" if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
                out.verdict, out.detail = trust_pb2.CHALLENGE_INCONCLUSIVE, f"the prober did not measure: {detail}"
                return self._finish(out, watch)
            watch.finished_ns = max(self._clock(), started + 1)
            out.attempts, out.connected = resp.attempts, resp.reachable
            out.tolerance = tolerance(resp.reachable)
            settle = cfg.skew_ns + int(period * 1e9) // 2
            while True:
                verdict, detail = watch.verdict(resp.reachable, settle)
                if verdict != "pending" or loop.time() >= deadline:
                    break
                await asyncio.sleep(min(2.0, max(0.1, period / 4)))
                await self._poll(suspect, watch)
            if verdict == "pending":
                verdict, detail = "inconclusive", f"deadline reached; {detail}"
            out.verdict = {"passed": trust_pb2.CHALLENGE_PASSED, "failed": trust_pb2.CHALLENGE_FAILED}.get(
                verdict, trust_pb2.CHALLENGE_INCONCLUSIVE)
            out.detail = detail
            now = self._clock()
            if verdict in ("passed", "failed") and caller and req.prober and prober.node_id != self.mesh.node_id:
                # a member chose the prober: it may be itself, lying about its connections to get an honest
                # suspect flagged (or an accomplice confirming a liar); report, do not score
                self.monitor.counters["challenges_not_scored"] += 1
                out.detail += "; not scored: the request named the prober"
            elif verdict in ("passed", "failed"):
                ev = watch.evidence(prober.node_id, host, resp.reachable, now) if verdict == "failed" else None
                self.monitor.challenged(suspect.node_id, verdict == "passed", now, ev)
            return self._finish(out, watch)
        finally:
            self._watches.remove(watch)

    def _finish(self, out: trust_pb2.ChallengeResponse, watch: ChallengeWatch) -> trust_pb2.ChallengeResponse:
        out.reported, out.digests = watch.reported, watch.digests
        out.score = self.monitor.trust.score(out.suspect)
        out.flagged = self.monitor.trust.is_flagged(out.suspect)
        out.finished_ns = self._clock()
        log.info("challenge of %s by %s: %s (%s)", out.suspect, out.prober,
                 trust_pb2.ChallengeVerdict.Name(out.verdict), out.detail)
        return out



def filter_published(policy: PrivacyPolicy, digest: mesh_pb2.Digest) -> None:
    """Apply ``policy`` in place to every address ``digest`` carries before it is signed.

    Rollup keys are coarsened or hashed (``PrivacyPolicy.filter_digest``); endpoint records and the node's
    own addresses are hashed or kept, never coarsened (peers must still tell members apart); active-task
    targets are filtered like rollup keys, and a path probe's hop addresses like any address.
    """
    filtered = policy.filter_digest(digest)
    addrs = sorted({policy.endpoint_address(a) for a in filtered.addresses})
    del filtered.addresses[:]
    filtered.addresses.extend(addrs)
    for m in filtered.measurements:
        m.target = policy.destination_key(m.target)
        for h in m.hops:  # a path probe's routers are addresses like any other
            if h.addr:
                h.addr = policy.address(h.addr)
    digest.CopyFrom(filtered)
