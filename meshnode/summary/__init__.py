"""Export periods and rollups: pure functions and one small stateful builder over FlowRecords."""

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
    service_name,
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
