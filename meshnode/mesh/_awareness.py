"""Lifeguard local health awareness (memberlist ``awareness.go``).

A node that misses its own acks is more likely slow itself than surrounded by dead peers. It keeps a
health score in ``[0, max_multiplier - 1]``: failed probes without nacks raise it, successful probes
lower it, and every probe timeout and interval is multiplied by ``score + 1``. A slow node therefore
waits longer before it suspects others, instead of flooding the mesh with false suspicions.
"""

from __future__ import annotations


def scale_timeout(timeout: float, score: int) -> float:
    """The timeout a node with health ``score`` uses: ``timeout * (score + 1)``."""
    return timeout * (score + 1)


def apply_delta(score: int, delta: int, max_multiplier: int) -> int:
    """The new score after ``delta``, clamped to ``[0, max_multiplier - 1]``."""
    return max(0, min(max_multiplier - 1, score + delta))


class Awareness:
    """The local health score (0 is healthy).

    Args:
        max_multiplier: the largest timeout multiplier; the score stays below it.
    """

    def __init__(self, max_multiplier: int) -> None:
        self.max_multiplier = max_multiplier
        self.score = 0

    def apply_delta(self, delta: int) -> None:
        """Raise (failed probe, refuted suspicion of ourselves) or lower (successful probe) the score."""
        self.score = apply_delta(self.score, delta, self.max_multiplier)

    def scale_timeout(self, timeout: float) -> float:
        """``timeout`` stretched by the current score."""
        return scale_timeout(timeout, self.score)
