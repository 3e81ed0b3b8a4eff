"""Errors of the trust package, placed in the hierarchy of ``meshnode._exceptions``.

    MeshnodeError
    ├── ConfigError
    │   └── TlsError        TLS material missing or unusable (names the file and the command that makes it)
    └── PeerError
        ├── BadClaim        an endpoint record from a peer that cannot be validated (logged and dropped)
        └── Unauthorized    a query or task not signed by a trusted, allowed key (maps to PERMISSION_DENIED)
"""

from __future__ import annotations

from meshnode._exceptions import ConfigError, PeerError


class TlsError(ConfigError):
    """TLS material is missing, unreadable or too widely readable; the message says how to fix it."""


class BadClaim(PeerError):
    """A peer's endpoint record is malformed (unknown protocol, bad port, time going backwards...)."""


class Unauthorized(PeerError):
    """A request failed authorization; ``reason`` is one of ``AUTH_REASONS`` (a counter name)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
