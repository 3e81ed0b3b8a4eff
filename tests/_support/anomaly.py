"""Per-period rollups for the anomaly tests: a noisy steady destination, and days with a nightly backup."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

S = 1_000_000_000
T0 = 1_700_000_000 * S
PERIOD = 60 * S
DB = "10.0.2.3:5432"


@dataclass
class R:
    """A period rollup (the fields ``meshnode.summary.Rollup`` has)."""

    key: str
    flows: int
    failures: dict[str, int] = field(default_factory=dict)
    retransmits: int = 0
    rtt_p95_us: int = 0


def noisy(rng: random.Random, *, fail: float = 0.01, rtt: float = 1100, flows: int = 200, retrans: float = 0.05,
          key: str = DB) -> R:
    n = max(1, int(rng.gauss(flows, flows * 0.05)))
    failed = sum(1 for _ in range(n) if rng.random() < fail)
    return R(key, n, {"timeout": failed} if failed else {}, int(n * retrans * rng.uniform(0.5, 1.5)),
             int(rng.gauss(rtt, rtt * 0.08)))


FIVE_MIN = 300 * S
HOUR = 3600 * S
DAY0 = (T0 // (24 * HOUR) + 1) * 24 * HOUR  # a UTC midnight


def backup_days(days: int, *, spike_at: int | None = None, seed: int = 5,
                period: int = FIVE_MIN) -> list[tuple[int, R]]:
    """Periods (5 minutes) over ``days`` days to the backup target: 200 flows a period, 2,000 from 02:00 to
    03:00 every night (the nightly backup), and on the last day from ``spike_at`` o'clock for an hour too."""
    rng = random.Random(seed)
    out = []
    for i in range(1, days * 24 * HOUR // period + 1):
        end = DAY0 + i * period
        hour = ((end - 1) // HOUR) % 24  # the period ending at 03:00 is the backup's last
        last_day = (end - 1) // (24 * HOUR) == (DAY0 // (24 * HOUR)) + days - 1
        busy = hour == 2 or (last_day and hour == spike_at)
        out.append((end, noisy(rng, flows=2000 if busy else 200)))
    return out
