"""The mesh transport over gRPC (grpc.aio): the ``Transport`` interface, and the one retry policy.

A packet is a unary ``Mesh.Packet`` call with a short deadline and no retry: best effort, as SWIM wants.
A reliable request is a unary ``Mesh.Stream`` call, retried on transient codes. Both run as tasks on the
event loop, so the state machine's calls return at once; answers come back through callbacks on the
same loop, so the state machine is only ever touched from one thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Final, TypeVar

import grpc
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, stop_after_delay, wait_exponential_jitter

from meshnode.v1 import mesh_pb2, mesh_pb2_grpc

if TYPE_CHECKING:
    from meshnode.mesh._transport import PacketHandler, ReplyCallback, StreamHandler

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRYABLE_CODES: Final = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED,
                                    grpc.StatusCode.ABORTED})
"""Codes worth another attempt: the peer may answer in a moment. Everything else is final."""


def _retryable(exc: BaseException) -> bool:
    return isinstance(exc, grpc.aio.AioRpcError) and exc.code() in RETRYABLE_CODES


async def with_retries(call: Callable[[], Awaitable[T]], *, attempts: int = 3, budget: float = 5.0) -> T:
    """Run ``call`` until it succeeds, fails with a non-retryable code, or the attempts or time run out.

    The one place meshnode retries a mesh RPC (exponential backoff with jitter, 50 ms to 1 s).
    """
    retrying = AsyncRetrying(
        retry=retry_if_exception(_retryable),
        stop=stop_after_attempt(attempts) | stop_after_delay(budget),
        wait=wait_exponential_jitter(multiplier=0.05, max=1.0, jitter=0.05),
        reraise=True,
    )
    async for attempt in retrying:
        with attempt:
            return await call()
    raise AssertionError("unreachable: tenacity reraises")  # pragma: no cover


MAX_POOL: Final = 16
"""The longest pool name on the wire (``PacketRequest.pool``, ``StreamRequest.pool``)."""


def _drop_packet(src: str, payload: bytes) -> None:
    pass


def _refuse_stream(src: str, payload: bytes) -> bytes:
    raise ConnectionRefusedError("mesh not started")


class GrpcTransport:
    """``Transport`` over grpc.aio: outgoing calls here, incoming ones through ``MeshServicer``.

    Args:
        address: this node's advertised ``host:port`` (where peers reach its gRPC server).
        packet_timeout: the deadline of a packet call.
        max_channels: channels kept open to peers (least recently used ones are closed beyond).
        max_inflight: packets in flight; more are dropped (and counted) rather than queued.
        max_streams: reliable requests in flight (push-pulls, digest pulls; memberlist allows 128 push-pulls
            at once); more fail at once (counted ``streams_dropped_inflight``) rather than queue: each holds
            up to a full member list, and a node that has this many outstanding is not getting answers.
        credentials: channel credentials for peers (``meshnode.trust.channel_credentials``: mutual TLS with
            the fleet CA); None dials in plaintext (``meshnode run --insecure``).
        interceptors: client interceptors on every peer channel (e.g. signing fan-out fleet queries).
    """

    def __init__(
        self,
        address: str,
        packet_timeout: float = 0.5,
        max_channels: int = 1024,
        max_inflight: int = 4096,
        max_streams: int = 128,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        self._address = address
        self._credentials = credentials
        self._interceptors = list(interceptors) or None
        self.packet_timeout = packet_timeout
        self._max_channels = max_channels
        self._max_inflight = max_inflight
        self._max_streams = max_streams
        self._streams = 0
        self._channels: OrderedDict[str, tuple[grpc.aio.Channel, mesh_pb2_grpc.MeshStub]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.on_packet: PacketHandler = _drop_packet
        self.on_stream: StreamHandler = _refuse_stream
        self.pools: dict[str, PoolTransport] = {}
        """The other pools on this port (``pool``), by name; the default pool ("") is this transport."""
        self.counters: Counter[str] = Counter()

    @property
    def address(self) -> str:
        return self._address

    def set_handlers(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        self.on_packet = on_packet
        self.on_stream = on_stream

    def stub(self, addr: str) -> mesh_pb2_grpc.MeshStub:
        """The (cached) stub of the peer at ``addr``."""
        entry = self._channels.get(addr)
        if entry is not None:
            self._channels.move_to_end(addr)
            return entry[1]
        if self._credentials is not None:
            channel = grpc.aio.secure_channel(addr, self._credentials, interceptors=self._interceptors)
        else:
            channel = grpc.aio.insecure_channel(addr, interceptors=self._interceptors)
        stub = mesh_pb2_grpc.MeshStub(channel)  # type: ignore[no-untyped-call]
        self._channels[addr] = (channel, stub)
        while len(self._channels) > self._max_channels:
            _, (old, _) = self._channels.popitem(last=False)
            self.counters["channels_evicted"] += 1
            # calls still running on it (a fan-out to every member) get the packet deadline to finish
            self._spawn(old.close(self.packet_timeout))
        return stub

    def reserve(self, members: int) -> None:
        """Keep at least one channel per member of a membership this large (plus slack), so that a fan-out
        to every member reuses the cached channels instead of closing and reopening them in LRU order."""
        self._max_channels = max(self._max_channels, members + members // 4 + 8)

    def _spawn(self, coro: Awaitable[object]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def pool(self, name: str) -> PoolTransport:
        """The transport of pool ``name`` on this port (created on first use): same channels and bounds,
        its calls tagged with the pool's name so that the receiver hands them to that pool's handlers."""
        if not name or len(name) > MAX_POOL:
            raise ValueError(f"pool name {name!r}: 1 to {MAX_POOL} characters")
        p = self.pools.get(name)
        if p is None or p.closed:
            p = self.pools[name] = PoolTransport(self, name)
        return p

    def handlers(self, pool: str) -> tuple[PacketHandler, StreamHandler] | None:
        """The receivers of pool ``pool`` on this node (None: it runs no such pool)."""
        if not pool:
            return self.on_packet, self.on_stream
        p = self.pools.get(pool)
        return None if p is None or p.closed else (p.on_packet, p.on_stream)

    def send_packet(self, addr: str, payload: bytes, pool: str = "") -> None:
        if self._closed:
            return
        if len(self._tasks) >= self._max_inflight:
            self.counters["packets_dropped_inflight"] += 1
            return
        self.counters["packets_sent"] += 1
        self.counters["packet_bytes_sent"] += len(payload)
        if pool:
            self.counters[f"pool_{pool}_bytes_sent"] += len(payload)
        req = mesh_pb2.PacketRequest(from_addr=self._address, payload=payload, pool=pool)
        stub = self.stub(addr)

        async def send() -> None:
            if self._closed:  # aclose() ran between the send and this task's first step
                self.counters["packets_failed_CLOSED"] += 1
                return
            try:
                await stub.Packet(req, timeout=self.packet_timeout)
            except grpc.aio.AioRpcError as exc:
                self.counters[f"packets_failed_{exc.code().name}"] += 1
            except grpc.aio.UsageError:  # its channel was closed under it (shutdown)
                self.counters["packets_failed_CLOSED"] += 1
            except Exception:
                self.counters["packets_failed"] += 1
                log.exception("sending a mesh packet to %s failed", addr)

        self._spawn(send())

    def request(self, addr: str, payload: bytes, timeout: float, on_reply: ReplyCallback, pool: str = "") -> None:
        if self._closed:
            asyncio.get_running_loop().call_soon(on_reply, None, "CLOSED")
            return
        if self._streams >= self._max_streams:
            self.counters["streams_dropped_inflight"] += 1
            asyncio.get_running_loop().call_soon(on_reply, None, "too many streams in flight")
            return
        self._streams += 1
        self.counters["streams_sent"] += 1
        self.counters["stream_bytes_sent"] += len(payload)
        if pool:
            self.counters[f"pool_{pool}_bytes_sent"] += len(payload)
        req = mesh_pb2.StreamRequest(from_addr=self._address, payload=payload, pool=pool)
        stub = self.stub(addr)

        async def call() -> mesh_pb2.StreamResponse:
            resp: mesh_pb2.StreamResponse = await stub.Stream(req, timeout=timeout)
            return resp

        async def run() -> None:
            try:
                resp = await with_retries(call, budget=timeout)
            except grpc.aio.AioRpcError as exc:
                self.counters[f"streams_failed_{exc.code().name}"] += 1
                on_reply(None, exc.code().name)
                return
            except Exception as exc:
                self.counters["streams_failed"] += 1
                on_reply(None, f"{type(exc).__name__}: {exc}")
                return
            finally:
                self._streams -= 1
            self.counters["stream_bytes_received"] += len(resp.payload)
            on_reply(resp.payload, "")

        self._spawn(run())

    def close(self) -> None:
        """Stop sending; ``aclose`` also closes the channels."""
        self._closed = True

    async def aclose(self) -> None:
        """Close every channel and wait for calls in flight to end."""
        self._closed = True
        for channel, _ in self._channels.values():
            await channel.close(None)
        self._channels.clear()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


class PoolTransport:
    """One more membership pool on a node's port (``GrpcTransport.pool``): a ``Transport`` whose calls carry
    the pool's name. A node runs its site pool on the port's default pool and, while it is a site
    aggregator, its region and fleet pools beside it; one port, one set of channels, one identity."""

    def __init__(self, base: GrpcTransport, name: str) -> None:
        self._base = base
        self.name = name
        self.closed = False
        self.on_packet: PacketHandler = _drop_packet
        self.on_stream: StreamHandler = _refuse_stream

    @property
    def address(self) -> str:
        return self._base.address

    def set_handlers(self, on_packet: PacketHandler, on_stream: StreamHandler) -> None:
        self.on_packet = on_packet
        self.on_stream = on_stream

    def send_packet(self, addr: str, payload: bytes) -> None:
        if not self.closed:
            self._base.send_packet(addr, payload, pool=self.name)

    def request(self, addr: str, payload: bytes, timeout: float, on_reply: ReplyCallback) -> None:
        if self.closed:
            asyncio.get_running_loop().call_soon(on_reply, None, "CLOSED")
            return
        self._base.request(addr, payload, timeout, on_reply, pool=self.name)

    def close(self) -> None:
        """Stop this pool only (the node is no longer an aggregator); the port and other pools go on."""
        self.closed = True
        self.on_packet, self.on_stream = _drop_packet, _refuse_stream
