"""What limited a TCP flow's sending rate over an interval: the ``limited_by`` rule (seed 000, TcpScope).

TcpScope infers from packet timing whether the application was not producing enough data or whether an
external factor (receiver window, bottleneck, loss) held the transfer back. A Linux end host does not have to
infer most of it: the kernel's TCP "chrono" timers (``tcp_info.tcpi_busy_time``, ``tcpi_rwnd_limited``,
``tcpi_sndbuf_limited``, Linux 4.10+) count, in microseconds at jiffy resolution, how long the socket had
data in flight (*busy*, which already includes the two limited times), how long of that it was stalled on
the peer's receive window, and how long it ran out of data to send because the send buffer was too small.
The rule compares two samples of one socket's ``tcp_info`` taken ``elapsed_us`` apart (monotonic clock):

1. ``"unknown"`` when the answer would be a guess:

   * a needed field is missing in either sample (a kernel without the chrono timers, or no tcp_info);
   * ``elapsed_us < MIN_INTERVAL_US`` (the timers tick in jiffies of 1-10 ms; shorter intervals are noise),
     including zero and negative elapsed time;
   * any cumulative counter went backwards (a different socket behind the same key, or a bad sample).

2. ``busy_share = d(busy_time) / elapsed``. If ``busy_share >= APP_MAX_BUSY_SHARE`` the sender had data
   queued most of the interval; ``rwnd_share = d(rwnd_limited) / d(busy_time)`` and
   ``sndbuf_share = d(sndbuf_limited) / d(busy_time)``:

   a. if the larger of the two is at least ``LIMITED_MIN_SHARE`` it names the limit: ``"receiver_window"``
      or ``"send_buffer"`` (a tie goes to the receiver window, the more specific diagnosis);
   b. else, busy and not stalled on either window, the congestion window (or pacing derived from it) set
      the rate. We say ``"congestion"`` only with evidence of it: ``unacked >= CWND_FULL_SHARE * snd_cwnd``
      in the later sample (cwnd-bound right now), or retransmissions in the interval
      (``d(total_retrans) > 0``), or segments currently marked lost (``lost > 0``);
   c. otherwise ``"unknown"`` (busy, but no visible cause: typically CPU on loopback).

   A busy flow is judged however few segments it has sent: one stalled on a closed receive window may have
   sent only two, and its length is not what holds it back.

3. Else the send queue was empty most of the interval:

   a. ``"unknown"`` when the flow has sent fewer than ``MIN_FLOW_DATA_SEGS`` data segments in total (it
      never sent more than an initial window, so no limit but its length could show: TcpScope's "limited by
      connection length");
   b. ``"unknown"`` when the interval's traffic was mostly *towards* this socket
      (``d(bytes_received) > d(bytes_acked)``): the limit is on the peer's sending side, which this socket's
      timers do not see (the peer's own node reports it);
   c. otherwise ``"app"``: the application did not supply data faster.

The thresholds are heuristics, named so that they can be tuned and tested; they are not kernel constants.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from meshnode.probes._sockdiag import TcpInfo

MIN_INTERVAL_US: Final = 100_000
"""Shorter intervals are below what jiffy-resolution timers (4 ms at HZ=250) can split meaningfully."""
MIN_FLOW_DATA_SEGS: Final = 10
"""``TCP_INIT_CWND``: a flow that never sent more than an initial window shows no limit but its length."""
APP_MAX_BUSY_SHARE: Final = 0.5
"""Busy less than half the interval: the application, not the network, set the pace."""
LIMITED_MIN_SHARE: Final = 0.25
"""A window or buffer stall covering a quarter of the busy time is the limit worth naming."""
CWND_FULL_SHARE: Final = 0.8
"""``unacked`` at 80% of ``snd_cwnd`` or more counts as cwnd-bound."""

_CUMULATIVE: Final = (
    "busy_time", "rwnd_limited", "sndbuf_limited", "bytes_acked", "bytes_received", "data_segs_out",
    "total_retrans",
)
_NEEDED_NOW: Final = ("snd_cwnd", "unacked", "lost")


@dataclass(frozen=True, slots=True)
class LimitVerdict:
    """The verdict and the reason for it (for logs, tests and ``meshctl`` explanations)."""

    limited_by: str
    reason: str


def classify(prev: TcpInfo | None, cur: TcpInfo | None, elapsed_us: int) -> LimitVerdict:
    """Apply the module's rule to two samples of the same socket; see the module docstring.

    Args:
        prev: the earlier ``tcp_info`` sample.
        cur: the later sample.
        elapsed_us: monotonic microseconds between the two samples.
    """
    if prev is None or cur is None:
        return LimitVerdict("unknown", "no tcp_info")
    if elapsed_us < MIN_INTERVAL_US:
        return LimitVerdict("unknown", f"interval {elapsed_us} us < {MIN_INTERVAL_US} us")
    d: dict[str, int] = {}
    for name in _CUMULATIVE:
        a, b = getattr(prev, name), getattr(cur, name)
        if a is None or b is None:
            return LimitVerdict("unknown", f"tcp_info lacks {name}")
        if b < a:
            return LimitVerdict("unknown", f"{name} went backwards ({a} -> {b})")
        d[name] = b - a
    now: dict[str, int] = {}
    for name in _NEEDED_NOW:
        v = getattr(cur, name)
        if v is None:
            return LimitVerdict("unknown", f"tcp_info lacks {name}")
        now[name] = v
    busy = d["busy_time"]
    busy_share = busy / elapsed_us
    if busy_share >= APP_MAX_BUSY_SHARE:
        rwnd_share = d["rwnd_limited"] / busy
        sndbuf_share = d["sndbuf_limited"] / busy
        if max(rwnd_share, sndbuf_share) >= LIMITED_MIN_SHARE:
            if rwnd_share >= sndbuf_share:
                return LimitVerdict("receiver_window", f"rwnd-limited {rwnd_share:.0%} of busy time")
            return LimitVerdict("send_buffer", f"sndbuf-limited {sndbuf_share:.0%} of busy time")
        cwnd_bound = now["snd_cwnd"] > 0 and now["unacked"] >= CWND_FULL_SHARE * now["snd_cwnd"]
        if cwnd_bound or d["total_retrans"] > 0 or now["lost"] > 0:
            why = []
            if cwnd_bound:
                why.append(f"unacked {now['unacked']} of cwnd {now['snd_cwnd']}")
            if d["total_retrans"]:
                why.append(f"{d['total_retrans']} retransmits")
            if now["lost"]:
                why.append(f"{now['lost']} lost")
            return LimitVerdict("congestion", ", ".join(why))
        return LimitVerdict("unknown", f"busy {busy_share:.0%}, no window, buffer or congestion evidence")

    total_segs = cur.data_segs_out
    assert total_segs is not None  # checked above through _CUMULATIVE
    if total_segs < MIN_FLOW_DATA_SEGS:
        return LimitVerdict("unknown", f"flow too short ({total_segs} data segments sent)")
    if d["bytes_received"] > d["bytes_acked"]:
        return LimitVerdict("unknown", f"receiving side of the flow (busy {busy_share:.0%}); the peer knows")
    return LimitVerdict("app", f"busy {busy_share:.0%} of the interval")


def limited_by(prev: TcpInfo | None, cur: TcpInfo | None, elapsed_us: int) -> str:
    """Just the verdict of :func:`classify`: one of ``app``, ``receiver_window``, ``send_buffer``,
    ``congestion``, ``unknown``."""
    return classify(prev, cur, elapsed_us).limited_by
