"""How fast the API's streams may send, all of them together.

Every stream response costs the event loop gRPC's per-message work (a send, its completion handed over from
gRPC's poller thread, a task wake-up: tens of microseconds, each a GIL hand-over), whatever it carries. The
loop also answers ``Status`` and runs SWIM, so a few clients streaming one record per response at full speed
kept it busy enough that ``Status`` waited for it. ``StreamPacer`` is a token bucket shared by every stream:
a response beyond the rate waits its turn, so the loop keeps room for everything else. Batched responses
(meshctl asks for them) carry up to ``MAX_BATCH`` records each, so the bound is on messages, not records.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class StreamPacer:
    """A token bucket of ``rate`` responses a second (``burst`` at once) shared by all streams.

    ``delay`` reserves a response's token and says how long to wait for it (0: send now). Reservations run
    into debt, so waiting streams are served in the order they asked, and the debt is at most one token per
    waiting stream (each waits before it asks again). ``waits`` counts the responses that waited.
    """

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"a stream pacer needs a positive rate and burst (got {rate}, {burst})")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)
        self._last = clock()
        self.waits = 0

    def delay(self) -> float:
        """Take one response's token; seconds until it is due (0.0: now)."""
        now = self._clock()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.rate) - 1.0
        self._last = now
        if self._tokens >= 0:
            return 0.0
        self.waits += 1
        return -self._tokens / self.rate
