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
from meshnode.summary._window import (
    PeriodSpan,
    WindowRollup,
    WindowRollups,
    merge_rollups,
    merge_window,
    weighted_median,
)

__all__ = [
    "Delta",
    "PeriodBuilder",
    "PeriodSpan",
    "PeriodSummary",
    "Rollup",
    "WindowRollup",
    "WindowRollups",
    "cgroup_key",
    "destination_key",
    "format_destination",
    "format_process",
    "merge_rollups",
    "merge_window",
    "percentile",
    "process_key",
    "rollup",
    "service_name",
    "weighted_median",
    "with_service",
]
