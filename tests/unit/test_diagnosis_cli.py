"""``meshctl blame``: the JSON document and the rich view, from a real BlameResponse."""

from __future__ import annotations

import pytest

from meshnode.cli._args import parse
from meshnode.cli._blame import blame_dict, blame_view, compare_view
from meshnode.cli._output import render_text
from meshnode.diagnosis import blame, blame_pb
from meshnode.diagnosis._servicer import discovery_pb, retry_advice_pb
from meshnode.diagnosis._taxonomy import DiscoveryChatter, RetryAdvice
from tests._support.blamefleet import blackholed_db, fleet

S = 1_000_000_000


def _response() -> dict[str, object]:
    resp = blame_pb(blame(fleet(blackholed_db, 2)), 1_700_000_000 * S, 1_700_000_060 * S)
    resp.retry_advice.append(retry_advice_pb(RetryAdvice(
        "worker", 9, "10.9.9.9:8080", 1, 40, 40.0, 500.0, 19_500.0, 19_500.0, True, True, 6,
        "worker/9 retries 10.9.9.9:8080 every 0.5 s through outages of 19.5 s (40 attempts per outage): "
        "back off exponentially")))
    resp.discovery.append(discovery_pb(DiscoveryChatter("avahi", "mdns", 4, 1)))
    return blame_dict(resp)


def test_json_uses_proto_names_and_short_entity_kinds() -> None:
    doc = _response()
    top = doc["suspects"][0]  # type: ignore[index]
    assert top["kind"] == "dst_host" and top["rank"] == 1
    assert top["problem_fraction"] > 0.9 and top["hosts"]
    assert {"src", "sport", "dst", "dport", "proto"} <= set(top["examples"][0]) or not top["examples"]
    assert doc["retry_advice"][0]["suggest_backoff"] is True  # type: ignore[index]
    assert doc["discovery"][0]["protocol"] == "mdns"  # type: ignore[index]


def test_view_shows_verdict_suspects_evidence_and_taxonomy_in_80_columns() -> None:
    doc = _response()
    text = render_text(blame_view(doc, plain=True), width=80)
    lines = text.splitlines()
    assert lines[0] == f"verdict: {doc['verdict']}"[:80] or lines[0].startswith("verdict: destination host")
    assert all(len(line) <= 80 for line in lines), text
    assert "dst_host" in text and "evidence for #1 destination host" in text
    assert "! worker/9 retries 10.9.9.9:8080" in text
    assert "discovery chatter, left out of blame: avahi mdns 4" in text


def test_healthy_view_is_the_verdict_line() -> None:
    doc = blame_dict(blame_pb(blame([]), 0, 0))
    text = render_text(blame_view(doc, plain=True), width=80)
    assert text.splitlines()[0] == "verdict: no problem above 20%"
    assert "SUSPECT" not in text


def test_compare_view() -> None:
    doc = {"host": "app-1", "group": "site s1", "verdict": "this host is in the worst 5 % of site s1",
           "destinations": [{"destination": "10.0.2.3:5432", "metrics": [
               {"metric": "rtt_p95", "value": 12300.0, "median": 1100.0, "peers": 20, "worst_fraction": 0.05,
                "outlier": True}]}]}
    text = render_text(compare_view(doc, plain=True), width=80)
    assert "10.0.2.3:5432" in text and "12.30 ms" in text and "outlier" in text


def test_blame_flags() -> None:
    args = parse(["blame", "--since", "2m", "--threshold", "0.3", "--max", "3", "10.0.0.2:443", "--json"])
    assert (args.since, args.threshold, args.max, args.target, args.json) == ("2m", 0.3, 3, "10.0.0.2:443", True)
    with pytest.raises(SystemExit):
        parse(["blame", "--threshold", "1.5"])


def test_view_says_where_the_regime_begins_and_what_the_range_missed() -> None:
    resp = blame_pb(blame(fleet(blackholed_db, 2)), 1_700_000_000 * S, 1_700_000_060 * S)
    resp.regime_since_ns = 1_700_000_042 * S
    resp.change = "destination host db-1 rose to 100% problems"
    resp.coverage = ("asked from 2023-11-13 22:13:20 UTC, but this node holds periods from 2023-11-14 "
                     "21:53:20 UTC only (it holds 1 hour, or since its store began)")
    doc = blame_dict(resp)
    assert doc["regime_since_ns"] == 1_700_000_042 * S and doc["change"] == resp.change
    text = render_text(blame_view(doc, plain=True), width=200)
    lines = text.splitlines()
    assert lines[2] == ("analysed since 22:14:02 UTC, when destination host db-1 rose to 100% problems "
                        "(--whole for the whole range)")
    assert lines[3] == f"note: {resp.coverage}"
    healthy = render_text(blame_view(blame_dict(blame_pb(blame([]), 0, 0)), plain=True), width=80)
    assert "analysed since" not in healthy and "note:" not in healthy


def test_blame_whole_flag() -> None:
    assert parse(["blame", "--whole", "--since", "1h"]).whole is True
    assert parse(["blame"]).whole is False
