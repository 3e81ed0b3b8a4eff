"""What ``Status`` reports, as plain data the node fills in."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol


@dataclass(slots=True)
class ExporterStatus:
    """One exporter's state (``meshnode.v1.ExporterStatus``)."""

    name: str
    target: str
    counters: dict[str, int] = field(default_factory=dict)
    last_error: str = ""


@dataclass(slots=True)
class NodeStatus:
    """A snapshot of the node (``meshnode.v1.StatusResponse``)."""

    node_id: str = ""
    """The mesh node id (key fingerprint) when the mesh runs, else the host name."""
    version: str = ""
    uptime_s: float = 0.0
    sensor_mode: str = ""
    sensor_reason: str = ""
    fidelity: str = ""
    scope: str = "/"
    export_period_s: float = 0.0
    completeness: dict[str, int] = field(default_factory=dict)
    store_bytes: int = 0
    store_rows: int = 0
    data_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    listen: str = ""
    periods: int = 0
    insecure: bool = True
    """True when the API and the mesh run without TLS (``meshnode run --insecure``)."""
    active_flows: int = 0
    host: str = ""
    """The host name (``NodeConfig.node_id``)."""
    exporters: list[ExporterStatus] = field(default_factory=list)


class StatusProvider(Protocol):
    """Returns the node's current status without blocking: the servicer calls it on the event loop, so it
    answers from what the node already holds (the store's counts as of the last period close)."""

    def __call__(self) -> NodeStatus: ...
