"""A node's security and mesh wiring on a real grpc.aio server on 127.0.0.1, with or without mutual TLS.

``node(cfg)`` wires what ``meshnode run`` wires (``NodeSecurity.from_config`` + ``apply`` on the API's
interceptors, the mesh on that server, its peer channels with the node's certificate and ``RequestSigner``),
without a sensor. ``Pki`` issues certificates with ``meshnode.trust.issue`` into a temporary CA.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import grpc

from meshnode.daemon import NodeConfig
from meshnode.daemon._security import SIGNED_METHODS, NodeSecurity, node_key_path
from meshnode.mesh import MeshService, NodeKey
from meshnode.mesh._grpc_transport import GrpcTransport
from meshnode.trust import channel_credentials, init_ca, issue
from meshnode.trust._service import RequestSigner


@dataclass
class Pki:
    """A fleet CA in ``root / "ca"``; each issued name gets a directory of its own (``--out``)."""

    root: Path

    def __post_init__(self) -> None:
        init_ca(self.root / "ca", "test")

    def node(self, name: str, node_key: str | None = None) -> Path:
        """A node's TLS directory: ca.crt, NAME.crt/.key binding ``node_key`` (default: a new NAME.node.key)."""
        out = self.root / name
        issue(self.root / "ca", name, ips=["127.0.0.1"], out_dir=out, node_key=node_key)
        return out

    def client(self, name: str) -> Path:
        """A client certificate's directory (meshctl's: client authentication only)."""
        out = self.root / name
        issue(self.root / "ca", name, client_only=True, out_dir=out)
        return out

    def channel(self, addr: str, tls_dir: Path) -> grpc.aio.Channel:
        """A channel to ``addr`` presenting the one certificate in ``tls_dir``."""
        return grpc.aio.secure_channel(addr, channel_credentials(tls_dir, tls_dir.name))


@asynccontextmanager
async def node(cfg: NodeConfig, key: NodeKey | None = None, seeds: tuple[str, ...] = (),
               before_start: Callable[[MeshService], None] | None = None,
               ) -> AsyncIterator[tuple[str, MeshService]]:
    """A node's API server and mesh as ``meshnode run`` secures them; yields its address and mesh.

    ``key`` defaults to the node's key file (``node_key_path``: the one its certificate binds under TLS);
    ``before_start`` runs on the mesh before it starts (attach trust, ...).
    """
    security = NodeSecurity.from_config(cfg)
    mesh = MeshService(advertise="127.0.0.1:0", key=key or NodeKey.load_or_create(node_key_path(cfg)),
                       export_period=0, seeds=list(seeds), rejoin_interval=0)
    fake = SimpleNamespace(api=SimpleNamespace(credentials=None, interceptors=[]), config=cfg)
    security.apply(fake, mesh)  # type: ignore[arg-type]
    server = grpc.aio.server(interceptors=fake.api.interceptors)
    mesh.register(server)
    if security.server is not None:
        port = server.add_secure_port("127.0.0.1:0", security.server)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    mesh.advertise = f"127.0.0.1:{port}"
    signer = [RequestSigner(mesh.key, SIGNED_METHODS)] if security.channel is not None else []
    mesh.transport = GrpcTransport(mesh.advertise, packet_timeout=mesh.transport.packet_timeout,
                                   credentials=security.channel, interceptors=signer)  # type: ignore[arg-type]
    if before_start is not None:
        before_start(mesh)
    await mesh.start()
    try:
        yield mesh.advertise, mesh
    finally:
        await mesh.stop(leave=False)
        await server.stop(0)
