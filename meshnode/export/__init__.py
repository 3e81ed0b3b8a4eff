"""Exporters of a node's flows to systems users already run: ClickHouse (with the on-disk spool it queues in)
and OTLP receivers (flow metrics and ended flows as log records)."""

from meshnode.export._clickhouse import (
    COLUMNS,
    ClickHouseExporter,
    ClickHouseTarget,
    create_table_sql,
    parse_clickhouse_url,
)
from meshnode.export._metrics import register_exporter
from meshnode.export._otlp import FlowMetrics, OtlpCounters, OtlpExporter, encode_flow_logs, parse_otlp_url
from meshnode.export._spool import Spool, SpoolEntry

__all__ = [
    "COLUMNS",
    "ClickHouseExporter",
    "ClickHouseTarget",
    "FlowMetrics",
    "OtlpCounters",
    "OtlpExporter",
    "Spool",
    "SpoolEntry",
    "create_table_sql",
    "encode_flow_logs",
    "parse_clickhouse_url",
    "parse_otlp_url",
    "register_exporter",
]
