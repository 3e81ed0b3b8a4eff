"""Active tasks (seed 003): on request, this node measures TCP connect latency, the handshake RTT and
reachability to a target (and the path to it: ``_pathprobe``).

A requester names a target (``host:port``, or a member's node id and a port) and a count; the node makes
that many TCP connects, one after another, each bounded by a timeout, and answers with every connect time
and the errors by name. Results also ride this node's next digest, so the fleet sees them.

Three guards, each its own small piece: ``TaskPolicy`` (the function can be disabled per node, and
requesters denied by address, CIDR or node id), ``TokenBucket`` (a rate limit on measurements, with an
injected clock), and hard bounds on count and timeout. Measuring is I/O; the rest is pure.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import statistics
import time
from collections.abc import Callable, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field

from meshnode.mesh._pathprobe import DEFAULT_HOPS, MAX_HOPS, error_name, handshake_rtt_us, resolve
from meshnode.summary import format_destination

MAX_COUNT = 100
"""Connects per request at most: a measurement, not a load test."""
MAX_TIMEOUT_S = 10.0
"""Longest wait for one connect."""


MEMBER_CALLER: ContextVar[str | None] = ContextVar("meshnode_member_caller", default=None)
"""While a signed method runs (set by ``meshnode.trust``'s signed-request interceptor): the node id of the mesh
member whose node key signed the request; None when an operator key signed it, or when the request comes
from this node itself. A member must not act in another's name (``requester_id``) or choose for itself."""


class TaskRefused(Exception):
    """A request this node will not run; ``code`` is the gRPC status name the servicer answers with."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class TaskPolicy:
    """Whether this node runs active tasks, and for whom."""

    enabled: bool = True
    deny: frozenset[str] = field(default_factory=frozenset)
    """Requester addresses, CIDRs or node ids refused."""
    path_probes: bool = False
    """Whether this node sends path probes (SYNs with small TTLs draw ICMP from every router on the way,
    which some networks alarm on): off unless its operator says so."""

    def check(self, requester_addr: str, requester_id: str = "") -> None:
        """Raise TaskRefused when the function is off or the requester is denied."""
        if not self.enabled:
            raise TaskRefused("FAILED_PRECONDITION", "active tasks are disabled on this node")
        if requester_id and requester_id in self.deny:
            raise TaskRefused("PERMISSION_DENIED", f"requester {requester_id} is denied on this node")
        try:
            addr = ipaddress.ip_address(requester_addr)
        except ValueError:
            return
        for entry in self.deny:
            try:
                if addr in ipaddress.ip_network(entry, strict=False):
                    raise TaskRefused("PERMISSION_DENIED", f"requester {requester_addr} is denied on this node")
            except ValueError:
                continue


class TokenBucket:
    """``rate`` tokens per second up to ``burst``; one token per connect attempt."""

    def __init__(self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._at = clock()

    def take(self, n: float) -> bool:
        """Take ``n`` tokens if there are that many; False (and nothing taken) otherwise."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if n > self._tokens:
            return False
        self._tokens -= n
        return True


@dataclass(frozen=True)
class Measurement:
    """The outcome of one request: every successful connect time, failures by error name."""

    target: str
    attempts: int
    connect_us: tuple[int, ...]
    errors: dict[str, int]
    time_ns: int
    rtt_us: tuple[int, ...] = ()
    """The kernel's handshake RTT of each successful connect, in order."""

    @property
    def reachable(self) -> int:
        return len(self.connect_us)

    def percentile_us(self, q: float) -> int:
        """Nearest-rank percentile of the connect times (0 when none succeeded)."""
        if not self.connect_us:
            return 0
        ordered = sorted(self.connect_us)
        return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]

    @property
    def p50_us(self) -> int:
        return int(statistics.median(self.connect_us)) if self.connect_us else 0

    @property
    def rtt_p50_us(self) -> int:
        """The median handshake RTT (0 when none connected)."""
        return int(statistics.median(self.rtt_us)) if self.rtt_us else 0


def split_target(target: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` → (host, port); raises ValueError naming what is wrong."""
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError(f"target {target!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


async def measure_tcp(host: str, port: int, count: int, timeout_s: float,
                      pause_s: float = 0.05) -> Measurement:
    """``count`` TCP connects to host:port, one at a time, each closed at once: each connect time as this
    process saw it and the kernel's handshake RTT, in microseconds, and the failures by error name."""
    loop = asyncio.get_running_loop()
    times: list[int] = []
    rtts: list[int] = []
    errors: dict[str, int] = {}
    try:
        family, addr = await resolve(host, port)
    except OSError as exc:
        return Measurement(target=format_destination(host, port), attempts=count, connect_us=(),
                           errors={error_name(exc): count}, time_ns=time.time_ns())
    for i in range(count):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(loop.sock_connect(sock, addr), timeout_s)
        except TimeoutError:
            errors["timeout"] = errors.get("timeout", 0) + 1
        except OSError as exc:
            name = error_name(exc)
            errors[name] = errors.get(name, 0) + 1
        else:
            times.append(int((time.perf_counter() - t0) * 1e6))
            rtts.append(handshake_rtt_us(sock))
        finally:
            sock.close()
        if i + 1 < count:
            await asyncio.sleep(pause_s)
    return Measurement(target=format_destination(host, port), attempts=count,
                       connect_us=tuple(times), errors=errors, time_ns=time.time_ns(), rtt_us=tuple(rtts))


def bounded(count: int, timeout_ms: int) -> tuple[int, float]:
    """Validated (count, timeout seconds): defaults 5 and 2 s; raises TaskRefused(INVALID_ARGUMENT)."""
    count = count or 5
    if not 1 <= count <= MAX_COUNT:
        raise TaskRefused("INVALID_ARGUMENT", f"count: {count} is outside 1..{MAX_COUNT}")
    timeout = (timeout_ms or 2000) / 1000
    if timeout > MAX_TIMEOUT_S:
        raise TaskRefused("INVALID_ARGUMENT", f"timeout_ms: {timeout_ms} is over {int(MAX_TIMEOUT_S * 1000)}")
    return count, timeout


def bounded_hops(max_hops: int) -> int:
    """Validated highest TTL of a path probe: default 16; raises TaskRefused(INVALID_ARGUMENT)."""
    hops = max_hops or DEFAULT_HOPS
    if not 1 <= hops <= MAX_HOPS:
        raise TaskRefused("INVALID_ARGUMENT", f"max_hops: {max_hops} is outside 1..{MAX_HOPS}")
    return hops


def parse_deny(entries: Iterable[str]) -> frozenset[str]:
    """Deny-list entries as given (addresses, CIDRs, node ids), blanks dropped."""
    return frozenset(e.strip() for e in entries if e.strip())
