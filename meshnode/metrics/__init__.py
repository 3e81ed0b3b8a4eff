"""Prometheus metrics of a node (prometheus-client), served on a port of their own."""

from meshnode.metrics._metrics import MetricsServer, NodeMetrics

__all__ = ["MetricsServer", "NodeMetrics"]
