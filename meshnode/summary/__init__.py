"""Export periods and rollups: pure functions and one small stateful builder over FlowRecords."""

from meshnode.sensor._resolve import service_name  # one resolver for the sensor and the summaries
from meshnode.summary._period import (
    Delta,
    PeriodBuilder,
    PeriodSummary,
    Rollup,
    cgroup_key,
    destination_key,
    format_destination,
    format_process,
    percentile,
    process_key,
    rollup,
    with_service,
)

__all__ = [
    "Delta",
    "PeriodBuilder",
    "PeriodSummary",
    "Rollup",
    "cgroup_key",
    "destination_key",
    "format_destination",
    "format_process",
    "percentile",
    "process_key",
    "rollup",
    "service_name",
    "with_service",
]
