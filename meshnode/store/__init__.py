"""The node's local history: embedded SQLite (WAL), one transaction per export period, bounded retention.

Imports nothing of meshnode above the model.
"""

from meshnode.store._dns import DEFAULT_DNS_LIMIT, DnsQuery
from meshnode.store._schema import SCHEMA_VERSION
from meshnode.store._store import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_BYTES,
    MAX_EVENTS,
    MAX_HOUR_BASELINES,
    ROW_FIELDS,
    TABLE_FINAL,
    TABLE_INTERIM,
    FlowQuery,
    PeriodRow,
    Retention,
    RowFilter,
    Store,
    StoredEvent,
    StoredFlow,
    StoredFlows,
    StoreStats,
    StoreTimeout,
)

__all__ = [
    "DEFAULT_DNS_LIMIT",
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_BYTES",
    "MAX_EVENTS",
    "MAX_HOUR_BASELINES",
    "ROW_FIELDS",
    "SCHEMA_VERSION",
    "TABLE_FINAL",
    "TABLE_INTERIM",
    "DnsQuery",
    "FlowQuery",
    "PeriodRow",
    "Retention",
    "RowFilter",
    "Store",
    "StoreStats",
    "StoreTimeout",
    "StoredEvent",
    "StoredFlow",
    "StoredFlows",
]
