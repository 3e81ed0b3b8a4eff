"""The narrow transport the membership state machine talks through (memberlist ``transport.go``).

Three operations: a best-effort packet, one reliable request/response exchange, and close. Addresses are
opaque strings (``host:port`` for gRPC). Everything is callback-based and non-blocking so that the state
machine stays synchronous and deterministic; a transport delivers what arrives through the handlers that
the membership installs with ``set_handlers``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

PacketHandler = Callable[[str, bytes], None]
"""``(from_addr, payload)``: a packet arrived."""

StreamHandler = Callable[[str, bytes], bytes]
"""``(from_addr, request) -> response``: answer a reliable request (must not block)."""

ReplyCallback = Callable[[bytes | None, str], None]
"""``(response, error)``: ``response`` is None on failure, and ``error`` then says why."""


class Transport(Protocol):
    """What the mesh needs from the network."""

    @property
    def address(self) -> str:
        """This node's address, as peers reach it."""

    def set_handlers(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        """Install the receivers; called once by the membership before anything is sent."""

    def send_packet(self, addr: str, payload: bytes) -> None:
        """Send ``payload`` to ``addr``, best effort: it may be lost, and nobody says so."""

    def request(self, addr: str, payload: bytes, timeout: float, on_reply: ReplyCallback) -> None:
        """Send a reliable request; ``on_reply`` runs exactly once, with the answer or an error."""

    def close(self) -> None:
        """Stop sending and receiving; later sends are dropped."""
