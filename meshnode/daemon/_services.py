"""The seam where optional node services plug into ``meshnode run``.

``extra_services(node)`` returns services started after the built-in ones (gRPC API, metrics, address
watcher) and stopped before them. The mesh plugs in here: build its service from ``node.config.join``,
``node.config.labels`` and ``node.config.node_id``, read history through ``node.store`` (read-only
queries) and receive each closed period's ``PeriodSummary`` by appending to ``node.period_listeners``.
To serve on the node's gRPC port instead of a port of its own, call
``node.api.add_servicer(register, "meshnode.v1.Mesh")`` here (``register(server)`` adds the servicer
before the server starts; health checking and reflection then list the service).
A service implements ``meshnode.daemon.Service``: ``name``, ``async start()``, ``async stop()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshnode.daemon._node import Node, Service


def extra_services(node: Node) -> list[Service]:
    """Services beyond the built-in ones; none until the mesh hooks in (``--join`` is in node.config.join)."""
    return []
