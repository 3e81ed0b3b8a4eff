"""Export periods and rollups: pure functions and one small stateful builder over columnar flow batches."""

from meshnode.sensor._resolve import service_name  # one resolver for the sensor and the summaries
from meshnode.summary._period import (
    ROLLUP_KEYS,
    Delta,
    PeriodBuilder,
    PeriodFlows,
    PeriodSummary,
    Rollup,
    destination_key,
    format_destination,
    format_process,
    percentile,
    process_key,
    rollup,
    with_service,
    with_services,
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
    "ROLLUP_KEYS",
    "Delta",
    "PeriodBuilder",
    "PeriodFlows",
    "PeriodSpan",
    "PeriodSummary",
    "Rollup",
    "WindowRollup",
    "WindowRollups",
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
    "with_services",
]
