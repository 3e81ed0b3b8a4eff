"""Lifeguard suspicion with a timeout that shrinks as independent peers confirm it (``suspicion.go``).

A suspicion starts at ``max_timeout``. Every confirmation from a peer other than the first suspecter
shrinks it logarithmically, down to ``min_timeout`` after ``k`` confirmations. A lone (maybe slow or
partitioned) suspecter therefore waits long, giving the suspect time to refute, while a suspicion many
peers share concludes fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from meshnode.mesh._clock import Scheduler, Timer


def suspicion_timeout(suspicion_mult: int, n: int, interval: float) -> float:
    """The minimum suspicion timeout: ``mult * max(1, log10(n)) * interval`` (memberlist ``util.go``).

    Args:
        suspicion_mult: the configured multiplier.
        n: the number of members (the more, the longer gossip needs to reach the suspect).
        interval: the probe interval in seconds.
    """
    node_scale = max(1.0, math.log10(max(1, n)))
    return suspicion_mult * node_scale * interval


def remaining_suspicion_time(n: int, k: int, elapsed: float, min_timeout: float, max_timeout: float) -> float:
    """Seconds left on a suspicion after ``n`` of ``k`` expected confirmations and ``elapsed`` seconds.

    ``timeout = max(min, max - (max - min) * log(n + 1) / log(k + 1))``; the result is that minus
    ``elapsed`` and may be negative (the suspicion is overdue).
    """
    if k <= 0:
        return min_timeout - elapsed
    frac = math.log(n + 1.0) / math.log(k + 1.0)
    raw = max_timeout - frac * (max_timeout - min_timeout)
    timeout = max(min_timeout, math.floor(raw * 1000.0) / 1000.0)
    return timeout - elapsed


class Suspicion:
    """One running suspicion: who confirmed it and the timer that declares the suspect dead.

    Args:
        scheduler: the clock.
        suspecter: the node id that raised the suspicion (its confirmations do not count).
        k: confirmations that bring the timeout down to ``min_timeout``.
        min_timeout: the shortest timeout.
        max_timeout: the starting timeout.
        on_timeout: called once when the suspicion runs out, with the number of confirmations.
    """

    def __init__(
        self,
        scheduler: Scheduler,
        suspecter: str,
        k: int,
        min_timeout: float,
        max_timeout: float,
        on_timeout: Callable[[int], None],
    ) -> None:
        self._scheduler = scheduler
        self._k = k
        self._min = min_timeout
        self._max = max_timeout if k > 0 else min_timeout
        self._on_timeout = on_timeout
        self._start = scheduler.now()
        self._confirmers: set[str] = {suspecter}
        self._fired = False
        self.confirmations = 0
        self._timer: Timer = scheduler.call_later(self._max, self._fire)

    def _fire(self) -> None:
        if not self._fired:
            self._fired = True
            self._on_timeout(self.confirmations)

    def confirm(self, from_node: str) -> bool:
        """Count an independent confirmation; True when it was new (and should be re-gossiped)."""
        if self._fired or self.confirmations >= self._k or from_node in self._confirmers:
            return False
        self._confirmers.add(from_node)
        self.confirmations += 1
        elapsed = self._scheduler.now() - self._start
        remaining = remaining_suspicion_time(self.confirmations, self._k, elapsed, self._min, self._max)
        self._timer.cancel()
        if remaining > 0:
            self._timer = self._scheduler.call_later(remaining, self._fire)
        else:
            self._timer = self._scheduler.call_later(0.0, self._fire)
        return True

    def cancel(self) -> None:
        """Stop the timer (the suspect refuted, or was declared dead by someone else)."""
        self._fired = True
        self._timer.cancel()
