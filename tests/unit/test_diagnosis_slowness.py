"""Slow path or slow server (seed 001): the problem kinds from a flow's timing and RTT, the taxonomy's cause of
each kind, and blame naming a slow service apart from a slow client uplink."""

from __future__ import annotations

import pytest

from meshnode._model import FlowRecord
from meshnode.diagnosis import Place, blame, transactions_from_flows, transactions_from_rollups
from meshnode.diagnosis._taxonomy import (
    CAUSE_FAILURE,
    CAUSE_PATH,
    CAUSE_SERVER,
    DEGRADED,
    FAILING,
    SLOW_TO_ANSWER,
    SLOW_TO_CARRY,
    cause_of,
    slowness,
)
from meshnode.summary._problems import problem_kind
from meshnode.v1 import flow_pb2
from tests.unit._flows import flow

LAN = dict(srtt_us=300, min_rtt_us=200, max_rtt_us=400)


@pytest.mark.parametrize(("changes", "kind"), [
    # 200 ms answers once the request was acknowledged, over a 0.4 ms RTT
    (dict(responses=3, response_us_sum=601_000, answer_us_sum=600_000, **LAN), "slow_server"),
    (dict(responses=3, response_us_sum=301_000, answer_us_sum=3 * 100_000 - 1, **LAN), "ok"),
    (dict(responses=3, response_us_sum=301_000, answer_us_sum=3 * 100_000, **LAN), "slow_server"),
    (dict(responses=0, **LAN), "ok"),  # no exchange completed: nothing to judge
    (dict(responses=40, response_us_sum=40 * 2_000, answer_us_sum=40 * 1_500, **LAN), "ok"),
    # 300 ms exchanges, all but 1 ms of each spent carrying the request (an upload through a rate limit)
    (dict(responses=3, response_us_sum=900_000, answer_us_sum=3_000, srtt_us=30_000, min_rtt_us=25_000,
          max_rtt_us=40_000), "ok"),
    # the RTT rose 80 ms over its minimum: queueing; answers late only by the queue are the path's fault
    (dict(responses=3, response_us_sum=600_000, answer_us_sum=600_000, srtt_us=80_000, min_rtt_us=200,
          max_rtt_us=80_200), "slow_path"),
    (dict(responses=0, srtt_us=50_000, min_rtt_us=200, max_rtt_us=50_199), "ok"),
    (dict(responses=0, srtt_us=50_000, min_rtt_us=200, max_rtt_us=50_200), "slow_path"),
    (dict(responses=0, srtt_us=90_000, min_rtt_us=0, max_rtt_us=90_000), "ok"),  # no minimum sampled
    # a long round trip that is the path's normal (another continent) is neither
    (dict(responses=5, response_us_sum=5 * 150_000, answer_us_sum=5 * 5_000, srtt_us=140_000, min_rtt_us=138_000,
          max_rtt_us=145_000), "ok"),
    (dict(responses=3, answer_us_sum=600_000, retransmits=5, packets_tx=100, **LAN), "retransmits"),
    (dict(responses=3, answer_us_sum=600_000, connect_us=1_000_500, **LAN), "slow_connect"),
    (dict(responses=3, answer_us_sum=600_000, outcome="reset", **LAN), "reset"),
])
def test_problem_kind_from_timing_and_rtt(changes: dict, kind: str) -> None:
    assert problem_kind(flow(1, **changes)) == kind


@pytest.mark.parametrize(("kind", "cause"), [
    ("timeout", CAUSE_FAILURE), ("refused", CAUSE_FAILURE), ("connect_pending", CAUSE_FAILURE),
    ("retransmits", CAUSE_PATH), ("slow_path", CAUSE_PATH), ("slow_connect", CAUSE_PATH),
    ("slow_server", CAUSE_SERVER), ("ok", ""),
])
def test_cause_of_each_kind(kind: str, cause: str) -> None:
    assert cause_of(kind) == cause


@pytest.mark.parametrize(("kinds", "verdict"), [
    ({"timeout": 5, "slow_server": 5}, FAILING),
    ({"timeout": 4, "slow_server": 6}, SLOW_TO_ANSWER),
    ({"slow_server": 10, "slow_path": 5}, SLOW_TO_ANSWER),  # two thirds
    ({"slow_server": 10, "slow_path": 6}, DEGRADED),
    ({"retransmits": 7, "slow_path": 3, "slow_server": 5}, SLOW_TO_CARRY),
    ({"slow_connect": 1}, SLOW_TO_CARRY),
    ({}, FAILING),
])
def test_slowness_of_an_entitys_problems(kinds: dict[str, int], verdict: str) -> None:
    assert slowness(kinds) == verdict


def _fleet(slow_server: bool, slow_uplink: bool) -> list:
    """Clients a and c, two processes each, call b's two services 6 times each; b:8081 answers in 200 ms
    when ``slow_server``; a's flows queue on its uplink (RTT 90 ms over 0.3 ms) when ``slow_uplink``."""
    members = {"10.0.0.2": Place("b", "s1", "eu")}
    txns = []
    for host in ("a", "c"):
        recs: list[FlowRecord] = []
        for pid, comm in ((11, "api"), (12, "worker")):
            for port in (8080, 8081):
                for _ in range(6):
                    timing = dict(responses=2, response_us_sum=2 * 900, answer_us_sum=2 * 500, **LAN)
                    if slow_server and port == 8081:
                        timing.update(response_us_sum=2 * 200_500, answer_us_sum=2 * 200_100)
                    if slow_uplink and host == "a":
                        timing.update(srtt_us=90_000, max_rtt_us=91_000, response_us_sum=2 * 95_000)
                    recs.append(flow(len(recs) + 1, pid=pid, comm=comm, dst="10.0.0.2", dport=port, **timing))
        txns += transactions_from_flows(recs, labels={"host": host, "site": "s1", "region": "eu"}, members=members)
    return txns


def test_blame_names_a_slow_server_as_slow_to_answer() -> None:
    report = blame(_fleet(slow_server=True, slow_uplink=False))
    top = report.suspects[0]
    assert (top.kind, top.name, top.shared) == ("service", "10.0.0.2:8081", True)
    assert top.stats.problem_kinds == {"slow_server": 24}
    assert top.verdict == ("service b:8081 (10.0.0.2) is slow to answer: 100% of 24 transactions from 2 hosts "
                           "in 1 site (slow_server)")
    assert [s.name for s in report.suspects] == ["10.0.0.2:8081"]  # b's other service and the clients: fine


def test_blame_names_a_slow_client_uplink_as_slow_to_carry() -> None:
    report = blame(_fleet(slow_server=False, slow_uplink=True))
    top = report.suspects[0]
    assert (top.kind, top.name, top.shared) == ("host", "a", True)
    assert top.stats.problem_kinds == {"slow_path": 24}
    assert top.verdict.startswith("host a is slow to carry: 100% of 24 transactions from 1 host")
    assert [s.name for s in report.suspects] == ["a"]


def test_digest_rollups_carry_slow_servers_and_paths_to_a_peers_blame() -> None:
    r = flow_pb2.Rollup(key="10.0.0.2:8081", flows=30, useful=30, flows_slow_server=20, flows_slow_path=4,
                        flows_retransmitting=1)
    from meshnode.diagnosis._source import NodeSource
    from meshnode.v1 import mesh_pb2

    src = NodeSource({"host": "me"})
    src.add_digest(mesh_pb2.Digest(node_id="n2", seq=1, period_end_ns=10, labels={"host": "p"}, by_destination=[r]))
    kinds = {t.kind: t.count for t in src.transactions(0, 20)}
    assert kinds == {"ok": 5, "retransmits": 1, "slow_path": 4, "slow_server": 20}
    direct = transactions_from_rollups([r], labels={"host": "p"}, problem_flows={
        r.key: {"retransmits": 1, "slow_path": 4, "slow_server": 20}})
    assert {t.kind: t.count for t in direct} == kinds
