"""The node's gRPC API: Observer (flows, summaries, health, events, status), health checking, reflection."""

from meshnode.api._filters import CompiledFilter, FilterError, Selector, compile_filter
from meshnode.api._live import EventRing, FlowFeed, Subscription
from meshnode.api._server import HEALTH_SERVICE, OBSERVER_SERVICE, ApiServer
from meshnode.api._servicer import (
    DEFAULT_FLOWS,
    MAX_FLOWS,
    ObserverServicer,
    decode_page_token,
    encode_page_token,
)
from meshnode.api._status import NodeStatus, StatusProvider

__all__ = [
    "DEFAULT_FLOWS",
    "HEALTH_SERVICE",
    "MAX_FLOWS",
    "OBSERVER_SERVICE",
    "ApiServer",
    "CompiledFilter",
    "EventRing",
    "FilterError",
    "FlowFeed",
    "NodeStatus",
    "ObserverServicer",
    "Selector",
    "StatusProvider",
    "Subscription",
    "compile_filter",
    "decode_page_token",
    "encode_page_token",
]
