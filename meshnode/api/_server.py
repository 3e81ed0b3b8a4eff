"""The node's gRPC server: Observer, ``grpc.health.v1`` and server reflection on one port.

With ``credentials`` (``meshnode.trust.server_credentials``: the fleet CA, client certificates required)
the port is a mutual-TLS port; without, it is plaintext (``meshnode run --insecure``, in-process tests), and
``secure`` says so for ``Status.insecure``. ``interceptors`` (e.g. the signed-request check on fleet queries)
wrap every service on the port, the mesh's included.

The port is bounded as ``ApiLimits`` says: at most ``max_concurrent_rpcs`` calls at once (gRPC refuses more
with RESOURCE_EXHAUSTED), keepalive enforced both ways (vanished clients are found, ping floods are sent
GOAWAY), idle connections closed. ``ApiGuard``, the outermost interceptor, caps the streams one client
address holds, gives unary calls of the guarded services (Observer, and those added with ``guarded=True``)
the server's default deadline when the client set none, and turns an unexpected exception in them into
INTERNAL (logged with its traceback) rather than gRPC's UNKNOWN.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Final, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer

from meshnode._exceptions import ConfigError
from meshnode.api._limits import ApiLimits
from meshnode.api._reflection import enable_reflection
from meshnode.api._servicer import ObserverServicer
from meshnode.v1 import observer_pb2, observer_pb2_grpc

log = logging.getLogger(__name__)

OBSERVER_SERVICE: Final = observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name
HEALTH_SERVICE: Final = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
LOG_EVERY_S: Final = 60.0
"""A client's refusals are logged at most this often (each is counted)."""


def peer_host(peer: str) -> str:
    """The client address of a gRPC peer string (``ipv4:10.0.0.1:5000`` -> ``ipv4:10.0.0.1``)."""
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        return f"{kind}:{rest.rpartition(':')[0]}"
    return peer


def stream_holder(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """Who a stream counts against: under mutual TLS the client's certificate (``cert:`` and the start of the
    SHA-256 of its PEM), so that one certificate cannot take more slots by calling from more addresses and
    clients behind one NAT address do not share one cap; in plaintext the client's address."""
    pem = next(iter(context.auth_context().get("x509_pem_cert") or ()), None)
    if pem:
        return "cert:" + hashlib.sha256(bytes(pem)).hexdigest()[:16]
    return peer_host(context.peer())


class ApiGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Streams per client (``stream_holder``: certificate or address; every server-streaming method on the port)
    and, for the unary methods of ``services`` (full names), a default deadline and INTERNAL for unexpected
    errors.

    ``streams`` holds the open streams per client; ``counters`` the refusals by reason.
    """

    def __init__(self, limits: ApiLimits, services: Iterable[str] = ()) -> None:
        self.limits = limits
        self.services: set[str] = set(services)
        self.streams: Counter[str] = Counter()
        self.counters: Counter[str] = Counter()
        self._logged: dict[str, float] = {}

    def _guarded(self, method: str) -> bool:
        return method.rpartition("/")[0].lstrip("/") in self.services

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        # the stubs type handlers for the sync server; under grpc.aio their behaviours are coroutines
        handler: Any = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None:
            return handler
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._stream(method, handler.unary_stream), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        if handler.unary_unary is not None and self._guarded(method):
            return grpc.unary_unary_rpc_method_handler(
                self._unary(method, handler.unary_unary), request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer)
        return handler

    def _stream(self, method: str, inner: Any) -> Callable[[Any, Any], Any]:
        guarded = self._guarded(method)

        async def stream(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            peer = stream_holder(context)
            cap = self.limits.streams_per_peer
            if self.streams[peer] >= cap:
                self.counters["streams_per_peer"] += 1
                self._log_refusal(peer, "%s from %s refused: it holds %d streams already", method, peer, cap)
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                     f"streams per peer: {peer} holds the maximum of {cap} open streams; "
                                     "close one first")
            self.streams[peer] += 1
            try:
                async for item in inner(request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                if not guarded:
                    raise
                await self._internal(method, exc, context)
            finally:
                self.streams[peer] -= 1
                if self.streams[peer] <= 0:
                    del self.streams[peer]

        return stream

    def _unary(self, method: str, inner: Any) -> Callable[[Any, Any], Awaitable[Any]]:
        async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            default = self.limits.default_deadline_s if context.time_remaining() is None else None
            try:
                async with asyncio.timeout(default) as scope:
                    return await inner(request, context)
            except grpc.aio.AbortError:
                raise
            except TimeoutError as exc:
                if not scope.expired():
                    await self._internal(method, exc, context)
                self.counters["default_deadline"] += 1
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"the call ran past the server's default deadline of {default:g} s "
                                    "(the client set none)")
            except Exception as exc:
                await self._internal(method, exc, context)

        return unary

    def _log_refusal(self, peer: str, msg: str, *args: object) -> None:
        """Log a refusal, at most once a minute per client address (a flood of refusals is counted)."""
        now = time.monotonic()
        if now - self._logged.get(peer, -LOG_EVERY_S) < LOG_EVERY_S:
            return
        if len(self._logged) > 1_024:
            self._logged.clear()
        self._logged[peer] = now
        log.warning(msg + " (%d refusals in all)", *args, self.counters["streams_per_peer"])

    async def _internal(self, method: str, exc: Exception, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        if type(exc).__module__.startswith("grpc") or context.cancelled():
            raise exc  # gRPC's own (the client went away while the status was sent): not the servicer's
        self.counters["internal_errors"] += 1
        log.error("%s from %s failed", method, context.peer(), exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"[:500])


class ApiServer:
    """A node service (``start``/``stop``): the Observer API on ``listen`` (``HOST:PORT``, 0 = any port)."""

    name = "grpc"

    def __init__(
        self,
        listen: str,
        observer: ObserverServicer,
        *,
        grace_s: float = 2.0,
        credentials: grpc.ServerCredentials | None = None,
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),  # type: ignore[type-arg]
        limits: ApiLimits | None = None,
    ) -> None:
        self.listen = listen
        self.credentials = credentials
        """Server credentials for a TLS port; None serves plaintext. May be set until ``start``."""
        self.interceptors: list[grpc.aio.ServerInterceptor] = list(interceptors)  # type: ignore[type-arg]
        """Server interceptors, outermost first. May be added to until ``start``."""
        self.observer = observer
        self.limits = limits or observer.limits
        self.executor = observer.executor
        """The API's worker threads (queries, stream reads, analyses); other servicers on the port share them."""
        self.guard = ApiGuard(self.limits, (OBSERVER_SERVICE,))
        self.grace_s = grace_s
        self.port = 0
        self.health = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._registrars: list[tuple[Callable[[grpc.aio.Server], None], tuple[str, ...]]] = []

    def add_servicer(
        self, register: Callable[[grpc.aio.Server], None], *service_names: str, guarded: bool = False
    ) -> None:
        """Serve more services on this port (e.g. the mesh's): ``register(server)`` runs in ``start``
        before the server starts; ``service_names`` (full names) join reflection and health checking, and
        with ``guarded`` get the default deadline and INTERNAL for unexpected errors (``ApiGuard``).
        Call before ``start``."""
        if self._server is not None:
            raise RuntimeError("add_servicer after start")
        self._registrars.append((register, tuple(service_names)))
        if guarded:
            self.guard.services.update(service_names)

    @property
    def secure(self) -> bool:
        """True when the port is (or will be) a TLS port."""
        return self.credentials is not None

    @property
    def address(self) -> str:
        """The bound ``HOST:PORT`` (after ``start``)."""
        host = self.listen.rsplit(":", 1)[0]
        return f"{host}:{self.port}"

    async def start(self) -> None:
        """Bind and serve; raises ``ConfigError`` when the address cannot be bound."""
        server = grpc.aio.server(
            options=[("grpc.so_reuseport", 0), *self.limits.server_options()],
            interceptors=[self.guard, *self.interceptors],
            maximum_concurrent_rpcs=self.limits.max_concurrent_rpcs,
        )
        add_observer = cast(Callable[[Any, Any], None], observer_pb2_grpc.add_ObserverServicer_to_server)
        add_observer(self.observer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        extra: list[str] = []
        for register, names in self._registrars:
            register(server)
            extra.extend(names)
        enable_reflection((OBSERVER_SERVICE, HEALTH_SERVICE, *extra), server)
        try:
            if self.credentials is not None:
                port = server.add_secure_port(self.listen, self.credentials)
            else:
                port = server.add_insecure_port(self.listen)
        except RuntimeError as exc:
            raise ConfigError(f"listen: cannot bind {self.listen}: {exc}") from exc
        if port == 0:
            raise ConfigError(f"listen: cannot bind {self.listen} (address in use or not local?)")
        self.port = port
        await server.start()
        for service in ("", OBSERVER_SERVICE, *extra):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self._server = server
        log.debug("gRPC API on %s (%s)", self.address, "mutual TLS" if self.secure else "plaintext")

    async def stop(self) -> None:
        """Report NOT_SERVING, then stop with a grace period for calls in flight."""
        if self._server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self._server.stop(self.grace_s)
        self._server = None
        self.observer.executor.close()
        self.observer.status_executor.close()
        self.observer.close()
