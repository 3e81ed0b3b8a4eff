"""Authorization of fleet queries and active tasks: signed by a key the fleet trusts, fresh, not replayed.

Seed 002 §6: queries "should be authenticated by requiring that they be properly signed by a designated
authority", so that nobody can map the network or load every host with expensive queries; seed 003 adds
per-node blacklists. mTLS says which *machine* is calling; a signature says which *key* asked, and survives
being relayed by a node's fan-out to every other node.

The signature is carried out of band, as the binary gRPC metadata ``meshnode-auth-bin`` (a serialized
``meshnode.v1.RequestAuth``), so that request messages need no field for it. It covers a domain tag, the
full method name, the audience (the node id of the node the request is for), a timestamp, a random nonce
and the SHA-256 of the request serialized deterministically: a signature for one method cannot be replayed
on another, nor on another node, an old one is refused as stale, and a fresh one only once (the nonce is
remembered for the freshness window). Signatures travel only over TLS: the server side
(``SignedRequestInterceptor``) refuses a signed request that arrived in plaintext, and a member's key only
from that member's own connection. Every refusal is an ``Unauthorized`` with a
``reason``; servicers map it to ``PERMISSION_DENIED`` (``StatusCode`` name in ``GRPC_CODE``).
"""

from __future__ import annotations

import hashlib
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Final

from google.protobuf.message import DecodeError

from meshnode.mesh import DigestRejected, NodeKey, check_signature, node_id_from_public_key
from meshnode.trust._errors import Unauthorized
from meshnode.v1 import trust_pb2

if TYPE_CHECKING:
    from google.protobuf.message import Message

AUTH_METADATA_KEY: Final = "meshnode-auth-bin"
"""The gRPC metadata key carrying a serialized ``RequestAuth`` (``-bin``: binary metadata)."""

GRPC_CODE: Final = "PERMISSION_DENIED"
"""The ``grpc.StatusCode`` name servicers answer an ``Unauthorized`` with."""

AUTH_REASONS: Final = ("unsigned", "malformed", "unknown_key", "bad_signature", "stale", "replayed", "denied",
                        "wrong_audience", "plaintext", "not_own_connection")
"""Every ``Unauthorized.reason``."""

_DOMAIN: Final = b"meshnode-authz-v2\x00"
_NONCE_BYTES: Final = 16


def signed_bytes(method: str, audience: str, timestamp_ns: int, nonce: bytes, payload: bytes) -> bytes:
    """The exact bytes a request signature covers (see ``RequestAuth.signature``)."""
    return (_DOMAIN + method.encode() + b"\x00" + audience.encode() + b"\x00" + struct.pack(">Q", timestamp_ns)
            + nonce + hashlib.sha256(payload).digest())


def request_payload(request: Message) -> bytes:
    """A request message as signed: serialized deterministically (map order fixed)."""
    return request.SerializeToString(deterministic=True)


def sign_request(
    key: NodeKey, method: str, payload: bytes, audience: str, now_ns: int | None = None, nonce: bytes | None = None
) -> trust_pb2.RequestAuth:
    """Sign a request for ``method`` (full gRPC name, ``/meshnode.v1.Mesh/FleetQuery``) to node ``audience``.

    Args:
        key: the signer (an operator's or a node's key the fleet trusts).
        method: the full method name the request is for.
        payload: ``request_payload(request)``.
        audience: the node id of the node that is to run it.
        now_ns: the signing time (wall clock by default).
        nonce: 16 bytes (random by default; tests pass their own).
    """
    ts = time.time_ns() if now_ns is None else now_ns
    n = os.urandom(_NONCE_BYTES) if nonce is None else nonce
    return trust_pb2.RequestAuth(public_key=key.public_raw, timestamp_ns=ts, nonce=n, audience=audience,
                                 signature=key.sign(signed_bytes(method, audience, ts, n, payload)))


def auth_metadata(
    key: NodeKey, method: str, request: Message, audience: str, now_ns: int | None = None
) -> tuple[tuple[str, bytes]]:
    """The call metadata that authorizes ``request`` for ``method`` on node ``audience`` (``metadata=``)."""
    auth = sign_request(key, method, request_payload(request), audience, now_ns)
    return ((AUTH_METADATA_KEY, auth.SerializeToString()),)


class Authorizer:
    """Checks request signatures against the fleet's trusted keys, a denylist, freshness and replays.

    Args:
        trusted: raw 32-byte Ed25519 public keys allowed to sign queries and tasks.
        denied: node ids refused even when trusted (seed 003's per-node blacklist).
        max_skew_s: how far a signature's timestamp may be from now, either way.
        clock: wall clock in nanoseconds (injected in tests).
        max_nonces: bound on remembered nonces; when full the oldest are forgotten, and signatures older than
            the oldest remembered one are refused as stale, so that a forgotten nonce cannot be replayed.
        member: whether a node id is a current member of this node's mesh; a member's key is trusted too, so
            that a node's fan-out (signed with its own key) is accepted by its peers. Node ids are key
            fingerprints; the interceptor accepts a member's signature only from the member's own connection,
            whose certificate binds its key (``meshnode.mesh._identity``).
        audience: this node's id: requests signed for another node are refused (``wrong_audience``); None
            skips the check (a node without a mesh serves none of the signed methods).
    """

    def __init__(
        self,
        trusted: Iterable[bytes],
        denied: Iterable[str] = (),
        *,
        max_skew_s: float = 30.0,
        clock: Callable[[], int] = time.time_ns,
        max_nonces: int = 100_000,
        member: Callable[[str], bool] | None = None,
        audience: str | None = None,
    ) -> None:
        self.audience = audience
        self._trusted = {node_id_from_public_key(k): bytes(k) for k in trusted}
        self._member = member
        self._denied = set(denied)
        self._skew_ns = int(max_skew_s * 1e9)
        self._clock = clock
        self._max_nonces = max_nonces
        self._nonces: OrderedDict[bytes, int] = OrderedDict()
        self._floor_ns = 0

    def trust(self, public_key: bytes) -> str:
        """Trust one more key; returns its node id."""
        nid = node_id_from_public_key(public_key)
        self._trusted[nid] = bytes(public_key)
        return nid

    def deny(self, node_id: str) -> None:
        """Refuse a node id from now on."""
        self._denied.add(node_id)

    def allow(self, node_id: str) -> None:
        """Lift a denial."""
        self._denied.discard(node_id)

    def is_operator(self, signer: str) -> bool:
        """True when ``signer`` (a node id, as ``check`` returns) is one of the operator keys."""
        return signer in self._trusted

    def check(self, method: str, payload: bytes, auth: trust_pb2.RequestAuth | None) -> str:
        """The signer's node id when ``auth`` authorizes ``payload`` for ``method``.

        Raises:
            Unauthorized: with ``reason`` one of ``AUTH_REASONS``.
        """
        if auth is None:
            raise Unauthorized("unsigned", f"{method} without {AUTH_METADATA_KEY}")
        if len(auth.nonce) != _NONCE_BYTES or len(auth.public_key) != 32 or not auth.signature:
            raise Unauthorized("malformed", "nonce, key or signature of the wrong size")
        signer = node_id_from_public_key(auth.public_key)
        if self._trusted.get(signer) != auth.public_key and not (self._member is not None and self._member(signer)):
            raise Unauthorized("unknown_key", f"signer {signer} is not a trusted key")
        if signer in self._denied:
            raise Unauthorized("denied", f"signer {signer} is on the denylist")
        if self.audience is not None and auth.audience != self.audience:
            raise Unauthorized("wrong_audience", f"signed for node {auth.audience[:32]!r}, this is {self.audience}")
        try:
            check_signature(auth.public_key, auth.signature,
                            signed_bytes(method, auth.audience, auth.timestamp_ns, auth.nonce, payload))
        except DigestRejected as exc:
            raise Unauthorized("bad_signature", f"signature of {signer} does not cover this {method}") from exc
        now = self._clock()
        if abs(now - auth.timestamp_ns) > self._skew_ns or auth.timestamp_ns < self._floor_ns:
            raise Unauthorized("stale", f"signed {(now - auth.timestamp_ns) / 1e9:.0f} s from now")
        self._remember(auth.nonce, auth.timestamp_ns, now)
        return signer

    def _remember(self, nonce: bytes, ts: int, now: int) -> None:
        horizon = now - self._skew_ns
        while self._nonces:
            oldest, t = next(iter(self._nonces.items()))
            if t >= horizon:
                break
            del self._nonces[oldest]
        if nonce in self._nonces:
            raise Unauthorized("replayed", "nonce already used within the freshness window")
        self._nonces[nonce] = ts
        while len(self._nonces) > self._max_nonces:
            _, t = self._nonces.popitem(last=False)
            self._floor_ns = max(self._floor_ns, t + 1)

    def check_metadata(
        self, method: str, request: Message, metadata: Sequence[tuple[str, str | bytes]] | None
    ) -> str:
        """``check`` with the ``RequestAuth`` taken from call metadata (``context.invocation_metadata()``).

        Raises:
            Unauthorized: as ``check``; ``malformed`` when the metadata does not parse.
        """
        raw = next((v for k, v in (metadata or ()) if k == AUTH_METADATA_KEY), None)
        if raw is None:
            return self.check(method, request_payload(request), None)
        if isinstance(raw, str):
            raise Unauthorized("malformed", f"{AUTH_METADATA_KEY} is not binary metadata")
        try:
            auth = trust_pb2.RequestAuth.FromString(raw)
        except DecodeError as exc:
            raise Unauthorized("malformed", f"{AUTH_METADATA_KEY} does not parse") from exc
        return self.check(method, request_payload(request), auth)
