"""Health (seed 004): useful-flow fractions and failure patterns, pure functions over FlowRecords."""

from meshnode.health._health import (
    ADDRESS_CHANGE_WINDOW_NS,
    MIN_RETRY_FAILURES,
    MIN_SCAN_PORTS,
    RETRY_COLUMNS,
    SCAN_COLUMNS,
    HealthRow,
    RetryPattern,
    ScanPattern,
    failures_after_address_change,
    failures_by_outcome,
    health_by,
    health_by_period,
    health_from_counts,
    host_health,
    retry_patterns,
    scan_patterns,
)

__all__ = [
    "ADDRESS_CHANGE_WINDOW_NS",
    "MIN_RETRY_FAILURES",
    "MIN_SCAN_PORTS",
    "RETRY_COLUMNS",
    "SCAN_COLUMNS",
    "HealthRow",
    "RetryPattern",
    "ScanPattern",
    "failures_after_address_change",
    "failures_by_outcome",
    "health_by",
    "health_by_period",
    "health_from_counts",
    "host_health",
    "retry_patterns",
    "scan_patterns",
]
