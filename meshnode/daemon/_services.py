"""The seam where optional node services plug into ``meshnode run``: today, the mesh.

``extra_services(node)`` returns services started after the built-in ones (gRPC API, metrics, address
watcher) and stopped before them. A service implements ``meshnode.daemon.Service``: ``name``,
``async start()``, ``async stop()``.

The mesh shares the node's gRPC port (``meshnode.v1.Mesh`` beside ``Observer``), signs each closed
period's summary with the node's Ed25519 key (``<data_dir>/node.key``, created on first start, mode 0600),
and joins the ``--join`` seeds. Its address for peers is the node's listen address; when that is a wildcard
(``0.0.0.0``), the local address that routes to the first seed (or the host name's address).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from typing import TYPE_CHECKING

from meshnode.daemon._addresses import local_addresses

if TYPE_CHECKING:
    from meshnode.daemon._node import Node, Service
    from meshnode.mesh import MeshService

log = logging.getLogger(__name__)


def extra_services(node: Node) -> list[Service]:
    """The mesh, on the node's own gRPC port."""
    return [MeshRunner(node)]


class MeshRunner:
    """Builds the mesh when the node's API is bound (its port is only known then) and runs it."""

    name = "mesh"

    def __init__(self, node: Node) -> None:
        from meshnode.mesh import MESH_SERVICE, MeshService, NodeKey, TaskPolicy

        cfg = node.config
        self._node = node
        key = NodeKey.load_or_create(cfg.data_dir / "node.key")
        labels = {"host": cfg.node_id, **cfg.labels}
        policy = TaskPolicy(enabled=cfg.active_tasks, deny=frozenset(cfg.task_deny))
        self.mesh: MeshService = MeshService(advertise=cfg.listen, key=key, labels=labels, seeds=list(cfg.join),
                                             export_period=cfg.export_period, task_policy=policy)
        node.api.add_servicer(self.mesh.register, MESH_SERVICE)
        node.record_listeners.append(self.mesh.on_period)
        self.mesh.addresses = published_addresses

    async def start(self) -> None:
        self.mesh.advertise = advertise_address(self._node.api.address, list(self._node.config.join))
        log.info("mesh: node %s advertising %s, joining %s", self.mesh.node_id, self.mesh.advertise,
                 ", ".join(self._node.config.join) or "nobody (first node)")
        await self.mesh.start()

    async def stop(self) -> None:
        await self.mesh.stop()


def published_addresses() -> list[str]:
    """This host's addresses for its digest (peers map flow ends to members by them): no link-local ones."""
    return sorted(a for a in local_addresses() if not ipaddress.ip_address(a).is_link_local)


def advertise_address(listen: str, seeds: list[str]) -> str:
    """The address peers should use for this node: ``listen`` unless its host is a wildcard."""
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    try:
        wildcard = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        wildcard = host in ("", "*")
    if not wildcard:
        return listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    local = ""
    for seed in seeds:
        seed_host = seed.rpartition(":")[0].strip("[]")
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((seed_host, 9))  # UDP connect sends nothing; it only picks the route
                local = s.getsockname()[0]
                break
        except OSError:
            continue
    if not local:
        try:
            local = socket.gethostbyname(socket.gethostname())
        except OSError:
            local = "127.0.0.1"
    return f"[{local}]:{port}" if ":" in local else f"{local}:{port}"
