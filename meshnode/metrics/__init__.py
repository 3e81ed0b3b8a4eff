"""Prometheus metrics of a node (prometheus-client), served on a port of their own."""

from meshnode.metrics._flows import OTHER, Dimension, FlowFamilies, default_dimensions
from meshnode.metrics._metrics import MetricsServer, NodeMetrics
from meshnode.metrics._state import TRUST_LISTED, MeshView, StateCollector, TrustView

__all__ = [
    "OTHER",
    "TRUST_LISTED",
    "Dimension",
    "FlowFamilies",
    "MeshView",
    "MetricsServer",
    "NodeMetrics",
    "StateCollector",
    "TrustView",
    "default_dimensions",
]
