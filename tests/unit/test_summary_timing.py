"""Exchange timing in the rollups: log2 histograms (bucket edges, merge, quantiles), a period's rollup of known
flows counted exactly, and what crosses the wire (Rollup message, window merge, digest, privacy merge)."""

from __future__ import annotations

import numpy as np
import pytest

from meshnode.summary import PeriodBuilder, merge_rollups, rollup
from meshnode.summary._timing import BUCKETS, buckets_of, count, histograms, merge, quantile_us, trim
from tests.unit._flows import flow


@pytest.mark.parametrize(("us", "bucket"), [
    (0, 0), (1, 0), (2, 1), (3, 1), (4, 2), (1023, 9), (1024, 10), (200_000, 17), (262_143, 17),
    (262_144, 18), (2**31 - 1, 30), (2**31, 31), (2**32 - 1, 31), (2**40, 31), (-5, 0),
])
def test_buckets_are_powers_of_two_of_microseconds(us: int, bucket: int) -> None:
    assert buckets_of(np.array([us])).tolist() == [bucket]


def test_histograms_per_group_weighted_and_trimmed() -> None:
    codes = np.array([0, 0, 2, 2, 2])
    values = np.array([1000, 700, 5, 5, 200_000])
    assert histograms(codes, values, 3) == [[0] * 9 + [2], [], [0, 0, 2] + [0] * 14 + [1]]
    assert histograms(codes, values, 3, weights=np.array([3, 1, 1, 1, 7]))[0] == [0] * 9 + [4]
    assert histograms(np.zeros(0, dtype=np.intp), np.zeros(0), 2) == [[], []]
    assert len(histograms(np.array([0]), np.array([2**63 - 1]), 1)[0]) == BUCKETS


def test_merge_count_and_quantiles() -> None:
    a, b = [1, 0, 2], [0, 0, 1, 0, 5]
    assert merge(a, b) == merge(b, a) == [1, 0, 3, 0, 5]
    assert merge([], []) == [] and trim([0, 3, 0, 0]) == [0, 3]
    assert count(merge(a, b)) == 9
    # 9 values: 1 in [0,2), 3 in [4,8), 5 in [16,32): quantiles are the bucket's upper bound
    h = merge(a, b)
    assert [quantile_us(h, q) for q in (0.0, 0.1, 0.2, 0.44, 0.45, 0.5, 0.99, 1.0)] == [2, 2, 8, 8, 32, 32, 32, 32]
    assert quantile_us([], 0.5) == 0


def test_a_period_rolls_up_exchanges_first_bytes_and_connects_exactly() -> None:
    """Three outbound flows to one destination: one slow server (3 exchanges of ~200 ms over a 1 ms RTT),
    one fast, one on a queueing path (RTT 80 ms over a 1 ms minimum); the rollup counts every exchange,
    puts each flow's at its mean, and names the slow ones by cause."""
    slow = flow(1, responses=3, response_us_sum=630_000, response_us_max=220_000, first_byte_us=205_000,
                answer_us_sum=629_000,
                connect_us=300, srtt_us=1000, min_rtt_us=900, max_rtt_us=1100)
    fast = flow(2, responses=10, response_us_sum=15_000, response_us_max=2_500, first_byte_us=1_200,
                connect_us=250, srtt_us=1000, min_rtt_us=900, max_rtt_us=1100)
    path = flow(3, responses=1, response_us_sum=160_000, response_us_max=160_000, first_byte_us=160_000,
                connect_us=1_100, srtt_us=80_000, min_rtt_us=1_000, max_rtt_us=81_000)
    refused = flow(4, outcome="refused", connect_us=0)
    (r,) = rollup([slow, fast, path, refused], "destination")
    assert (r.flows, r.useful, r.responses, r.response_us_sum, r.response_us_max) == (4, 3, 14, 805_000, 220_000)
    assert (r.flows_slow_server, r.flows_slow_path, r.flows_slow_connect) == (1, 1, 0)
    # exchanges at their flow's mean: 10 at 1.5 ms (bucket 10), 1 at 160 ms and 3 at 210 ms (bucket 17)
    assert r.response_hist == [0] * 10 + [10] + [0] * 6 + [4]
    assert r.first_byte_hist == [0] * 10 + [1] + [0] * 6 + [2]
    assert r.connect_hist == [0] * 7 + [1, 1, 0, 1]  # 250 us, 300 us, 1.1 ms; a refused connect is no duration
    assert quantile_us(r.response_hist, 0.5) == 2048 and quantile_us(r.response_hist, 0.9) == 262_144


def test_a_long_flow_counts_each_period_what_it_did_in_it() -> None:
    b = PeriodBuilder("n")
    early = flow(1, kind="interim", outcome="in_progress", connect_us=0, responses=0, response_us_sum=0)
    s1 = b.build(1, 0, 1, [], [early])
    up = flow(1, kind="interim", connect_us=400, responses=2, response_us_sum=2_000, response_us_max=1_500,
              first_byte_us=500)
    s2 = b.build(2, 1, 2, [], [up])
    end = up.replace(kind="final", responses=5, response_us_sum=602_000, response_us_max=200_000)
    s3 = b.build(3, 2, 3, [end], [])
    rows = [s.by_destination[0] for s in (s1, s2, s3)]
    assert [(r.responses, r.response_us_sum) for r in rows] == [(0, 0), (2, 2_000), (3, 600_000)]
    assert [r.response_hist for r in rows] == [[], [0] * 9 + [2], [0] * 17 + [3]]
    assert [r.first_byte_hist for r in rows] == [[], [0] * 8 + [1], []]  # once, in the period it came
    assert [r.connect_hist for r in rows] == [[], [0] * 8 + [1], []]  # once, when the handshake completed
    window = merge_rollups([s.by_destination for s in (s1, s2, s3)])[0].totals
    assert (window.responses, window.response_us_sum, window.response_us_max) == (5, 602_000, 200_000)
    assert window.response_hist == [0] * 9 + [2] + [0] * 7 + [3]


def test_timing_crosses_the_wire_and_merges_in_privacy_filters() -> None:
    from meshnode.api._convert import rollup_pb
    from meshnode.mesh._digest import digest_from_period
    from meshnode.trust._privacy import _merge_rollup

    (r,) = rollup([flow(1, responses=2, response_us_sum=400_000, response_us_max=210_000, first_byte_us=190_000,
                        answer_us_sum=399_000, connect_us=300, max_rtt_us=1100)], "destination")
    msg = rollup_pb(r)
    assert (msg.responses, msg.response_us_sum, msg.response_us_max, msg.flows_slow_server) == (2, 400_000, 210_000, 1)
    assert list(msg.response_hist) == r.response_hist == [0] * 17 + [2]
    assert list(msg.connect_hist) == [0] * 8 + [1]

    class Period:
        period_start_ns, period_end_ns, by_destination = 0, 1, [r]

    (d,) = digest_from_period(Period()).by_destination
    assert (msg.response_p50_us, msg.response_p95_us) == (262_144, 262_144)  # the API reads the histogram
    msg.ClearField("response_p50_us")
    msg.ClearField("response_p95_us")
    assert d == msg  # a digest carries the histogram itself
    other = rollup_pb(rollup([flow(2, responses=1, response_us_sum=1_000, response_us_max=1_000, first_byte_us=1_000)],
                             "destination")[0])
    _merge_rollup(msg, other)
    assert (msg.responses, msg.response_us_sum, msg.response_us_max) == (3, 401_000, 210_000)
    assert list(msg.response_hist) == [0] * 9 + [1] + [0] * 7 + [2]
    assert list(msg.first_byte_hist) == [0] * 9 + [1] + [0] * 7 + [1]
