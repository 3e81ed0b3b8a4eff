"""An in-memory network for tests and simulations: per-link loss, partitions, latency, byte counts.

Driven by a ``ManualScheduler`` and a seeded ``random.Random``, so a simulation is repeatable. Packets
are lost per directed link with the link's loss probability; reliable requests are never lost but fail
(after their timeout) across a partition or to a closed endpoint, like TCP.
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshnode.mesh._clock import ManualScheduler
    from meshnode.mesh._transport import PacketHandler, ReplyCallback, StreamHandler


class MemoryNetwork:
    """Endpoints that talk through the scheduler.

    Args:
        scheduler: the virtual clock.
        rng: the randomness of loss and jitter.
        latency: one-way delay in seconds.
        jitter: extra uniform random delay in ``[0, jitter)`` seconds.
        loss: the default packet loss probability of every link.
    """

    def __init__(
        self,
        scheduler: ManualScheduler,
        rng: random.Random | None = None,
        latency: float = 0.001,
        jitter: float = 0.0,
        loss: float = 0.0,
    ) -> None:
        self.scheduler = scheduler
        self.rng = rng or random.Random(0)
        self.latency = latency
        self.jitter = jitter
        self.loss = loss
        self._links: dict[tuple[str, str], float] = {}
        self._link_latency: dict[tuple[str, str], float] = {}
        self._group: dict[str, int] = {}
        self._endpoints: dict[str, MemoryTransport] = {}
        self.bytes_sent: defaultdict[str, int] = defaultdict(int)
        self.packets_sent: defaultdict[str, int] = defaultdict(int)
        self.stream_bytes_sent: defaultdict[str, int] = defaultdict(int)
        self.packets_dropped = 0

    def endpoint(self, addr: str) -> MemoryTransport:
        """A new endpoint at ``addr`` (replacing a closed one)."""
        ep = MemoryTransport(self, addr)
        self._endpoints[addr] = ep
        return ep

    def set_loss(self, src: str, dst: str, loss: float, both_ways: bool = True) -> None:
        """Packet loss probability of the link ``src -> dst`` (and back)."""
        self._links[(src, dst)] = loss
        if both_ways:
            self._links[(dst, src)] = loss

    def set_latency(self, src: str, dst: str, latency: float, both_ways: bool = True) -> None:
        """One-way delay of the link ``src -> dst`` (and back)."""
        self._link_latency[(src, dst)] = latency
        if both_ways:
            self._link_latency[(dst, src)] = latency

    def partition(self, *groups: Iterable[str]) -> None:
        """Split the network: addresses in different groups cannot reach each other.

        Addresses in no group form one more group together.
        """
        self._group = {}
        for i, group in enumerate(groups, start=1):
            for addr in group:
                self._group[addr] = i

    def heal(self) -> None:
        """Remove every partition."""
        self._group = {}

    def reachable(self, src: str, dst: str) -> bool:
        """True when no partition separates ``src`` and ``dst`` and ``dst`` is open."""
        ep = self._endpoints.get(dst)
        if ep is None or ep.closed:
            return False
        return self._group.get(src, 0) == self._group.get(dst, 0)

    def _delay(self, src: str, dst: str) -> float:
        base = self._link_latency.get((src, dst), self.latency)
        return base + (self.rng.random() * self.jitter if self.jitter else 0.0)

    def _send_packet(self, src: str, dst: str, payload: bytes) -> None:
        self.bytes_sent[src] += len(payload)
        self.packets_sent[src] += 1
        loss = self._links.get((src, dst), self.loss)
        if (loss > 0.0 and self.rng.random() < loss) or not self.reachable(src, dst):
            self.packets_dropped += 1
            return

        def deliver() -> None:
            ep = self._endpoints.get(dst)
            if ep is not None and not ep.closed and self.reachable(src, dst):
                ep.on_packet(src, payload)

        self.scheduler.call_later(self._delay(src, dst), deliver)

    def _request(self, src: str, dst: str, payload: bytes, timeout: float, on_reply: ReplyCallback) -> None:
        self.bytes_sent[src] += len(payload)
        self.stream_bytes_sent[src] += len(payload)
        done = False

        def fail(reason: str) -> None:
            nonlocal done
            if not done:
                done = True
                on_reply(None, reason)

        def arrive() -> None:
            ep = self._endpoints.get(dst)
            if ep is None or ep.closed or not self.reachable(src, dst):
                return
            try:
                answer = ep.on_stream(src, payload)
            except Exception as exc:  # the far end refused the request: an error for this request
                reason = f"remote error: {exc}"
                self.scheduler.call_later(self._delay(dst, src), lambda: fail(reason))
                return
            self.bytes_sent[dst] += len(answer)
            self.stream_bytes_sent[dst] += len(answer)

            def back() -> None:
                nonlocal done
                src_ep = self._endpoints.get(src)
                if done or src_ep is None or src_ep.closed or not self.reachable(dst, src):
                    return
                done = True
                on_reply(answer, "")

            self.scheduler.call_later(self._delay(dst, src), back)

        self.scheduler.call_later(self._delay(src, dst), arrive)
        self.scheduler.call_later(timeout, lambda: fail("DEADLINE_EXCEEDED"))


def _drop_packet(src: str, payload: bytes) -> None:
    pass


def _refuse_stream(src: str, payload: bytes) -> bytes:
    raise ConnectionRefusedError("no handler")


class MemoryTransport:
    """One endpoint of a ``MemoryNetwork``; implements ``Transport``."""

    def __init__(self, network: MemoryNetwork, addr: str) -> None:
        self._network = network
        self._addr = addr
        self.closed = False
        self.on_packet: PacketHandler = _drop_packet
        self.on_stream: StreamHandler = _refuse_stream

    @property
    def address(self) -> str:
        return self._addr

    def set_handlers(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        self.on_packet = on_packet
        self.on_stream = on_stream

    def send_packet(self, addr: str, payload: bytes) -> None:
        if not self.closed:
            self._network._send_packet(self._addr, addr, payload)

    def request(self, addr: str, payload: bytes, timeout: float, on_reply: ReplyCallback) -> None:
        if self.closed:
            self._network.scheduler.call_later(0.0, lambda: on_reply(None, "CLOSED"))
            return
        self._network._request(self._addr, addr, payload, timeout, on_reply)

    def close(self) -> None:
        self.closed = True
