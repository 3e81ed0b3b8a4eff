"""gRPC side of trust: the ``meshnode.v1.Trust`` servicer and an interceptor that enforces signed requests.

The interceptor lets a server require signatures on chosen methods (``/meshnode.v1.Mesh/FleetQuery``,
active tasks) without touching their servicers: it checks the ``meshnode-auth-bin`` metadata against the
deserialized request before the servicer runs, and aborts with ``PERMISSION_DENIED`` otherwise. Refusals are
logged with the caller's address and counted by reason. ``RequestSigner`` is the client side: on a node's
peer channels it signs the same methods with the node's key (a fleet query's fan-out), for the node the call
names as its audience.

Signatures are checked only on calls that came over TLS: a signed request in plaintext is refused
(``plaintext``), since anyone on the path could read and replay it. An operator's key may sign from any
connection (meshctl holds a client certificate); a member's key only from the member's own connection, whose
node certificate binds that key (``not_own_connection``): a member cannot lend its signature to another.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc

from meshnode.mesh import AUDIENCE_METADATA_KEY, MEMBER_CALLER, over_tls, tls_peer
from meshnode.trust._authz import AUTH_METADATA_KEY, Authorizer, auth_metadata
from meshnode.trust._challenge import ChallengeRefused
from meshnode.trust._errors import Unauthorized
from meshnode.trust._monitor import TrustMonitor
from meshnode.v1 import trust_pb2, trust_pb2_grpc

if TYPE_CHECKING:
    from meshnode.mesh import NodeKey

log = logging.getLogger(__name__)


Challenger = Callable[[trust_pb2.ChallengeRequest], Awaitable[trust_pb2.ChallengeResponse]]
"""Runs one challenge (``MeshTrust.challenge``); raises ``ChallengeRefused``."""


class TrustServicer(trust_pb2_grpc.TrustServicer):
    """``meshnode.v1.Trust``: this node's view of its peers' trustworthiness, and challenges of suspects."""

    def __init__(self, monitor: TrustMonitor, challenge: Challenger | None = None) -> None:
        self._monitor = monitor
        self._challenge = challenge

    async def Validate(
        self, request: trust_pb2.ValidateRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trust_pb2.ValidateResponse:
        """Scores and recent evidence, of one peer or all."""
        return self._monitor.validate_response(request.peer, request.max_evidence)

    async def Challenge(
        self, request: trust_pb2.ChallengeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> trust_pb2.ChallengeResponse:
        """Have a third member connect to the suspect and check the suspect's digests report it."""
        if self._challenge is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "this node runs no mesh to challenge in")
        assert self._challenge is not None
        try:
            return await self._challenge(request)
        except ChallengeRefused as exc:
            log.info("challenge of %s from %s refused: %s", request.suspect, context.peer(), exc)
            await context.abort(getattr(grpc.StatusCode, exc.code), str(exc))
        raise AssertionError("unreachable")  # abort raises


def add_trust_servicer(monitor: TrustMonitor, server: grpc.aio.Server,
                       challenge: Challenger | None = None) -> TrustServicer:
    """Register ``meshnode.v1.Trust`` on ``server`` (before it starts); returns the servicer. Without
    ``challenge``, ``Challenge`` answers ``FAILED_PRECONDITION``."""
    servicer = TrustServicer(monitor, challenge)
    trust_pb2_grpc.add_TrustServicer_to_server(servicer, server)  # type: ignore[no-untyped-call]
    return servicer


Handler = Callable[[Any, "grpc.aio.ServicerContext[Any, Any]"], Awaitable[Any]]


class SignedRequestInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Require a valid request signature on ``methods`` (full names, ``/meshnode.v1.Mesh/FleetQuery``).

    Args:
        authorizer: the fleet's trusted keys, denylist and replay memory.
        methods: the protected unary-request methods; others pass untouched.
        allow_unsigned: let requests without a signature through (counted as ``requests_unsigned_allowed``);
            signed ones are still checked. Only for an insecure lab node with no operator keys.
    """

    def __init__(self, authorizer: Authorizer, methods: Iterable[str], *, allow_unsigned: bool = False) -> None:
        self._authz = authorizer
        self._methods = frozenset(methods)
        self.allow_unsigned = allow_unsigned
        self.counters: Counter[str] = Counter()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # the stubs type handlers for the sync server; under grpc.aio their behaviours are coroutines
        handler: Any = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method not in self._methods:
            return handler
        if handler.unary_unary is not None:
            inner: Handler = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = MEMBER_CALLER.set(await self._check(method, request, context))
                try:
                    return await inner(request, context)
                finally:
                    MEMBER_CALLER.reset(token)

            return grpc.unary_unary_rpc_method_handler(
                unary, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_stream is not None:
            inner_stream: Any = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                token = MEMBER_CALLER.set(await self._check(method, request, context))
                try:
                    async for item in inner_stream(request, context):
                        yield item
                finally:
                    MEMBER_CALLER.reset(token)

            return grpc.unary_stream_rpc_method_handler(
                stream, request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        log.error("signed-request interceptor cannot protect streaming-request method %s; refusing it", method)
        return grpc.unary_unary_rpc_method_handler(self._refuse_stream)

    def _check_connection(self, signer: str, tls: Any) -> None:
        """Identity check: a member's key signs only on its own connection (its certificate binds the key)."""
        if self._authz.is_operator(signer):
            return
        peer = tls_peer(tls)
        if peer is None or peer.node_id != signer:
            raise Unauthorized("not_own_connection", f"member {signer} signed, but the caller's certificate "
                               f"binds {peer.node_id if peer is not None else 'no node key'}")

    async def _refuse_stream(self, _request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, "streaming requests cannot be signed")

    async def _check(self, method: str, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        """Authorize the call (abort when not): the signing member's node id, None for an operator."""
        try:
            metadata: Any = context.invocation_metadata()
            signed = any(k == AUTH_METADATA_KEY for k, _ in metadata or ())
            if self.allow_unsigned and not signed:
                self.counters["requests_unsigned_allowed"] += 1
                return None
            tls: Any = context.auth_context()
            if signed and not over_tls(tls):
                raise Unauthorized("plaintext", "signed requests are accepted only over TLS (a plaintext "
                                   "signature can be read and replayed on the way)")
            signer = self._authz.check_metadata(method, request, metadata)
            self._check_connection(signer, tls)
        except Unauthorized as exc:
            self.counters[f"requests_{exc.reason}"] += 1
            log.warning("%s from %s refused: %s", method, context.peer(), exc)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"not authorized: {exc}")
            raise AssertionError("unreachable") from exc  # abort raises
        self.counters["requests_authorized"] += 1
        log.debug("%s from %s authorized for %s", method, context.peer(), signer)
        return None if self._authz.is_operator(signer) else signer


class RequestSigner(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    """Sign calls to ``methods`` with ``key`` (``meshnode-auth-bin`` metadata), on a client channel.

    A node puts one on its peer channels, so that its fan-out of a fleet query (``local_only`` requests to
    each member) carries its own signature, which peers accept because the signer is a member calling on its
    own connection. The audience is the node id the call's ``meshnode-audience`` metadata names
    (``meshnode.mesh.audience_metadata``); a call without one goes unsigned.
    """

    def __init__(self, key: NodeKey, methods: Iterable[str]) -> None:
        self._key = key
        self._methods = frozenset(methods)

    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        raw: str | bytes = client_call_details.method
        method = raw.decode() if isinstance(raw, bytes) else raw
        md = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        audience = md.get(AUDIENCE_METADATA_KEY)
        if method in self._methods and isinstance(audience, str):
            for k, v in auth_metadata(self._key, method, request, audience):
                md.add(k, v)
            client_call_details = grpc.aio.ClientCallDetails(
                client_call_details.method, client_call_details.timeout, md, client_call_details.credentials,
                client_call_details.wait_for_ready)
        return await continuation(client_call_details, request)
