"""Two delegates on one membership: the digest exchange and the site hierarchy share a site pool.

A site pool carries the members' digest announcements (``DigestExchange``) and the site's aggregate
announcements and pushes (``meshnode.mesh._sites``). Both ride the delegate's user channel; what is the
hierarchy's starts with one ``0x00`` byte (``SITE_TAG``), which no protobuf message starts with (field
number 0 does not exist), so the digest exchange's bytes are unchanged and a flat mesh's wire is the same
with or without sites. Pushed and pulled state (``user_state``) is the exchange's state alone when the
hierarchy has none, else ``SITE_TAG``, the hierarchy's state's length (4 bytes, big-endian), its state,
then the exchange's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Final

from meshnode._exceptions import PeerError

if TYPE_CHECKING:
    from meshnode.mesh._state import Delegate

log = logging.getLogger(__name__)

SITE_TAG: Final = b"\x00"
"""The first byte of everything the site hierarchy sends through a shared pool."""


def split_state(payload: bytes) -> tuple[bytes, bytes]:
    """``(site_state, exchange_state)`` of a combined ``user_state``.

    Raises:
        PeerError: the site part's length runs past the payload.
    """
    if not payload.startswith(SITE_TAG):
        return b"", payload
    if len(payload) < 5:
        raise PeerError("site state without its length")
    n = int.from_bytes(payload[1:5], "big")
    if 5 + n > len(payload):
        raise PeerError(f"site state of {n} bytes in a payload of {len(payload)}")
    return payload[5:5 + n], payload[5 + n:]


def join_state(site: bytes, exchange: bytes) -> bytes:
    """The combined ``user_state`` (``split_state`` reverses it)."""
    if not site:
        return exchange
    return SITE_TAG + len(site).to_bytes(4, "big") + site + exchange


class DelegateMux:
    """The site pool's delegate: ``exchange`` gets untagged payloads, ``site`` those tagged ``SITE_TAG``.

    Args:
        exchange: the digest exchange.
        site: the hierarchy's site-pool delegate; its requests must be sent tagged (``SiteNode`` does so
            for a pool whose ``tag`` is ``SITE_TAG``).
    """

    def __init__(self, exchange: Delegate, site: Delegate) -> None:
        self.exchange = exchange
        self.site = site
        self.malformed = 0

    def notify_msg(self, source: str, source_addr: str, payload: bytes) -> None:
        if payload.startswith(SITE_TAG):
            self.site.notify_msg(source, source_addr, payload[1:])
        else:
            self.exchange.notify_msg(source, source_addr, payload)

    def get_broadcasts(self, overhead: int, limit: int) -> list[bytes]:
        out = self.exchange.get_broadcasts(overhead, limit)
        used = sum(len(b) + overhead for b in out)
        out.extend(SITE_TAG + b for b in self.site.get_broadcasts(overhead + 1, limit - used))
        return out

    def pending_broadcasts(self) -> int:
        return sum(int(getattr(d, "pending_broadcasts", lambda: 0)()) for d in (self.exchange, self.site))

    def local_state(self, join: bool, remote: bytes | None) -> bytes:
        site_remote: bytes | None = None
        ex_remote: bytes | None = remote
        if remote is not None:
            try:
                site_remote, ex_remote = split_state(remote)
            except PeerError:
                site_remote, ex_remote = None, None
        return join_state(self.site.local_state(join, site_remote), self.exchange.local_state(join, ex_remote))

    def merge_remote_state(self, payload: bytes, join: bool, source_addr: str) -> None:
        try:
            site, ex = split_state(payload)
        except PeerError as exc:
            self.malformed += 1
            log.warning("pushed state from %s dropped: %s", source_addr, exc)
            return
        if site:
            self.site.merge_remote_state(site, join, source_addr)
        if ex:
            self.exchange.merge_remote_state(ex, join, source_addr)

    def handle_request(self, source_addr: str, payload: bytes) -> bytes:
        if payload.startswith(SITE_TAG):
            return self.site.handle_request(source_addr, payload[1:])
        return self.exchange.handle_request(source_addr, payload)
