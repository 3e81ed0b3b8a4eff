"""Change detection per entity (``_change``): the CUSUM's pure math, table-driven."""

from __future__ import annotations

import math

import pytest

from meshnode.diagnosis import (
    DEFAULT_H,
    BlameConfig,
    Change,
    Transaction,
    blame,
    changes,
    entity_counts,
    hypotheses,
    llr,
    regime_start,
)
from meshnode.diagnosis._change import PART_H
from tests._support.blamefleet import blackholed_db, fleet, healthy

P0, P1 = hypotheses(0.2)


def test_hypotheses_are_a_tenth_of_the_threshold_and_the_threshold() -> None:
    assert (pytest.approx(0.02), 0.2) == (P0, P1)
    assert hypotheses(1.0) == (pytest.approx(0.099), 0.99)  # a threshold of 1 still leaves room for a good one


def test_log_likelihood_ratios() -> None:
    up, ok = llr(0.05, 0.2)
    assert up == pytest.approx(math.log(4))
    assert ok == pytest.approx(math.log(0.8 / 0.95))
    with pytest.raises(ValueError, match="need 0 < p0 < p1 < 1"):
        llr(0.2, 0.05)


E = ("service", "10.0.2.3:5432")

CASES = [
    # name, series of (transactions, problems), expected (direction, onset, detected) per change
    ("steady healthy at 1 %", [(100, 1)] * 20, []),
    ("steady at 5 %: under 8 %, drifts down", [(100, 5)] * 20, []),
    ("steady at 10 %: above 8 % it drifts up, a change (blame still needs 20 %)", [(100, 10)] * 20,
     [("up", 0, 2)]),
    ("dies in period 3", [(50, 0)] * 3 + [(50, 50)] * 3, [("up", 3, 3)]),
    ("dies late in period 3: onset is the first wholly faulty one", [(50, 0)] * 3 + [(50, 3)] + [(50, 50)] * 2,
     [("up", 4, 4)]),
    ("a trickle: 2 calls a period, all failing, needs 3 periods", [(2, 0)] * 3 + [(2, 2)] * 5, [("up", 3, 5)]),
    ("dies then heals", [(50, 0)] * 2 + [(50, 50)] * 3 + [(50, 0)] * 3, [("up", 2, 2), ("down", 5, 5)]),
    ("degrades to 30 % then heals: tested against its 30 %", [(60, 1)] * 2 + [(60, 18)] * 3 + [(60, 1)] * 3,
     [("up", 2, 2), ("down", 5, 5)]),
    ("at the threshold, a heal needs about 60 good ones", [(30, 6)] * 3 + [(30, 0)] * 3,
     [("up", 0, 1), ("down", 3, 4)]),
    ("heals mid-period: the half-faulty period stays in the old regime",
     [(50, 50)] * 3 + [(50, 25)] + [(50, 0)] * 2, [("up", 0, 0), ("down", 4, 4)]),
    ("quiet periods add no evidence", [(50, 0), (0, 0), (0, 0), (50, 50)], [("up", 3, 3)]),
    ("one failed call of a few is not a change", [(5, 0), (5, 1), (5, 0), (5, 1)], []),
]


@pytest.mark.parametrize(("series", "want"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_changes(series: list[tuple[int, int]], want: list[tuple[str, int, int]]) -> None:
    found = changes(series, P0, P1, DEFAULT_H, E)
    assert [(c.direction, c.onset, c.detected) for c in found] == want
    assert all(c.entity == E for c in found)


def test_regime_start_is_the_latest_change_of_any_entity() -> None:
    a, b = ("service", "a:1"), ("service", "b:2")
    periods = [{a: (50, 0), b: (50, 50)}, {a: (50, 0), b: (50, 50)}, {a: (50, 50), b: (50, 50)},
               {a: (50, 50), b: (50, 0)}, {a: (50, 50), b: (50, 0)}]
    start, change = regime_start(periods, 0.2)
    assert (start, change) == (3, Change(b, "down", 3, 3))  # b healed after a failed: a is in the regime
    assert regime_start(periods[:3], 0.2) == (2, Change(a, "up", 2, 2))
    assert regime_start([{a: (50, 0)}] * 4, 0.2) == (0, None)
    assert regime_start([], 0.2) == (0, None)


def test_a_blackholed_server_in_the_synthetic_fleet_starts_a_regime_and_noise_does_not() -> None:
    periods = [entity_counts(fleet(healthy, seed)) for seed in range(30)]
    assert regime_start(periods, 0.2) == (0, None)  # 1 % noise over 30 periods of the six hosts
    periods += [entity_counts(fleet(blackholed_db, 100 + seed)) for seed in range(2)]
    start, change = regime_start(periods, 0.2)
    assert start == 30 and change is not None and change.direction == "up" and change.detected == 30
    assert change.entity[1] in {"db-1", "10.0.2.3:5432", "eu/s2"} or change.entity[0] in {"service", "dst_host"}


def test_entity_counts_count_every_entity_of_a_transaction() -> None:
    counts = entity_counts(fleet(blackholed_db, 7))
    n, x = counts[("dst_host", "db-1")]
    assert n == x > 0  # every transaction to db-1 failed
    sn, sx = counts[("service", "10.0.2.3:5432")]
    assert sn == sx and 0 < sn < n  # db-1 is also scraped on :9100
    assert counts[("dst_host", "cache-1")][1] <= 0.05 * counts[("dst_host", "cache-1")][0]


@pytest.mark.parametrize(("n", "x", "want"), [(0, 0, 0.2), (100, 100, 0.95), (100, 30, 0.3), (100, 5, 0.2)])
def test_fault_level_is_the_regimes_own_within_bounds(n: int, x: int, want: float) -> None:
    from meshnode.diagnosis._change import fault_level

    assert fault_level(n, x, 0.2) == pytest.approx(want)


def _dead_server_rarely_called(calls_per_client: int) -> list[Transaction]:
    """Four clients in two sites each call db-1:5432 ``calls_per_client`` times (all time out) and a busy
    healthy service 30 times: a blackholed server whose clients wait out their connect timeouts."""
    out: list[Transaction] = []
    for host, site in (("app-1", "s1"), ("app-2", "s1"), ("app-3", "s2"), ("web-1", "s1")):
        for kind, dst, dport, n in (("timeout", "10.0.2.3", 5432, calls_per_client), ("ok", "10.0.2.2", 6379, 30)):
            out.append(Transaction(host=host, site=site, region="eu", comm="api", pid=1, dst=dst, dport=dport,
                                   service="", dst_host="db-1" if dport == 5432 else "cache-1", dst_site="s2",
                                   dst_region="eu", problem=kind != "ok", kind=kind, count=n))
    return out


@pytest.mark.parametrize(("calls", "sequential", "want"), [
    (2, False, []),  # 8 calls: under MIN_TRANSACTIONS, so the counts alone flag nothing
    # 8 failures: 18 nats; each client's 2 of 2 votes (4.6 nats); db-1 serves one port: the service is named
    (2, True, [("service", "10.0.2.3:5432", True)]),
    (1, True, []),  # 4 failures are 9.2 nats: not enough evidence yet (and 1 of 1 does not vote)
    (6, False, [("service", "10.0.2.3:5432", True)]),  # 24 calls: the counts suffice
])
def test_sequential_evidence_flags_a_rarely_called_dead_server(calls: int, sequential: bool,
                                                              want: list[tuple[str, str, bool]]) -> None:
    cfg = BlameConfig(evidence=DEFAULT_H, part_evidence=PART_H) if sequential else BlameConfig()
    report = blame(_dead_server_rarely_called(calls), cfg)
    assert [(s.kind, s.name, s.shared) for s in report.suspects] == want


def test_sequential_evidence_blames_no_healthy_entity() -> None:
    cfg = BlameConfig(evidence=DEFAULT_H, part_evidence=PART_H)
    for seed in range(20):
        assert blame(fleet(healthy, seed), cfg).suspects == ()
