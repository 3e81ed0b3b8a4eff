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
from meshnode.summary._timing import BUCKETS as HIST_BUCKETS
from meshnode.summary._timing import merge as merge_hist
from meshnode.summary._timing import quantile_us
from meshnode.summary._window import (
    PeriodSpan,
    WindowRollup,
    WindowRollups,
    merge_rollups,
    merge_window,
    weighted_median,
    weighted_quantile,
    weighted_quantiles,
)

__all__ = [
    "HIST_BUCKETS",
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
    "merge_hist",
    "merge_rollups",
    "merge_window",
    "percentile",
    "process_key",
    "quantile_us",
    "rollup",
    "service_name",
    "weighted_median",
    "weighted_quantile",
    "weighted_quantiles",
    "with_service",
    "with_services",
]
