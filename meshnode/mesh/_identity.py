"""Identities bound to certificates: who is on the other end of a mesh call, and whose claims it may make.

Under mutual TLS every node's certificate names its Ed25519 key: ``meshnode ca issue`` writes the key's
fingerprint (the node id) as the URI subject alternative name ``meshnode:key:<node id>``. The TLS handshake
proves the peer holds the certificate, so a call's peer *is* that node id, and nothing else:

* a packet or push-pull must name that node id as its source;
* an ``Alive`` about node X is accepted only from X's own connection, or signed by X's key (``sign_alive``),
  so that a member cannot move another member's address nor gossip keys of its own making into the table;
* so is a leave of node X (a ``Dead`` with ``from`` X, or X listed LEFT in push-pull state; ``sign_leave``):
  a member cannot make the fleet stop probing another one by saying it left. A Dead declared by another
  node after a suspicion needs no signature: that is SWIM's own accusation, which X refutes;
* a node id is *certified* once it has called this node with its certificate; only certified members'
  digests are admitted, and trust's quorum counts certificates. A key minted by the holder of one
  certificate is never certified, so one certificate is one identity.

Without TLS (``meshnode run --insecure``, simulations) there is no peer certificate: none of these checks
runs, and any key can join. They are mTLS-only by construction.

``PEER`` carries the caller's certificate from the gRPC servicer into the synchronous state machine for
the duration of one packet or stream (None: no certificate known, e.g. an answer to our own request).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, TypeVar

from meshnode.mesh._digest import DigestRejected, check_signature, node_id_from_public_key
from meshnode.v1 import mesh_pb2

if TYPE_CHECKING:
    from meshnode.mesh._digest import NodeKey

log = logging.getLogger(__name__)

M = TypeVar("M", mesh_pb2.Alive, mesh_pb2.Dead)

KEY_URI_PREFIX: Final = "meshnode:key:"
"""A node certificate's URI SAN ``meshnode:key:<node id>`` binds the node's Ed25519 key to it."""

AUDIENCE_METADATA_KEY: Final = "meshnode-audience"
"""Call metadata naming the node id a signed call is for; the node's ``RequestSigner`` signs it as the audience."""

_ALIVE_DOMAIN: Final = b"meshnode-alive-v1\x00"
_LEAVE_DOMAIN: Final = b"meshnode-leave-v1\x00"


@dataclass(frozen=True, slots=True)
class PeerCertificate:
    """What a TLS peer's certificate says.

    Attributes:
        fingerprint: SHA-256 of the certificate (DER), hex: the certificate's identity for quorums.
        node_id: the node id its ``meshnode:key:`` SAN binds; None when it binds none (or several).
        is_node: good for TLS server authentication (a node certificate, not a ``--client`` one).
    """

    fingerprint: str
    node_id: str | None
    is_node: bool


PEER: contextvars.ContextVar[PeerCertificate | None] = contextvars.ContextVar("meshnode_mesh_peer", default=None)
"""The certificate of the peer whose packet or stream is being handled (None: not known)."""


def bound_node_ids(cert: object) -> list[str]:
    """The node ids in a certificate's ``meshnode:key:`` URIs (an ``x509.Certificate``)."""
    from cryptography import x509

    assert isinstance(cert, x509.Certificate)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [u[len(KEY_URI_PREFIX):] for u in san.get_values_for_type(x509.UniformResourceIdentifier)
            if u.startswith(KEY_URI_PREFIX)]


@functools.lru_cache(maxsize=1024)
def peer_certificate(pem: bytes) -> PeerCertificate | None:
    """Parse a peer's PEM certificate (as gRPC's auth context gives it); None when it does not parse."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        cert = x509.load_pem_x509_certificate(pem)
    except ValueError:
        return None
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        is_node = ExtendedKeyUsageOID.SERVER_AUTH in usage
    except x509.ExtensionNotFound:
        is_node = False
    ids = bound_node_ids(cert)
    fp = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()
    return PeerCertificate(fp, ids[0] if len(ids) == 1 else None, is_node)


def tls_peer(auth_context: Mapping[str, Iterable[bytes]]) -> PeerCertificate | None:
    """The peer certificate of a gRPC call (``context.auth_context()``); None without TLS or a certificate."""
    pems = list(auth_context.get("x509_pem_cert") or ())
    return peer_certificate(bytes(pems[0])) if pems else None


def over_tls(auth_context: Mapping[str, Iterable[bytes]]) -> bool:
    """True when the call came over TLS (``transport_security_type`` ``ssl``)."""
    return any(bytes(v) == b"ssl" for v in auth_context.get("transport_security_type") or ())


def audience_metadata(node_id: str) -> tuple[tuple[str, str]]:
    """The metadata that names ``node_id`` as the audience of a call the node's key signs."""
    return ((AUDIENCE_METADATA_KEY, node_id),)


def alive_bytes(a: mesh_pb2.Alive) -> bytes:
    """The bytes an Alive's signature covers: the domain tag and the Alive without its proof."""
    bare = mesh_pb2.Alive(node=a.node, incarnation=a.incarnation, addr=a.addr, labels=a.labels)
    return _ALIVE_DOMAIN + bare.SerializeToString(deterministic=True)


def sign_alive(key: NodeKey, a: mesh_pb2.Alive) -> None:
    """Sign ``a`` (about ``key``'s own node) in place."""
    a.public_key = key.public_raw
    a.signature = key.sign(alive_bytes(a))


def signed_by_node(node: str, public_key: bytes, signature: bytes, payload: bytes) -> bool:
    """True when ``signature`` over ``payload`` is valid by ``public_key`` and that key's fingerprint is ``node``."""
    if len(public_key) != 32 or not signature or node_id_from_public_key(public_key) != node:
        return False
    try:
        check_signature(public_key, signature, payload)
    except DigestRejected:
        return False
    return True


def alive_signed_by_member(a: mesh_pb2.Alive) -> bool:
    """True when ``a`` carries a valid signature by the key whose fingerprint is ``a.node``."""
    return signed_by_node(a.node, a.public_key, a.signature, alive_bytes(a))


def leave_bytes(d: mesh_pb2.Dead) -> bytes:
    """The bytes a leave's signature covers: the domain tag and the Dead without its proof."""
    bare = mesh_pb2.Dead(node=d.node, incarnation=d.incarnation)
    setattr(bare, "from", getattr(d, "from"))
    return _LEAVE_DOMAIN + bare.SerializeToString(deterministic=True)


def sign_leave(key: NodeKey, d: mesh_pb2.Dead) -> None:
    """Sign ``d`` (``key``'s own node leaving) in place."""
    d.public_key = key.public_raw
    d.signature = key.sign(leave_bytes(d))


def leave_signed_by_member(d: mesh_pb2.Dead) -> bool:
    """True when ``d`` is a leave (``from`` equals ``node``) signed by the key whose fingerprint is ``d.node``."""
    return getattr(d, "from") == d.node and signed_by_node(d.node, d.public_key, d.signature, leave_bytes(d))


class IdentityGuard:
    """The mTLS identity rules of one node's mesh (see the module docstring); counts what it refuses.

    Args:
        max_certified: node ids remembered as certified (least recently seen forgotten beyond; they are
            certified again on their next call).
    """

    def __init__(self, max_certified: int = 100_000) -> None:
        self._certified: OrderedDict[str, str] = OrderedDict()
        self._max = max_certified
        self.counters: Counter[str] = Counter()

    def saw(self, peer: PeerCertificate) -> None:
        """A call arrived with ``peer``'s certificate: its node id is certified by it."""
        if peer.node_id is None:
            return
        self._certified[peer.node_id] = peer.fingerprint
        self._certified.move_to_end(peer.node_id)
        while len(self._certified) > self._max:
            self._certified.popitem(last=False)

    def certificate(self, node_id: str) -> str | None:
        """The fingerprint of the certificate ``node_id`` last called with; None when never seen."""
        return self._certified.get(node_id)

    def certified(self, node_id: str) -> bool:
        """True when ``node_id`` has called this node with a certificate binding its key."""
        return node_id in self._certified

    def forget(self, node_ids: list[str]) -> None:
        """Members gone for good: they certify themselves again if they come back."""
        for n in node_ids:
            self._certified.pop(n, None)

    def source_ok(self, source: str) -> bool:
        """Whether the node id a packet or push-pull names as its source is its TLS peer's (counted if not)."""
        peer = PEER.get()
        if peer is None or peer.node_id == source:
            return True
        self.counters["identity_source_mismatch"] += 1
        log.warning("mesh message naming %s as its source refused: its certificate binds %s", source[:32],
                    peer.node_id)
        return False

    def alive_ok(self, a: mesh_pb2.Alive) -> bool:
        """Whether an Alive may be believed: from its member's own connection, or signed by its member."""
        return self._own_or_signed(a.node, alive_signed_by_member, a, "alives_unsigned", "alive")

    def leave_ok(self, d: mesh_pb2.Dead) -> bool:
        """Whether a leave (``from`` equal to ``node``) may be believed: from its member's own connection, or
        signed by its member (counted ``leaves_unsigned`` if not)."""
        return self._own_or_signed(d.node, leave_signed_by_member, d, "leaves_unsigned", "leave")

    def _own_or_signed(self, node: str, signed: Callable[[M], bool], msg: M, refused: str, what: str) -> bool:
        """A claim about ``node`` is its own when its connection is ``node``'s, or ``node``'s key signed it."""
        peer = PEER.get()
        if (peer is not None and peer.node_id == node) or signed(msg):
            return True
        self.counters[refused] += 1
        log.debug("%s of %s neither from its own connection nor signed by it: dropped", what, node[:32])
        return False
