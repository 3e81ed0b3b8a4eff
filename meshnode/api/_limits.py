"""How much of the node one client may hold, and for how long.

One table, so that the server's options, the servicers' checks and the documentation agree. A client that
asks for more is refused with a status that names the field or the limit (INVALID_ARGUMENT for a request
that is too large, RESOURCE_EXHAUSTED for one call too many), never queued without bound.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

MAX_FILTERS: Final = 64
"""Filters in one whitelist or blacklist."""
MAX_FILTER_VALUES: Final = 1_024
"""Values in one repeated field of a filter (``dst``, ``comm``, ``port``, ...)."""
MAX_REQUEST_VALUES: Final = 4_096
"""Values in all the filters of one request together."""
MAX_TEXT: Final = 4_096
"""Characters in one text value of a request (a cgroup path is at most PATH_MAX)."""
MAX_TIME_NS: Final = (1 << 63) - 1
"""The largest time a request may name (the store keeps signed 64-bit nanoseconds: year 2262)."""


@dataclass(frozen=True, slots=True)
class ApiLimits:
    """The API's limits (``meshnode run`` sets the two ages from ``api_stream_age``/``api_snapshot_age``).

    Attributes:
        workers: threads that run queries and stream reads (``ApiExecutor``), apart from sensor polls.
        max_concurrent_rpcs: calls the server runs at once; more are refused with RESOURCE_EXHAUSTED.
        streams_per_peer: concurrent streams (Flows, Events) one client may hold: one client certificate under
            mutual TLS, one client address in plaintext.
        default_deadline_s: the deadline of a unary call whose client set none.
        stream_age_s: a Flows stream ends after this long with ABORTED and a resume token.
        snapshot_age_s: a Flows stream's store snapshot (its read transaction and files) is given back after
            this long, even when the client does not read; the stream then ends as at ``stream_age_s``.
        keepalive_s: the server pings a connection with calls in flight after this long without data, and
            closes it when the ping is not answered within ``keepalive_timeout_s`` (a client that vanished).
        min_client_ping_s: clients pinging more often than this are sent GOAWAY (ping floods).
        max_idle_s: a connection without calls for this long is closed (clients reconnect on their own).
        stream_responses_per_s: responses all streams together send a second (``StreamPacer``) while more
            than one is open; more wait. One record a response, that is 2,000 records a second; batched
            responses carry up to 5,000 each. Each response costs the event loop ~75 us of gRPC's work (on
            the 2-core CI machine), so 2,000 a second take ~15 % of its time (5,000 took ~40 %, and doubled
            Status's median under sixteen one-record streams).
        stream_burst: responses sent at once before the rate applies.
    """

    workers: int = 4
    max_concurrent_rpcs: int = 256
    streams_per_peer: int = 16
    default_deadline_s: float = 60.0
    stream_age_s: float = 600.0
    snapshot_age_s: float = 30.0
    keepalive_s: float = 60.0
    keepalive_timeout_s: float = 20.0
    min_client_ping_s: float = 10.0
    max_idle_s: float = 600.0
    stream_responses_per_s: float = 2_000.0
    stream_burst: int = 1_000

    def server_options(self) -> list[tuple[str, int]]:
        """gRPC core channel arguments for the server."""
        return [
            ("grpc.keepalive_time_ms", int(self.keepalive_s * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.keepalive_timeout_s * 1000)),
            ("grpc.keepalive_permit_without_calls", 0),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", int(self.min_client_ping_s * 1000)),
            ("grpc.http2.max_ping_strikes", 2),
            ("grpc.max_connection_idle_ms", int(self.max_idle_s * 1000)),
        ]
