"""Time for the mesh: a scheduler interface, a manual one for tests and simulations, an asyncio one.

The membership state machine never sleeps and never reads a clock itself: it asks a ``Scheduler`` for
``now()`` and for timers. Tests and the benchmark drive a ``ManualScheduler`` by hand, so a run is a pure
function of its seed; the node runs on ``AsyncioScheduler``.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class Timer(Protocol):
    """A scheduled call that can be cancelled before it runs."""

    def cancel(self) -> None:
        """Stop the call from running; harmless when it already ran."""


class Scheduler(Protocol):
    """Monotonic time and timers."""

    def now(self) -> float:
        """Monotonic seconds."""

    def wall_ns(self) -> int:
        """Wall-clock UTC nanoseconds (digest periods and ages)."""

    def call_later(self, delay: float, fn: Callable[[], None]) -> Timer:
        """Run ``fn`` after ``delay`` seconds."""


class _ManualTimer:
    __slots__ = ("cancelled", "fn", "when")

    def __init__(self, when: float, fn: Callable[[], None]) -> None:
        self.when = when
        self.fn = fn
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class ManualScheduler:
    """A virtual clock advanced by hand; timers run in (time, creation order), so runs are repeatable.

    Args:
        start: the initial monotonic time.
        wall_start_ns: the wall clock at ``start``.
    """

    def __init__(self, start: float = 0.0, wall_start_ns: int = 1_700_000_000_000_000_000) -> None:
        self._now = start
        self._start = start
        self._wall_start_ns = wall_start_ns
        self._heap: list[tuple[float, int, _ManualTimer]] = []
        self._counter = itertools.count()

    def now(self) -> float:
        return self._now

    def wall_ns(self) -> int:
        return self._wall_start_ns + int((self._now - self._start) * 1e9)

    def call_later(self, delay: float, fn: Callable[[], None]) -> _ManualTimer:
        timer = _ManualTimer(self._now + max(0.0, delay), fn)
        heapq.heappush(self._heap, (timer.when, next(self._counter), timer))
        return timer

    def advance(self, seconds: float) -> None:
        """Run every timer due within the next ``seconds`` and move the clock there."""
        self.run_until(self._now + seconds)

    def run_until(self, deadline: float, stop: Callable[[], bool] | None = None) -> bool:
        """Run timers due up to ``deadline``; with ``stop``, return True as soon as it holds."""
        while self._heap and self._heap[0][0] <= deadline:
            when, _, timer = heapq.heappop(self._heap)
            if timer.cancelled:
                continue
            self._now = when
            timer.fn()
            if stop is not None and stop():
                return True
        self._now = max(self._now, deadline)
        return stop() if stop is not None else False

    @property
    def pending(self) -> int:
        """Timers not yet run (cancelled ones included until they are popped)."""
        return len(self._heap)


class AsyncioScheduler:
    """The running event loop's clock and ``call_later``."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        return self.loop.time()

    def wall_ns(self) -> int:
        return time.time_ns()

    def call_later(self, delay: float, fn: Callable[[], None]) -> asyncio.TimerHandle:
        return self.loop.call_later(max(0.0, delay), fn)
