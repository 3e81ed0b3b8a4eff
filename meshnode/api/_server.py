"""The node's gRPC server: Observer, ``grpc.health.v1`` and server reflection on one port.

With ``credentials`` (``meshnode.trust.server_credentials``: the fleet CA, client certificates required)
the port is a mutual-TLS port; without, it is plaintext (``meshnode run --insecure``, in-process tests), and
``secure`` says so for ``Status.insecure``. ``interceptors`` (e.g. the signed-request check on fleet queries)
wrap every service on the port, the mesh's included.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from meshnode._exceptions import ConfigError
from meshnode.api._servicer import ObserverServicer
from meshnode.v1 import observer_pb2, observer_pb2_grpc

log = logging.getLogger(__name__)

OBSERVER_SERVICE: Final = observer_pb2.DESCRIPTOR.services_by_name["Observer"].full_name
HEALTH_SERVICE: Final = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name


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
    ) -> None:
        self.listen = listen
        self.credentials = credentials
        """Server credentials for a TLS port; None serves plaintext. May be set until ``start``."""
        self.interceptors: list[grpc.aio.ServerInterceptor] = list(interceptors)  # type: ignore[type-arg]
        """Server interceptors, outermost first. May be added to until ``start``."""
        self.observer = observer
        self.grace_s = grace_s
        self.port = 0
        self.health = HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._registrars: list[tuple[Callable[[grpc.aio.Server], None], tuple[str, ...]]] = []

    def add_servicer(self, register: Callable[[grpc.aio.Server], None], *service_names: str) -> None:
        """Serve more services on this port (e.g. the mesh's): ``register(server)`` runs in ``start``
        before the server starts; ``service_names`` (full names) join reflection and health checking.
        Call before ``start``."""
        if self._server is not None:
            raise RuntimeError("add_servicer after start")
        self._registrars.append((register, tuple(service_names)))

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
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)], interceptors=self.interceptors or None)
        add_observer = cast(Callable[[Any, Any], None], observer_pb2_grpc.add_ObserverServicer_to_server)
        add_observer(self.observer, server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        extra: list[str] = []
        for register, names in self._registrars:
            register(server)
            extra.extend(names)
        reflection.enable_server_reflection(
            (OBSERVER_SERVICE, HEALTH_SERVICE, *extra, reflection.SERVICE_NAME), server
        )
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
