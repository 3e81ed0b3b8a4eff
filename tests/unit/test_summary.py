"""Export periods and rollups, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from meshnode.summary import (
    PeriodBuilder,
    PeriodSummary,
    percentile,
    rollup,
    service_name,
    with_service,
)
from tests._support.rollups import reference_rollup
from tests.unit._flows import flow


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [([], 0.5, 0.0), ([5], 0.95, 5.0), ([1, 2, 3, 4], 0.5, 2.5), ([10, 20, 30, 40, 50], 0.95, 48.0)],
)
def test_percentile(values, q, expected) -> None:
    assert percentile(values, q) == pytest.approx(expected)


def test_rollups_by_process_destination_cgroup() -> None:
    recs = [flow(i) for i in range(1, 8)] + [flow(i, outcome="refused", bytes_tx=0, bytes_rx=0, srtt_us=0)
                                             for i in range(8, 11)]
    recs.append(flow(11, comm="dig", pid=7, dst="10.0.0.53", dport=53, proto="udp", outcome="udp_answered",
                     cgroup="", srtt_us=300))
    [curl, dig] = rollup(recs, "process")
    assert (curl.key, curl.flows, curl.useful, curl.failures) == ("curl/100", 10, 7, {"refused": 3})
    assert (curl.bytes_tx, curl.bytes_rx, curl.rtt_p50_us) == (700, 14000, 1000)
    assert (dig.key, dig.flows, dig.useful) == ("dig/7", 1, 1)
    dests = rollup(recs, "destination", with_services=True)
    assert [(d.key, d.service) for d in dests] == [("10.0.0.2:443", "https"), ("10.0.0.53:53", "domain")]
    assert [c.key for c in rollup(recs, "cgroup")] == ["/system.slice/app.service", "/"]


@pytest.mark.parametrize(
    ("port", "proto", "name"), [(443, "tcp", "https"), (22, "tcp", "ssh"), (53, "udp", "domain"),
                                (1, "tcp", "tcpmux"), (61999, "tcp", ""), (0, "tcp", ""), (70000, "tcp", "")],
)
def test_service_name(port, proto, name) -> None:
    assert service_name(port, proto) == name


def test_with_service_uses_local_port_for_inbound() -> None:
    assert with_service(flow(1, direction="inbound", sport=22, dport=50000)).service == "ssh"
    assert with_service(flow(1, service="custom")).service == "custom"


def test_long_transfer_shows_up_every_period_with_deltas() -> None:
    """A flow active over three periods: interim twice, then final; rollups count each period's bytes."""
    b = PeriodBuilder("node-a")
    active = flow(1, kind="interim", bytes_tx=1000, bytes_rx=10)
    s1 = b.build(1, 0, 10, [], [active], {"flows_recorded": 0})
    s2 = b.build(2, 10, 20, [], [active.replace(bytes_tx=3000, bytes_rx=30)], {})
    s3 = b.build(3, 20, 30, [active.replace(kind="final", bytes_tx=3500, bytes_rx=35), flow(2)], [], {})
    assert [(s.interim_flows, s.final_flows) for s in (s1, s2, s3)] == [(1, 0), (1, 0), (0, 2)]
    assert [s.by_process[0].bytes_tx for s in (s1, s2, s3)] == [1000, 2000, 500 + 100]
    assert sum(s.by_process[0].bytes_rx for s in (s1, s2, s3)) == 35 + 2000


def test_summary_json_round_trip() -> None:
    s = PeriodBuilder("n").build(4, 1, 2, [flow(1), flow(2, outcome="timeout")], [], {"lost_events": 3})
    again = PeriodSummary.from_json(s.to_json())
    assert again == s
    assert again.completeness == {"lost_events": 3}
    assert again.by_destination[0].failures == {"timeout": 1}


@pytest.mark.parametrize("seed", range(8))
def test_columnar_rollups_equal_the_per_record_rule(seed) -> None:
    import dataclasses
    import random

    rnd = random.Random(seed)
    outcomes = ["established", "refused", "timeout", "reset", "udp_answered", "udp_unanswered", "in_progress"]
    recs = [flow(i, comm=rnd.choice(["curl", "", "?", "dig"]), pid=rnd.choice([1, 2, 3]),
                 dst=rnd.choice(["10.0.0.2", "fd00::5", "10.0.0.3"]), dport=rnd.choice([443, 53, 8080, 61999]),
                 src=rnd.choice(["10.0.0.1", "fd00::1"]), sport=rnd.choice([22, 443, 40000]),
                 direction=rnd.choice(["outbound", "inbound"]), proto=rnd.choice(["tcp", "udp"]),
                 outcome=rnd.choice(outcomes), cgroup=rnd.choice(["", "/", "/a.service"]),
                 retransmits=rnd.choice([0, 0, 1, 5, 300]), packets_tx=rnd.choice([0, 1, 100, 10_000]),
                 connect_us=rnd.choice([0, 150_000, 250_000]), srtt_us=rnd.choice([0, 7, 100, 1001, 50_000]),
                 bytes_tx=rnd.randrange(1 << 40), bytes_rx=rnd.randrange(1 << 20),
                 service=rnd.choice(["", "", "custom"]), delivery_rate=rnd.choice([0, 0, 1, 125_000, 10**9]),
                 remote_name=rnd.choice(["", "", "db.example", "web.test"]), **_timing(rnd))
            for i in range(rnd.randrange(1, 300))]
    for key in ("process", "destination", "service", "cgroup"):
        got = [dataclasses.asdict(r) for r in rollup(recs, key, with_services=True)]
        totals = [(r, (r.bytes_tx, r.bytes_rx, r.retransmits)) for r in recs]
        assert got == reference_rollup(totals, key, with_services=True), key


def _timing(rnd: Any) -> dict[str, int]:
    """Random exchange timing and RTTs, around the slow-path and slow-server thresholds."""
    n = rnd.choice([0, 0, 1, 3, 1000])
    mean = rnd.choice([0, 1, 900, 150_000, 2**31])
    min_rtt = rnd.choice([0, 100, 20_000])
    return dict(responses=n, response_us_sum=n * mean + (n > 0) * rnd.randrange(n or 1),
                answer_us_sum=n * rnd.choice([0, 99_999, 100_000, 150_000]),
                response_us_max=mean + rnd.randrange(1000), first_byte_us=rnd.choice([0, 1, 2, 3, 150_000]),
                min_rtt_us=min_rtt, max_rtt_us=min_rtt + rnd.choice([0, 49_999, 50_000, 200_000]))


def test_with_services_on_columns_equals_with_service_per_record() -> None:
    import numpy as np

    from meshnode._batch import FlowBatch
    from meshnode.summary import with_services

    recs = [
        flow(1, dport=443), flow(2, dport=53, proto="udp"), flow(3, direction="inbound", sport=22, dport=50000),
        flow(4, service="custom"), flow(5, direction="unknown", sport=8080, dport=9), flow(6, dport=65535),
        flow(7, dport=443), flow(8, direction="inbound", sport=53, dport=40000, proto="udp"), flow(9, dport=0),
    ]
    batch = FlowBatch.from_records(recs)
    rows = np.array([8, 0, 3, 2, 2, 5, 1, 4, 6, 7], dtype=np.intp)
    assert with_services(batch, rows).tolist() == [with_service(recs[i]).service for i in rows.tolist()]
