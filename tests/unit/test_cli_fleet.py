"""meshctl's rendering of a fleet flow query: the HOST column, the footer naming answered / missing /
untrusted nodes, and the JSON Lines (``flows --json`` records with ``host``, then one summary object)."""

from __future__ import annotations

import argparse
import io
import json
import time

import pytest

from meshnode.cli._convert import FLOW_FIELDS
from meshnode.cli._fleet import Summary, footer, json_line, run, text_lines
from meshnode.v1 import flow_pb2, mesh_pb2

F1 = flow_pb2.Flow(node_id="aaaa", comm="curl", pid=7, dst="10.0.0.2", dport=443, outcome=flow_pb2.ESTABLISHED,
                   end_ns=1_700_000_000_000_000_000, bytes_tx=100, srtt_us=900)
F2 = flow_pb2.Flow(node_id="bbbb", comm="psql", pid=9, dst="10.0.0.3", dport=5432, outcome=flow_pb2.REFUSED,
                   end_ns=1_700_000_001_000_000_000)


def _resp() -> mesh_pb2.FleetFlowsResponse:
    return mesh_pb2.FleetFlowsResponse(
        flows=[F1, F2], keys=[mesh_pb2.FleetFlowKey(row_id=1), mesh_pb2.FleetFlowKey(row_id=2)], partial=True,
        nodes=[mesh_pb2.NodeStatus(node_id="aaaa", host="web-1", answered=True, records=1),
               mesh_pb2.NodeStatus(node_id="bbbb", host="db-1", answered=True, records=1),
               mesh_pb2.NodeStatus(node_id="cccc", host="db-2", error="DEADLINE_EXCEEDED")],
        excluded=["dddd"])


def test_text_has_a_host_column_and_a_footer() -> None:
    lines = text_lines([F1, F2], {"aaaa": "web-1", "bbbb": "a-very-long-host-name"}, wide=False, header=True)
    assert lines == [
        "HOST         TIME     PROCESS        DESTINATION           OUTCOME          TX      RX    RTT",
        "web-1        22:13:20 curl/7         10.0.0.2:443          established   100 B     0 B  900us",
        "a-very-long… 22:13:21 psql/9         10.0.0.3:5432         refused         0 B     0 B      -",
    ]
    s = Summary()
    s.add(_resp(), 2)
    assert footer(s.doc()) == [
        "2 records from 2 nodes: db-1 (1), web-1 (1)",
        "missing 1 (their records are not shown): db-2 (DEADLINE_EXCEEDED)",
        "untrusted, not asked 1: dddd",
    ]
    # with site aggregates, sites no relay answered for are listed by their error (no node id to name)
    lost = mesh_pb2.FleetFlowsResponse(nodes=[
        mesh_pb2.NodeStatus(node_id="eeee", host="fra1-a", error="site relay: UNAVAILABLE"),
        mesh_pb2.NodeStatus(error="site eu/fra1: no relay answered (UNAVAILABLE); its members were not asked"),
        mesh_pb2.NodeStatus(error="site eu/par1: no relay answered (UNAVAILABLE); its members were not asked")])
    s.add(lost, 0)
    assert footer(s.doc())[1] == (
        "missing 4 (their records are not shown): "
        "site eu/fra1: no relay answered (UNAVAILABLE); its members were not asked, "
        "site eu/par1: no relay answered (UNAVAILABLE); its members were not asked, "
        "db-2 (DEADLINE_EXCEEDED), fra1-a (site relay: UNAVAILABLE)")


def test_a_member_that_left_its_site_is_listed_apart_and_a_hidden_one_missing() -> None:
    """A relay's ``left its site`` status is not a missing member (the answer is not partial for it); a
    member the site's aggregate names that its relay hid, and a count shortfall, are missing."""
    s = Summary()
    s.add(mesh_pb2.FleetFlowsResponse(nodes=[
        mesh_pb2.NodeStatus(node_id="aaaa", host="web-1", answered=True, records=3, via="rrrr"),
        mesh_pb2.NodeStatus(node_id="ffff", host="web-2", error="left its site", via="rrrr")]), 3)
    doc = s.doc()
    assert (doc["partial"], doc["missing"], doc["left"]) == (
        False, [], [{"node_id": "ffff", "host": "web-2", "via": "rrrr"}])
    assert footer(doc) == ["3 records from 1 node: web-1 (3)", "left their site, not asked 1: web-2"]
    s.add(mesh_pb2.FleetFlowsResponse(nodes=[
        mesh_pb2.NodeStatus(node_id="gggg", error="not reported by its relay", via="rrrr"),
        mesh_pb2.NodeStatus(error="site eu/b: relay rrrr listed 2 of 3 members", via="rrrr")]), 0)
    doc = s.doc()
    assert doc["partial"] and [(d["node_id"], d["error"]) for d in doc["missing"]] == [
        ("", "site eu/b: relay rrrr listed 2 of 3 members"), ("gggg", "not reported by its relay")]


def test_json_lines_are_flows_records_with_host_then_a_summary() -> None:
    line = json.loads(json_line(F1, "web-1"))
    assert list(line) == [*FLOW_FIELDS[:2], "host", *FLOW_FIELDS[2:]]
    assert (line["node_id"], line["host"], line["dport"], line["outcome"]) == ("aaaa", "web-1", 443, "established")

    class FakeNode:
        def fleet_flows(self, req: mesh_pb2.FleetFlowsRequest, limit: int) -> list[mesh_pb2.FleetFlowsResponse]:
            assert (req.flows.number, req.selector["site"], req.deadline_ms, limit) == (0, "s1", 1500, 0)
            assert list(req.flows.whitelist[0].dport) == [443]
            return [_resp()]

    args = argparse.Namespace(where=["site=s1"], deadline=1.5, per_site=False, limit=0, interim=False, json=True,
                              wide=False, since="5m", proc=None, pid=None, dst=None, port=None, dport=[443],
                              cgroup=None, outcome=None, proto=None, direction=None)
    out = io.StringIO()
    assert run(args, FakeNode(), 1, 0, out) == 0  # type: ignore[arg-type]
    docs = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [(d["node_id"], d["host"]) for d in docs[:2]] == [("aaaa", "web-1"), ("bbbb", "db-1")]
    assert docs[2] == {"summary": {
        "records": 2, "pages": 1, "partial": True, "more": False,
        "answered": [{"node_id": "bbbb", "host": "db-1", "records": 1, "via": ""},
                     {"node_id": "aaaa", "host": "web-1", "records": 1, "via": ""}],
        "missing": [{"node_id": "cccc", "host": "db-2", "error": "DEADLINE_EXCEEDED", "via": ""}],
        "left": [], "untrusted": ["dddd"]}}


class _Node:
    def __init__(self) -> None:
        self.asked: list[mesh_pb2.FleetFlowsRequest] = []

    def fleet_flows(self, req: mesh_pb2.FleetFlowsRequest, limit: int) -> list[mesh_pb2.FleetFlowsResponse]:
        self.asked.append(req)
        return [_resp()]


def test_query_fleet_and_flows_fleet_ask_the_same(capsys: pytest.CaptureFixture[str]) -> None:
    from meshnode.cli._args import parse
    from meshnode.cli._commands import cmd_flows, cmd_query

    outs = []
    for argv in (["query", "--fleet", "--dport", "443", "--where", "site=s1", "--per-site", "--since", "5m", "--json"],
                 ["flows", "--fleet", "--dport", "443", "--where", "site=s1", "--per-site", "--since", "5m", "--json"]):
        node = _Node()
        args = parse(argv)
        assert (cmd_query if argv[0] == "query" else cmd_flows)(args, node) == 0  # type: ignore[arg-type]
        req = node.asked[0]
        assert (dict(req.selector), req.per_site, list(req.flows.whitelist[0].dport), req.deadline_ms) == (
            {"site": "s1"}, True, [443], 2000)
        assert abs(req.flows.since_ns - (time.time_ns() - 300 * 10**9)) < 5 * 10**9
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1] and json.loads(outs[0].splitlines()[-1])["summary"]["records"] == 2


@pytest.mark.parametrize("argv", [["flows", "--where", "site=s1"], ["flows", "--per-site"],
                                  ["query", "--dport", "443"], ["query", "--since", "5m"],
                                  ["flows", "--fleet", "--follow"]])
def test_fleet_flags_without_fleet_are_usage_errors(argv: list[str]) -> None:
    from meshnode.cli._args import parse
    from meshnode.cli._commands import cmd_flows, cmd_query
    from meshnode.cli._exceptions import UsageError

    args = parse(argv)
    with pytest.raises(UsageError, match="--fleet"):
        (cmd_query if argv[0] == "query" else cmd_flows)(args, _Node())  # type: ignore[arg-type]
