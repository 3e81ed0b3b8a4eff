"""Exporters of a node's flows to outside systems (ClickHouse), and the on-disk spool they queue in."""

from meshnode.export._clickhouse import (
    COLUMNS,
    ClickHouseExporter,
    ClickHouseTarget,
    create_table_sql,
    parse_clickhouse_url,
)
from meshnode.export._metrics import register_exporter
from meshnode.export._spool import Spool, SpoolEntry

__all__ = [
    "COLUMNS",
    "ClickHouseExporter",
    "ClickHouseTarget",
    "Spool",
    "SpoolEntry",
    "create_table_sql",
    "parse_clickhouse_url",
    "register_exporter",
]
