"""Signed digests: each node's compact, signed summary of an export period, and their dissemination.

A ``Digest`` (mesh.proto) holds rollups per destination and endpoint records of flows whose other end is
a mesh member. It is serialized once, and the Ed25519 signature covers exactly those bytes: a
``SignedDigest`` is ``{payload, signature, public_key}``, and the node id is the fingerprint of the public
key, so a digest proves who wrote it without a key directory. Receivers verify, then keep only the
newest sequence number per node; everything they drop is counted by reason.

Dissemination (``DigestExchange``, the membership delegate): a node that holds a new digest piggybacks a
small ``DigestAnnounce{node_id, seq}`` on membership gossip (transmit-limited, so O(log n) sends); a node
that hears of a newer digest pulls it from the announcer over a reliable stream and then announces it
itself. Full digests thus cross each link about once, while announcements do the epidemic. Push-pull
anti-entropy exchanges the seq vector and carries the digests the asker lacks.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from google.protobuf.message import DecodeError

from meshnode._exceptions import ConfigError, PeerError
from meshnode._files import check_secret
from meshnode.mesh._broadcast import TransmitLimitedQueue
from meshnode.mesh._history import DigestHistory
from meshnode.mesh._state import State
from meshnode.v1 import flow_pb2, mesh_pb2

if TYPE_CHECKING:
    from meshnode.mesh._clock import Scheduler
    from meshnode.mesh._state import Membership

log = logging.getLogger(__name__)

DIGEST_VERSION = 1
"""The only ``Digest.version`` this code writes and reads."""

_FUTURE_SLACK_NS = 300 * 10**9

# The outcome classes of DESIGN.md (meshnode._model has the same; the mesh reads flows through FlowLike
# so that it does not depend on the model module).
_USEFUL: Final = frozenset({"established", "udp_answered"})
_FAILED: Final = frozenset({"refused", "timeout", "reset", "udp_unanswered"})
_PROTO_NUM: Final = {"tcp": 6, "udp": 17}
_KIND_NUM: Final = {"final": flow_pb2.FINAL, "interim": flow_pb2.INTERIM}


class FlowLike(Protocol):
    """The fields of ``meshnode._model.FlowRecord`` that digests read."""

    src: str
    sport: int
    dst: str
    dport: int
    proto: str
    direction: str
    start_ns: int
    end_ns: int
    bytes_tx: int
    bytes_rx: int
    packets_tx: int
    packets_rx: int
    outcome: str
    retransmits: int
    srtt_us: int
    service: str

    @property
    def destination(self) -> str:
        """``dst:dport``."""


def node_id_from_public_key(raw: bytes) -> str:
    """A node's id: the first 16 hex digits of sha256 over its raw 32-byte Ed25519 public key."""
    return hashlib.sha256(raw).hexdigest()[:16]


class NodeKey:
    """A node's Ed25519 identity.

    Args:
        private_key: the key; ``generate`` or ``load_or_create`` make one.
    """

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_raw = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.node_id = node_id_from_public_key(self.public_raw)

    @classmethod
    def generate(cls) -> NodeKey:
        """A fresh random key."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        """A key from 32 bytes of seed (deterministic tests and simulations only)."""
        return cls(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(seed).digest()))

    @classmethod
    def load_or_create(cls, path: Path) -> NodeKey:
        """The key stored at ``path`` (PKCS#8 PEM), created with mode 0600 when missing.

        An existing key that group or others may read or write is refused (``ConfigError`` with the
        ``chmod``), not silently fixed: someone else may already have copied it.
        """
        try:
            if path.exists():
                check_secret(path, "the node key", "if somebody else could have read it, delete it instead and "
                             "restart (the node gets a new key and a new node id)")
                key = serialization.load_pem_private_key(path.read_bytes(), password=None)
                if not isinstance(key, Ed25519PrivateKey):
                    raise ConfigError(f"{path} holds a key that is not Ed25519")
                return cls(key)
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            new = Ed25519PrivateKey.generate()
            pem = new.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            return cls(new)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot load or create the node key at {path}: {exc}") from exc

    def sign(self, payload: bytes) -> bytes:
        """The Ed25519 signature of ``payload``."""
        return self._key.sign(payload)


# ---------------------------------------------------------------------------------------------- building


def _percentile(sorted_values: list[int], q: float) -> int:
    if not sorted_values:
        return 0
    idx = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[idx]


def rollups_from_flows(flows: Iterable[FlowLike]) -> list[flow_pb2.Rollup]:
    """Per-destination rollups (``dst:dport``) of outbound flows: attempts, useful, failures, bytes, RTT,
    throughput (delivery rate).

    For nodes that do not already have ``PeriodSummary.by_destination`` at hand; the field meanings are
    those of ``meshnode.v1.Rollup``.
    """
    groups: dict[str, list[FlowLike]] = {}
    for f in flows:
        if f.direction != "outbound":
            continue
        groups.setdefault(f.destination, []).append(f)
    out: list[flow_pb2.Rollup] = []
    for key in sorted(groups):
        fs = groups[key]
        rtts = sorted(f.srtt_us for f in fs if f.srtt_us > 0)
        rates = sorted(8 * r for f in fs if (r := getattr(f, "delivery_rate", 0)) > 0)
        failures: Counter[str] = Counter(f.outcome for f in fs if f.outcome in _FAILED)
        out.append(flow_pb2.Rollup(
            key=key,
            flows=len(fs),
            useful=sum(1 for f in fs if f.outcome in _USEFUL),
            failures=dict(failures),
            bytes_tx=sum(f.bytes_tx for f in fs),
            bytes_rx=sum(f.bytes_rx for f in fs),
            retransmits=sum(f.retransmits for f in fs),
            rtt_p50_us=_percentile(rtts, 0.5),
            rtt_p95_us=_percentile(rtts, 0.95),
            throughput_p50_bps=_percentile(rates, 0.5),
            throughput_p05_bps=_percentile(rates, 0.05),
            service=next((f.service for f in fs if f.service), ""),
            remote_name=next((n for f in fs if (n := getattr(f, "remote_name", ""))), ""),
        ))
    return out


def endpoint_records(flows: Iterable[FlowLike], member_ips: Iterable[str]) -> list[flow_pb2.Flow]:
    """Flows whose remote end is a mesh member, reduced to what cross-validation compares.

    5-tuple, direction, bytes and packets each way, outcome, start and end, and the record's ``kind``
    (``final``, or ``interim`` for a flow still open at the period end: the validator compares finals for
    equality and interims only against a bound); nothing else is sent. A flow without a ``kind`` is sent
    without one (the validator then judges it by time).
    """
    members = set(member_ips)
    out: list[flow_pb2.Flow] = []
    for f in flows:
        if f.dst not in members:
            continue
        out.append(flow_pb2.Flow(
            src=f.src, sport=f.sport, dst=f.dst, dport=f.dport,
            proto=_PROTO_NUM.get(f.proto, 0),  # type: ignore[arg-type]
            direction=f.direction.upper(), bytes_tx=f.bytes_tx, bytes_rx=f.bytes_rx,
            packets_tx=f.packets_tx, packets_rx=f.packets_rx, outcome=f.outcome.upper(),
            start_ns=f.start_ns, end_ns=f.end_ns,
            kind=_KIND_NUM.get(getattr(f, "kind", ""), flow_pb2.RECORD_KIND_UNKNOWN),
        ))
    return out


class RollupLike(Protocol):
    """The fields of a rollup (``meshnode.summary.Rollup`` or ``meshnode.v1.Rollup``) a digest carries."""

    key: str
    flows: int
    useful: int
    bytes_tx: int
    bytes_rx: int
    retransmits: int
    rtt_p50_us: int
    rtt_p95_us: int
    service: str

    @property
    def failures(self) -> Mapping[str, int]:
        """Failed flows by outcome."""


class PeriodLike(Protocol):
    """The fields of an export period summary (``meshnode.summary.PeriodSummary``) a digest carries."""

    period_start_ns: int
    period_end_ns: int

    @property
    def by_destination(self) -> Sequence[RollupLike]:
        """Rollups by destination."""


def digest_from_period(period: PeriodLike, endpoints: Iterable[flow_pb2.Flow] = ()) -> mesh_pb2.Digest:
    """An unsigned digest of one export period: its destination rollups (and endpoint records)."""
    return mesh_pb2.Digest(
        period_start_ns=period.period_start_ns,
        period_end_ns=period.period_end_ns,
        by_destination=[
            flow_pb2.Rollup(
                key=r.key, flows=r.flows, useful=r.useful, failures=dict(r.failures), bytes_tx=r.bytes_tx,
                bytes_rx=r.bytes_rx, retransmits=r.retransmits, rtt_p50_us=r.rtt_p50_us,
                rtt_p95_us=r.rtt_p95_us, service=r.service,
                flows_retransmitting=getattr(r, "flows_retransmitting", 0),
                flows_slow_connect=getattr(r, "flows_slow_connect", 0),
                throughput_p50_bps=getattr(r, "throughput_p50_bps", 0),
                throughput_p05_bps=getattr(r, "throughput_p05_bps", 0),
                flows_slow_path=getattr(r, "flows_slow_path", 0),
                flows_slow_server=getattr(r, "flows_slow_server", 0),
                responses=getattr(r, "responses", 0), response_us_sum=getattr(r, "response_us_sum", 0),
                response_us_max=getattr(r, "response_us_max", 0), response_hist=getattr(r, "response_hist", ()),
                first_byte_hist=getattr(r, "first_byte_hist", ()), connect_hist=getattr(r, "connect_hist", ()),
                remote_name=getattr(r, "remote_name", ""),
            )
            for r in period.by_destination
        ],
        endpoints=list(endpoints),
    )


def _item_size(msg: flow_pb2.Rollup | flow_pb2.Flow) -> int:
    n = msg.ByteSize()
    return 1 + len(_varint_len(n)) + n


def _varint_len(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append(n & 0x7F)
        n >>= 7
        if not n:
            return bytes(out)


def bound_digest(digest: mesh_pb2.Digest, max_bytes: int) -> mesh_pb2.Digest:
    """``digest`` cut down to at most ``max_bytes`` serialized, the cuts counted in the digest itself.

    The biggest destinations (most attempts) and endpoint records (most bytes) are kept; endpoint records
    go first, because rollups are what aggregation needs.
    """
    if digest.ByteSize() <= max_bytes:
        return digest
    rollups = sorted(digest.by_destination, key=lambda r: (-r.flows, r.key))
    endpoints = sorted(digest.endpoints, key=lambda f: -(f.bytes_tx + f.bytes_rx))
    head = mesh_pb2.Digest()
    head.CopyFrom(digest)
    del head.by_destination[:]
    del head.endpoints[:]
    # room for the truncation counters, which are set below
    head.rollups_truncated = len(rollups)
    head.endpoints_truncated = len(endpoints)
    budget = max_bytes - head.ByteSize()
    kept_r: list[flow_pb2.Rollup] = []
    for r in rollups:
        size = _item_size(r)
        if size > budget:
            break
        budget -= size
        kept_r.append(r)
    kept_e: list[flow_pb2.Flow] = []
    for e in endpoints:
        size = _item_size(e)
        if size > budget:
            break
        budget -= size
        kept_e.append(e)
    head.by_destination.extend(kept_r)
    head.endpoints.extend(kept_e)
    head.rollups_truncated = digest.rollups_truncated + len(rollups) - len(kept_r)
    head.endpoints_truncated = digest.endpoints_truncated + len(endpoints) - len(kept_e)
    return head


def sign_digest(key: NodeKey, digest: mesh_pb2.Digest) -> mesh_pb2.SignedDigest:
    """Serialize ``digest`` once and sign those bytes."""
    payload = digest.SerializeToString(deterministic=True)
    return mesh_pb2.SignedDigest(payload=payload, signature=key.sign(payload), public_key=key.public_raw)


# ---------------------------------------------------------------------------------------------- verifying


class DigestRejected(PeerError):
    """A digest failed verification; ``reason`` is the counter it lands in."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def check_signature(public_key: bytes, signature: bytes, payload: bytes) -> None:
    """Check an Ed25519 signature.

    Raises:
        DigestRejected: ``bad_key`` or ``bad_signature``.
    """
    try:
        pub = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError as exc:
        raise DigestRejected("bad_key", str(exc)) from exc
    try:
        pub.verify(signature, payload)
    except InvalidSignature as exc:
        raise DigestRejected("bad_signature", "signature does not match the payload") from exc


SignatureCheck = Callable[[bytes, bytes, bytes], None]
"""``(public_key, signature, payload)``, raising ``DigestRejected``; ``check_signature`` by default."""


def verify_digest(
    signed: mesh_pb2.SignedDigest,
    max_bytes: int,
    now_ns: int | None = None,
    check: SignatureCheck = check_signature,
) -> mesh_pb2.Digest:
    """The digest inside ``signed``, after checking size, key, identity, signature, version and time.

    A destination key repeated in ``by_destination`` is refused: a node rolls each destination up once, and
    two rollups of one key would count its host twice in every fleet figure of that destination.

    Raises:
        DigestRejected: with ``reason`` one of ``oversize``, ``bad_key``, ``bad_signature``,
            ``malformed``, ``bad_identity``, ``bad_version``, ``from_future``, ``duplicate_key``.
    """
    if len(signed.payload) > max_bytes:
        raise DigestRejected("oversize", f"{len(signed.payload)} bytes > {max_bytes}")
    check(signed.public_key, signed.signature, signed.payload)
    try:
        digest = mesh_pb2.Digest.FromString(signed.payload)
    except DecodeError as exc:
        raise DigestRejected("malformed", str(exc)) from exc
    if digest.node_id != node_id_from_public_key(signed.public_key):
        raise DigestRejected("bad_identity", f"node_id {digest.node_id[:32]!r} is not the key's fingerprint")
    if digest.version != DIGEST_VERSION:
        raise DigestRejected("bad_version", f"version {digest.version}")
    if now_ns is not None and digest.period_end_ns > now_ns + _FUTURE_SLACK_NS:
        ahead = (digest.period_end_ns - now_ns) / 1e9
        raise DigestRejected("from_future", f"period ends {ahead:.0f} s ahead")
    if len({r.key for r in digest.by_destination}) != len(digest.by_destination):
        dup = next(k for k, n in Counter(r.key for r in digest.by_destination).items() if n > 1)
        raise DigestRejected("duplicate_key", f"destination {dup[:64]!r} rolled up more than once")
    return digest


# ---------------------------------------------------------------------------------------------- exchange


@dataclass(frozen=True, slots=True)
class HeldDigest:
    """A verified digest and the signed form it came in."""

    signed: mesh_pb2.SignedDigest
    digest: mesh_pb2.Digest
    received: float


@dataclass(frozen=True, slots=True)
class DigestConfig:
    """Bounds of the digest layer.

    Attributes:
        max_bytes: the largest digest payload built or accepted.
        max_nodes: the most nodes whose digests are held; the stalest is evicted beyond (counted).
        max_pull: the most digests one pull or push-pull answer carries.
        retransmit_mult: announcements are sent mult * ceil(log10(n + 1)) times.
        history_per_node: digests kept per member for validation and for peers that missed one (the
            validator looks back grace + 4 periods and a skew: 12 periods cover it).
        history_bytes: payload bytes of the whole history (about 12 full digests of 170 members).
        max_fetching: digests of missed periods being fetched at once.
    """

    max_bytes: int = 8192
    max_nodes: int = 10_000
    max_pull: int = 64
    retransmit_mult: int = 4
    history_per_node: int = 12
    history_bytes: int = 16 << 20
    max_fetching: int = 64


def members_only(membership: Callable[[], Membership | None], denied: Callable[[], Iterable[str]] = tuple,
                 certified: Callable[[str], bool] | None = None) -> Callable[[str], str | None]:
    """``DigestExchange.admit`` for a node: digests only of members, and of none on the denylist.

    A key signs its own digests, so a valid signature proves only that the publisher holds the key; what
    makes the key known is its node's membership, which it got by joining, over mutual TLS with a fleet
    certificate where the fleet runs TLS. A digest of any other key (``unknown_key``), relayed by a member or
    not, is dropped. Membership state is merged before the digests a push-pull carries, so a member is
    known by the time its first digest is looked at; one that is not yet (a digest pulled in the instant
    after a join) is fetched again by the next announcement or push-pull. The exchange does not pull what
    this refuses (announcements counted ``announces_<reason>``) nor offer it in push-pull (digests held
    from members since reaped), so a bounded pull or answer is never spent on digests that would be dropped.

    Under mutual TLS a member's own signed Alive puts it in the table, but that proves only that it holds its
    key; ``certified`` then requires that the node has called this one with a certificate binding that key
    (``meshnode.mesh._identity``), so that keys minted by the holder of one certificate publish nothing
    (``uncertified``, fetched again once the member has called).

    Args:
        membership: the membership now (None before the mesh starts: nothing is admitted).
        denied: node ids refused even when members (``denied``).
        certified: whether a node id has a certificate here; None admits members without one (plaintext).
    """

    def admit(node_id: str) -> str | None:
        if node_id in denied():
            return "denied"
        m = membership()
        if m is None or m.member(node_id) is None:
            return "unknown_key"
        if certified is not None and not certified(node_id):
            return "uncertified"
        return None

    return admit


class DigestExchange:
    """Holds the newest verified digest of every node and spreads them; the membership's delegate.

    Args:
        key: this node's identity (signs what it publishes).
        scheduler: the clock (seq numbers, ages, receipt times).
        config: bounds.
        check: the signature check (simulations share a memoized one across their nodes).
    """

    def __init__(
        self,
        key: NodeKey,
        scheduler: Scheduler,
        config: DigestConfig | None = None,
        check: SignatureCheck = check_signature,
    ) -> None:
        self.key = key
        self._check = check
        self.node_id = key.node_id
        self.config = config or DigestConfig()
        self._sched = scheduler
        self._held: dict[str, HeldDigest] = {}
        self.history = DigestHistory(self.config.history_per_node, self.config.history_bytes)
        """Every member's last periods (this node's own included), served to peers that missed one."""
        self._fetching: set[tuple[str, int]] = set()
        self._inflight: dict[str, int] = {}
        self._seq = 0
        self._membership: Membership | None = None
        self._announces = TransmitLimitedQueue(lambda: self._num_nodes(), self.config.retransmit_mult)
        self.counters: Counter[str] = Counter()
        self.on_accept: Callable[[mesh_pb2.Digest, mesh_pb2.SignedDigest], None] | None = None
        """Called with every newly accepted peer digest (to store it, or to measure dissemination)."""
        self.on_forget: Callable[[list[str]], None] | None = None
        """Called with the node ids forgotten (members reaped): what is kept about them elsewhere can go."""
        self.gossip = True
        """Whether digests spread by gossip (announcements, push-pull state). With site aggregates they do not:
        a node hands its digest to its site's aggregators and pulls those of the members it validates
        (``meshnode.mesh._sites``), which then reach this exchange through ``ingest``; pulls of held digests
        (``handle_request``) are still answered."""
        self.admit: Callable[[str], str | None] | None = None
        """Who may publish: called with a correctly signed peer digest's node id, None to accept it, else the
        reason it is dropped (counted as ``digests_<reason>``). The node sets ``members_only``; unset, any
        key that signs correctly is accepted (simulations)."""

    def attach(self, membership: Membership) -> None:
        """Give the exchange the membership it rides on (for pulls and the member count)."""
        self._membership = membership

    def _num_nodes(self) -> int:
        return self._membership.num_members() if self._membership is not None else 1

    # ------------------------------------------------------------------ local

    def publish(self, digest: mesh_pb2.Digest) -> mesh_pb2.SignedDigest:
        """Stamp, bound, sign, hold and announce this node's digest for a period.

        ``node_id``, ``version`` and ``seq`` are set here. The seq is the wall clock in milliseconds (or
        one more than the last, if larger): strictly increasing, and still so after a restart without
        persisted state.
        """
        d = mesh_pb2.Digest()
        d.CopyFrom(digest)
        d.version = DIGEST_VERSION
        d.node_id = self.node_id
        d.prev_seq = self._seq
        self._seq = max(self._seq + 1, self._sched.wall_ns() // 1_000_000)
        d.seq = self._seq
        bounded = bound_digest(d, self.config.max_bytes)
        if bounded.rollups_truncated or bounded.endpoints_truncated:
            self.counters["digest_rollups_truncated"] += bounded.rollups_truncated - d.rollups_truncated
            self.counters["digest_endpoints_truncated"] += bounded.endpoints_truncated - d.endpoints_truncated
        signed = sign_digest(self.key, bounded)
        self._held[self.node_id] = HeldDigest(signed, bounded, self._sched.now())
        self.history.add(self._held[self.node_id])
        self.counters["digests_published"] += 1
        self._announce(self.node_id, bounded.seq)
        return signed

    def latest(self, node_id: str) -> HeldDigest | None:
        """The newest verified digest of ``node_id`` held here."""
        return self._held.get(node_id)

    def held(self) -> dict[str, HeldDigest]:
        """Every held digest by node id (a copy of the mapping)."""
        return dict(self._held)

    def seqs(self) -> dict[str, int]:
        """The seq vector: node id -> newest held seq."""
        return {nid: h.digest.seq for nid, h in self._held.items()}

    def forget(self, node_ids: Iterable[str]) -> None:
        """Drop held digests (e.g. of members gone for good); then ``on_forget`` hears of them."""
        ids = [nid for nid in node_ids if nid != self.node_id]
        for nid in ids:
            self._held.pop(nid, None)
        self.history.forget(ids)
        if self.on_forget is not None and ids:
            try:
                self.on_forget(ids)
            except Exception:
                log.exception("digest on_forget callback failed")

    # ------------------------------------------------------------------ accepting

    def ingest(self, signed: mesh_pb2.SignedDigest, source: str) -> bool:
        """Verify and hold a digest from ``source``; False (counted, logged) when it is dropped."""
        try:
            digest = verify_digest(signed, self.config.max_bytes, self._sched.wall_ns(), self._check)
        except DigestRejected as exc:
            self.counters[f"digests_{exc.reason}"] += 1
            log.warning("digest from %s dropped: %s", source, exc)
            return False
        if self.admit is not None and digest.node_id != self.node_id:
            refused = self.admit(digest.node_id)
            if refused is not None:
                self.counters[f"digests_{refused}"] += 1
                log.debug("digest of %s from %s dropped: %s", digest.node_id, source, refused)
                return False
        held = self._held.get(digest.node_id)
        if digest.node_id == self.node_id:
            # a digest of ours that we do not hold: a replay, or our state from before a restart
            self.counters["digests_stale" if held is not None and digest.seq <= held.digest.seq
                          else "digests_own_replayed"] += 1
            return False
        entry = HeldDigest(signed, digest, self._sched.now())
        if held is not None and digest.seq <= held.digest.seq:
            # an older period: one this node missed is kept (and validated); one held, or one older than the
            # history keeps, is stale
            if not self.history.add(entry):
                self.counters["digests_stale"] += 1
                log.debug("stale digest %s/%d from %s dropped", digest.node_id, digest.seq, source)
                return False
            self.counters["digests_history_filled"] += 1
        else:
            if held is None and len(self._held) >= self.config.max_nodes:
                oldest = min((h for n, h in self._held.items() if n != self.node_id), key=lambda h: h.received)
                del self._held[oldest.digest.node_id]
                self.counters["digests_evicted"] += 1
            self._held[digest.node_id] = entry
            self.history.add(entry)
            self.counters["digests_accepted"] += 1
            self._announce(digest.node_id, digest.seq)
        self._fill_gaps(digest.node_id, source)
        if self.on_accept is not None:
            try:
                self.on_accept(digest, signed)
            except Exception:
                log.exception("digest on_accept callback failed")
        return True

    def _admitted(self, node_id: str) -> bool:
        return self.admit is None or node_id == self.node_id or self.admit(node_id) is None

    def _announce(self, node_id: str, seq: int) -> None:
        if not self.gossip:
            return
        msg = mesh_pb2.DigestAnnounce(node_id=node_id, seq=seq).SerializeToString()
        self._announces.queue(node_id, msg)

    def _wanted(self, seqs: Mapping[str, int]) -> list[str]:
        out = []
        for nid, seq in seqs.items():
            held = self._held.get(nid)
            if nid == self.node_id or (held is not None and held.digest.seq >= seq):
                continue
            if self._inflight.get(nid, -1) >= seq or not self._admitted(nid):
                continue  # pulled already; or it would be dropped (and pulls are bounded: ask for others)
            out.append(nid)
        return out[: self.config.max_pull]

    def _pull(self, addr: str, wanted: Mapping[str, int]) -> None:
        if self._membership is None or not wanted:
            return
        for nid, seq in wanted.items():
            self._inflight[nid] = max(self._inflight.get(nid, -1), seq)
        req = mesh_pb2.DigestPull(node_ids=sorted(wanted)).SerializeToString()
        self.counters["digest_pulls"] += 1

        def reply(raw: bytes | None, err: str) -> None:
            for nid, seq in wanted.items():
                if self._inflight.get(nid) == seq:
                    del self._inflight[nid]
            if raw is None:
                self.counters["digest_pulls_failed"] += 1
                log.debug("digest pull from %s failed: %s", addr, err)
                return
            try:
                state = mesh_pb2.DigestState.FromString(raw)
            except DecodeError as exc:
                self.counters["digest_answers_malformed"] += 1
                log.warning("malformed digest answer from %s dropped: %s", addr, exc)
                return
            for signed in state.digests[: self.config.max_pull]:
                self.ingest(signed, addr)

        self._membership.request(addr, req, reply)

    def _answer(self, node_ids: Iterable[str]) -> list[mesh_pb2.SignedDigest]:
        out = []
        for nid in node_ids:
            held = self._held.get(nid)
            if held is not None:
                out.append(held.signed)
            if len(out) >= self.config.max_pull:
                break
        return out

    # ------------------------------------------------------------------ Delegate

    def notify_msg(self, source: str, source_addr: str, payload: bytes) -> None:
        if not self.gossip:
            self.counters["announces_not_gossiped"] += 1
            return
        try:
            ann = mesh_pb2.DigestAnnounce.FromString(payload)
        except DecodeError as exc:
            self.counters["announces_malformed"] += 1
            log.warning("malformed digest announcement from %s dropped: %s", source_addr, exc)
            return
        if not ann.node_id or len(ann.node_id) > 64:
            self.counters["announces_malformed"] += 1
            log.warning("digest announcement without a node id from %s dropped", source_addr)
            return
        refused = self.admit(ann.node_id) if self.admit is not None and ann.node_id != self.node_id else None
        if refused is not None:  # not pulled: its digest would be dropped
            self.counters[f"announces_{refused}"] += 1
            return
        wanted = self._wanted({ann.node_id: ann.seq})
        if wanted:
            self._pull(source_addr, {ann.node_id: ann.seq})

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        return self._announces.get_broadcasts(overhead, limit)

    def local_state(self, join: bool, remote: bytes | None) -> bytes:
        if not self.gossip:
            return b""
        state = mesh_pb2.DigestState(seqs=self.seqs())
        if remote is not None:
            try:
                theirs = dict(mesh_pb2.DigestState.FromString(remote).seqs)
            except DecodeError:
                theirs = {}
            if len(theirs) > self.config.max_nodes:  # refused by merge_remote_state: answered with seqs only
                return state.SerializeToString()
            # digests of nodes no longer members (held since before they were reaped) are not offered:
            # a peer that never knew them drops them, and they would crowd the bounded answer
            newer = [nid for nid, h in self._held.items()
                     if theirs.get(nid, -1) < h.digest.seq and self._admitted(nid)]
            state.digests.extend(self._answer(newer))
        return state.SerializeToString()

    def merge_remote_state(self, payload: bytes, join: bool, source_addr: str) -> None:
        if not self.gossip:
            return
        try:
            state = mesh_pb2.DigestState.FromString(payload)
        except DecodeError as exc:
            self.counters["digest_answers_malformed"] += 1
            log.warning("malformed digest state from %s dropped: %s", source_addr, exc)
            return
        if len(state.seqs) > self.config.max_nodes:
            self.counters["digest_states_oversize"] += 1
            log.warning("digest state from %s names %d nodes (max %d); dropped", source_addr, len(state.seqs),
                        self.config.max_nodes)
            return
        for signed in state.digests[: self.config.max_pull]:
            self.ingest(signed, source_addr)
        wanted = self._wanted(state.seqs)
        if wanted:
            self._pull(source_addr, {nid: state.seqs[nid] for nid in wanted})

    def handle_request(self, source_addr: str, payload: bytes) -> bytes:
        try:
            req = mesh_pb2.DigestPull.FromString(payload)
        except DecodeError as exc:
            self.counters["digest_requests_malformed"] += 1
            raise PeerError(f"malformed digest pull from {source_addr}") from exc
        if len(req.node_ids) > self.config.max_pull or len(req.refs) > self.config.max_pull:  # ``_wanted``
            self.counters["digest_pulls_oversize"] += 1
            raise PeerError(f"digest pull from {source_addr} names {len(req.node_ids)} nodes and "
                            f"{len(req.refs)} periods (max {self.config.max_pull} each)")
        out = self._answer(req.node_ids)
        for ref in req.refs[: self.config.max_pull]:
            if len(out) >= self.config.max_pull:
                break
            held = self.history.get(ref.node_id, ref.seq)
            if held is not None:
                out.append(held.signed)
        return mesh_pb2.DigestState(digests=out).SerializeToString()

    # ------------------------------------------------------------------ missed periods

    def _fill_gaps(self, node_id: str, source_addr: str) -> None:
        """Fetch the periods of ``node_id`` that held digests name as predecessors and that are not held: from
        ``source_addr`` (it held the later one), then the publisher."""
        for seq in self.history.missing(node_id):
            self.fetch(node_id, seq, [source_addr])

    def fetch(self, node_id: str, seq: int, holders: Sequence[str] = ()) -> bool:
        """Fetch digest ``seq`` of ``node_id``: from each of ``holders`` in turn, then from the publisher and
        two other members, until one answers with it (verified and kept as any digest). False when it is held,
        being fetched, or too many fetches are under way (counted ``digest_fetches_deferred``)."""
        ref = (node_id, seq)
        if self._membership is None or self.history.get(node_id, seq) is not None or ref in self._fetching:
            return False
        if len(self._fetching) >= self.config.max_fetching:
            self.counters["digest_fetches_deferred"] += 1
            return False
        addrs = self._holders(node_id, holders)
        if not addrs:
            return False
        self._fetching.add(ref)
        self.counters["digest_fetches"] += 1
        req = mesh_pb2.DigestPull(refs=[mesh_pb2.DigestRef(node_id=node_id, seq=seq)]).SerializeToString()
        membership = self._membership

        def ask(i: int) -> None:
            def reply(raw: bytes | None, err: str) -> None:
                if raw is not None:
                    try:
                        for signed in mesh_pb2.DigestState.FromString(raw).digests[:1]:
                            self.ingest(signed, addrs[i])
                    except DecodeError as exc:
                        self.counters["digest_answers_malformed"] += 1
                        log.warning("malformed digest answer from %s dropped: %s", addrs[i], exc)
                if self.history.get(node_id, seq) is not None:
                    self._fetching.discard(ref)
                elif i + 1 < len(addrs):
                    ask(i + 1)
                else:
                    self._fetching.discard(ref)
                    self.counters["digest_fetches_failed"] += 1
                    log.debug("digest %s/%d not fetched from %s (last: %s)", node_id, seq, addrs, err or "not held")

            membership.request(addrs[i], req, reply)

        ask(0)
        return True

    def _holders(self, node_id: str, first: Sequence[str]) -> list[str]:
        """Where to ask: ``first`` (members' addresses only: a packet may name any address), the publisher,
        then two other alive members."""
        assert self._membership is not None
        me = self._membership.address
        members = {m.addr: m for m in self._membership.members()}
        out = [a for a in first if a in members and a != me]
        publisher = self._membership.member(node_id)
        if publisher is not None and publisher.addr not in out and publisher.addr != me:
            out.append(publisher.addr)
        others = [a for a, m in members.items() if a not in out and a != me
                  and m.node_id != node_id and m.state == State.ALIVE]
        out.extend(sorted(others)[:2])
        return out

    def request_gap(self, node_id: str, after_ns: int) -> bool:
        """Fetch the digest of ``node_id`` whose period follows ``after_ns`` (validation found no period of it
        there): the predecessor of the first held digest starting later, or, when none does, its newest digest
        from the publisher. False when nothing can be asked for."""
        later = [h for h in self.history.of(node_id) if h.digest.period_start_ns > after_ns]
        if later:
            first = later[0].digest
            return bool(first.prev_seq) and self.fetch(node_id, first.prev_seq)
        publisher = self._membership.member(node_id) if self._membership is not None else None
        if publisher is None or node_id == self.node_id:
            return False
        held = self._held.get(node_id)
        self._pull(publisher.addr, {node_id: held.digest.seq + 1 if held is not None else 1})
        return True
