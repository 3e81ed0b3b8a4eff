"""Watch the host's local addresses (seed 004: most failures come right after an address change).

No netlink: every ``interval`` seconds the watcher reads IPv6 addresses from /proc/net/if_inet6 and IPv4
ones from the LOCAL host routes in /proc/net/fib_trie, and reports the difference. Loopback is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)


def parse_if_inet6(text: str) -> set[str]:
    """IPv6 addresses from /proc/net/if_inet6 (32 hex digits first on each line)."""
    out = set()
    for line in text.splitlines():
        parts = line.split()
        if parts and len(parts[0]) == 32:
            addr = ipaddress.IPv6Address(int(parts[0], 16))
            if not addr.is_loopback:
                out.add(str(addr))
    return out


def parse_fib_trie(text: str) -> set[str]:
    """IPv4 addresses of LOCAL host routes (``|-- A.B.C.D`` followed by ``/32 host LOCAL``)."""
    out = set()
    last = ""
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("|--"):
            last = s[3:].strip()
        elif "/32 host LOCAL" in s and last and not last.startswith("127."):
            out.add(last)
    return out


def local_addresses(proc: Path = Path("/proc/net")) -> frozenset[str]:
    """The host's non-loopback addresses (in this network namespace)."""
    addrs: set[str] = set()
    with contextlib.suppress(OSError):
        addrs |= parse_if_inet6((proc / "if_inet6").read_text())
    with contextlib.suppress(OSError):
        addrs |= parse_fib_trie((proc / "fib_trie").read_text())
    return frozenset(addrs)


class AddressWatcher:
    """A node service calling ``on_change(time_ns, detail)`` when local addresses appear or go away."""

    name = "addresses"

    def __init__(
        self,
        on_change: Callable[[int, str], Awaitable[None]],
        *,
        interval: float = 2.0,
        read: Callable[[], frozenset[str]] = local_addresses,
    ) -> None:
        self.on_change = on_change
        self.interval = interval
        self.read = read
        self.current: frozenset[str] = frozenset()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Take the first reading and start polling."""
        self.current = self.read()
        self._task = asyncio.create_task(self._loop(), name="address-watcher")

    async def check(self) -> None:
        """Read once and report a change."""
        now = self.read()
        if now != self.current:
            added, removed = sorted(now - self.current), sorted(self.current - now)
            self.current = now
            detail = " ".join([*(f"+{a}" for a in added), *(f"-{r}" for r in removed)])
            log.info("local addresses changed: %s", detail)
            await self.on_change(time.time_ns(), detail)

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.check()
            except Exception:  # a bad read must not kill the node
                log.exception("address watcher")

    async def stop(self) -> None:
        """Stop polling."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
