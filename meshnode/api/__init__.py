"""The node's gRPC API: Observer (flows, summaries, health, events, status), health checking, reflection."""

from meshnode.api._executor import ApiExecutor
from meshnode.api._filters import CompiledFilter, FilterError, Selector, compile_filter
from meshnode.api._fleetlocal import StoreHistory
from meshnode.api._limits import MAX_TEXT, ApiLimits
from meshnode.api._live import EventRing, FlowFeed, Subscription
from meshnode.api._server import HEALTH_SERVICE, OBSERVER_SERVICE, ApiGuard, ApiServer
from meshnode.api._servicer import (
    DEFAULT_FLOWS,
    MAX_FLOWS,
    RESUME_METADATA,
    ObserverServicer,
    decode_page_token,
    encode_page_token,
)
from meshnode.api._status import ExporterStatus, NodeStatus, StatusProvider

__all__ = [
    "DEFAULT_FLOWS",
    "HEALTH_SERVICE",
    "MAX_FLOWS",
    "MAX_TEXT",
    "OBSERVER_SERVICE",
    "RESUME_METADATA",
    "ApiExecutor",
    "ApiGuard",
    "ApiLimits",
    "ApiServer",
    "CompiledFilter",
    "EventRing",
    "ExporterStatus",
    "FilterError",
    "FlowFeed",
    "NodeStatus",
    "ObserverServicer",
    "Selector",
    "StatusProvider",
    "StoreHistory",
    "Subscription",
    "compile_filter",
    "decode_page_token",
    "encode_page_token",
]
