"""Log2 histograms of durations in microseconds: how rollups keep connect, first-byte and exchange times.

Bucket ``i`` counts durations in ``[2**i, 2**(i+1))`` us (bucket 0 also holds 0 us), so 32 buckets cover
every u32 the kernel counts (71 minutes). A histogram is a list of counts with its trailing empty buckets
left off: a period's row costs a few varints on the wire, and two histograms merge by adding bucket by
bucket whatever their lengths. Quantiles read from one are bucket bounds, exact to a factor of two: enough
to tell 1 ms from 200 ms, which is the question blame asks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final

import numpy as np

if TYPE_CHECKING:
    from numpy.typing import NDArray

BUCKETS: Final = 32
"""Buckets of a histogram: ``[2**i, 2**(i+1))`` us each, the last open-ended."""


def buckets_of(values_us: NDArray[Any]) -> NDArray[np.intp]:
    """The bucket of each duration (negative ones count as 0)."""
    v = np.maximum(np.asarray(values_us, dtype=np.int64), 1)
    # frexp's exponent is exact where log2 of a float can round up just below a power of two
    _, exp = np.frexp(v.astype(np.float64))
    out: NDArray[np.intp] = np.minimum(exp.astype(np.intp) - 1, BUCKETS - 1)
    return out


def histograms(codes: NDArray[np.intp], values_us: NDArray[Any], k: int,
               weights: NDArray[Any] | None = None) -> list[list[int]]:
    """Per group ``0..k-1`` (``codes`` per row), the histogram of ``values_us``, each row counting
    ``weights`` (1 when None); trailing empty buckets left off."""
    if not len(codes):
        return [[] for _ in range(k)]
    flat = codes.astype(np.int64) * BUCKETS + buckets_of(values_us)
    w = None if weights is None else np.asarray(weights, dtype=np.float64)
    counts = np.bincount(flat, weights=w, minlength=k * BUCKETS).reshape(k, BUCKETS)
    return [trim(row) for row in np.rint(counts).astype(np.int64).tolist()]


def trim(hist: Iterable[int]) -> list[int]:
    """``hist`` without its trailing zeros."""
    out = [int(x) for x in hist]
    while out and not out[-1]:
        out.pop()
    return out


def merge(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """The bucket-by-bucket sum of two histograms."""
    n = max(len(a), len(b))
    return trim((a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n))


def count(hist: Sequence[int]) -> int:
    """Durations counted in ``hist``."""
    return int(sum(hist))


def quantile_us(hist: Sequence[int], q: float) -> int:
    """The upper bound of the bucket that holds the ``q`` quantile (0..1) of ``hist`` in us: the
    durations below it include at least that fraction. 0 for an empty histogram."""
    total = count(hist)
    if not total:
        return 0
    want = max(1.0, q * total)
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= want:
            return int(2 ** (i + 1))
    return int(2 ** len(hist))
