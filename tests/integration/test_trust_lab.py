"""Cross-validation in a real fleet: five `meshnode run` nodes with the eBPF sensor on five lab hosts, export
period 2 s, every node with the same privacy policy (lab IPv4 kept, every other address hashed).

- An honest fleet under 5 % random loss on one link, 10 export periods of real TCP and UDP traffic: thousands
  of claims matched, no node flagged anywhere.
- With the privacy rule, the lab's IPv6 addresses are "external": traffic to one of them appears in the
  gossiped digests only as its keyed hash, never raw (asserted on the SignedDigest payload bytes from
  Mesh.Digests), and its flows are still cross-validated.
- Host e runs with the test-only lie (MESHNODE_TEST_LIE=double_tx:<a>:<port>): once it sends to that port,
  node a flags it within about one export period, leaves it out of fleet aggregates (hosts_excluded), and
  `meshctl validate --json` names the flow.
- Challenges (`meshctl validate --challenge`) from node a: an honest node passes (b connects to its mesh port,
  its next digest reports the connections); the liar, which also hides what c sends to its port 31001
  (MESHNODE_TEST_LIE=...,hide:<c>:31001), fails when c connects there, and is flagged.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests._support import traffic as t
from tests._support.labnode import MESHNODE
from tests._support.trustfleet import (
    CHALLENGE_PORT,
    DIGESTS,
    HOSTS,
    LIE_PORT,
    PERIOD,
    SECRET,
    Fleet,
    running_fleet,
)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    with running_fleet(tmp_path_factory.mktemp("trust"), HOSTS) as f:
        yield f


def _transfers(fleet: Fleet, pairs: list[tuple[str, str]], port: int, size: int, *, v6: bool = False) -> None:
    lab = fleet.lab
    procs = [t.start(lab[src], t.TCP_BULK, lab[dst].ip6 if v6 else lab[dst].ip, port, size) for src, dst in pairs]
    for p in procs:
        t.result(p, timeout=60)


def test_honest_fleet_with_loss_flags_nobody(fleet: Fleet) -> None:
    lab = fleet.lab
    sinks = [t.start(lab[h], t.TCP_SINK, 32000) for h in HOSTS]
    echo = t.start(lab["b"], t.UDP_ECHO, "4", 32001)
    for s in [*sinks, echo]:
        t.wait_ready(s)
    before = {h: fleet.validate(h)["counters"].get("claims_matched", 0) for h in HOSTS}
    pairs = [(src, dst) for src in HOSTS for dst in HOSTS if src != dst]
    t0 = time.monotonic()
    try:
        with lab["b"].loss(5, peer=lab["c"]):
            i = 0
            while time.monotonic() - t0 < 10 * PERIOD:
                _transfers(fleet, pairs[i % len(pairs): i % len(pairs) + 4], 32000, 200_000 + 1000 * i)
                for src in "acd":
                    t.result(t.start(lab[src], t.UDP_QUERY, lab["b"].ip, 32001, 300, 1.0))
                i += 4
        # judged once the witnesses' digests are in (finals at once; interims and absences after the grace)
        time.sleep(3 * PERIOD)
        docs = {h: fleet.validate(h) for h in HOSTS}
    finally:
        for s in [*sinks, echo]:
            s.kill()
    matched = {h: docs[h]["counters"].get("claims_matched", 0) - before[h] for h in HOSTS}
    print(f"\nhonest fleet, 10 periods, 5 % loss b<->c: claims matched per node {matched}; "
          f"evidence per node { {h: len(d['evidence']) for h, d in docs.items()} }; reasons "
          f"{sorted({(e['reason'], e['severity']) for d in docs.values() for e in d['evidence']})}")
    for h, d in docs.items():
        bad = {s["node_id"] for s in d["scores"] if s["flagged"]}
        assert not bad, f"{h} flags {bad}: {[e for e in d['evidence'] if e['blamed'] in bad][:6]}"
        assert all(s["score"] >= 0.5 for s in d["scores"])
        assert matched[h] >= 20, f"{h} matched only {matched[h]} claims: cross-validation did not run"


def test_privacy_hashes_external_addresses_in_gossiped_bytes(fleet: Fleet) -> None:
    from meshnode.trust import PrivacyPolicy

    lab = fleet.lab
    b6 = lab["b"].ip6
    token = PrivacyPolicy.from_config({"outside": "hash", "secret": SECRET}).hash_address(b6)
    sink = t.start(lab["b"], t.TCP_SINK, 32002)
    t.wait_ready(sink)
    try:
        sink6 = t.start(lab["b"], t.TCP_SINK.replace('socket.socket()', 'socket.socket(socket.AF_INET6)')
                        .replace('"0.0.0.0"', '"::"'), 32003)
        t.wait_ready(sink6)
        _transfers(fleet, [("c", "b"), ("d", "b")], 32003, 150_000, v6=True)

        def gossiped() -> tuple[bool, Any]:
            out = lab["a"].run([str(Path(MESHNODE).parent / "python"), "-c", DIGESTS, fleet.addr("a")], timeout=30)
            payloads = [base64.b64decode(p) for p in json.loads(out.stdout)]
            return any(token.encode() in p for p in payloads), payloads

        fleet.wait(gossiped, 6 * PERIOD, f"b's IPv6 address as its hash {token} in a digest held by a")
        for _ in range(3):  # over several periods: digests of every node, as a holds them
            _, payloads = gossiped()
            assert len(payloads) == 5
            for p in payloads:
                for raw in (b6.encode(), lab["c"].ip6.encode(), lab["d"].ip6.encode()):
                    assert raw not in p, f"raw external address {raw!r} gossiped"
            time.sleep(PERIOD)
    finally:
        sink.kill()
        if "sink6" in locals():
            sink6.kill()
    doc = fleet.validate("b")
    bad = {s["node_id"] for s in doc["scores"] if s["flagged"]}
    assert not bad, (f"b flags {[h for h, n in fleet.ids.items() if n in bad]}: "
                     f"{[e for e in doc['evidence'] if e['blamed'] in bad][:6]}")


def test_liar_is_flagged_left_out_of_aggregates_and_named_in_the_evidence(fleet: Fleet) -> None:
    lab = fleet.lab
    liar = fleet.ids["e"]
    assert liar not in fleet.flagged("a")
    sink = t.start(lab["a"], t.TCP_SINK, LIE_PORT)
    t.wait_ready(sink)
    size = 300_000
    try:
        _transfers(fleet, [("e", "a"), ("d", "a")], LIE_PORT, size)
        took = fleet.wait(lambda: (liar in fleet.flagged("a"), None), 6 * PERIOD, "a flagging the liar e")
    finally:
        sink.kill()
    print(f"\nliar flagged by a {took:.1f} s after its transfer ended (export period {PERIOD:g} s)")
    # the period holding the traffic closes (<= 1 period), its digest is gossiped, and a judges at its own
    # next period end (<= 1 more): about one export period after the lying digest is published
    assert took <= 2 * PERIOD + 2.0

    doc = fleet.validate("a")
    ends = {(lab["e"].ip, lab["a"].ip)}
    named = [e for e in doc["evidence"]
             if e["blamed"] == liar and {(e["src"], e["dst"]), (e["dst"], e["src"])} & ends
             and LIE_PORT in (e["sport"], e["dport"])]
    assert named, f"no evidence names the lying flow: {doc['evidence'][:5]}"
    e = named[0]
    assert e["proto"] == "tcp" and e["reason"] == "acked_more_than_received"
    assert sorted([int(e["claimed"]), int(e["witnessed"])]) == [size, 2 * size]
    assert {e["reporter"], e["witness"]} == {fleet.ids["a"], liar}

    # every node keeps a gRPC connection to a's port open, so each latest digest has a rollup for it
    q = fleet.meshctl("a", "query", "--destination", fleet.addr("a"))
    assert q is not None
    others = {s["node_id"] for s in fleet.validate("a")["scores"] if s["flagged"]} - {liar}
    assert (q["hosts_excluded"], q["excluded"]) == (1, [liar]), (
        {h for h, n in fleet.ids.items() if n in others},
        [e for e in fleet.validate("a")["evidence"] if e["blamed"] in others][:4])
    [row] = q["aggregates"]
    assert row["hosts_excluded"] == 1 and row["hosts"] >= 1, row
    peers = fleet.meshctl("a", "peers")
    assert [p["node_id"] for p in peers["peers"] if p["flagged"]] == [liar]


def test_challenge_an_honest_node_passes_and_the_liar_fails(fleet: Fleet) -> None:
    lab = fleet.lab
    ids = fleet.ids
    t0 = time.monotonic()
    ok = fleet.meshctl("a", "validate", "--challenge", ids["d"], "--prober", ids["b"], "--count", "10")
    took_ok = time.monotonic() - t0
    assert ok is not None, "meshctl validate --challenge failed"
    assert (ok["suspect"], ok["prober"], ok["target"]) == (ids["d"], ids["b"], fleet.addr("d"))
    assert ok["verdict"] == "passed", ok
    assert ok["attempts"] == 10 and ok["connected"] == 10 and ok["reported"] >= 10 - ok["tolerance"]
    assert not ok["flagged"] and ok["score"] >= 0.5

    sink = t.start(lab["e"], t.TCP_SINK, CHALLENGE_PORT)
    t.wait_ready(sink)
    try:
        t0 = time.monotonic()
        bad = fleet.meshctl("a", "validate", "--challenge", ids["e"], "--prober", ids["c"], "--count", "10",
                            "--port", str(CHALLENGE_PORT))
        took_bad = time.monotonic() - t0
    finally:
        sink.kill()
    assert bad is not None, "meshctl validate --challenge failed"
    print(f"\nchallenges from a: honest d {ok['verdict']} in {took_ok:.1f} s ({ok['reported']}/{ok['connected']}), "
          f"liar e {bad['verdict']} in {took_bad:.1f} s ({bad['reported']}/{bad['connected']}): {bad['detail']}")
    assert bad["target"] == f"{lab['e'].ip}:{CHALLENGE_PORT}"
    assert bad["verdict"] == "failed", bad
    assert (bad["connected"], bad["reported"]) == (10, 0)
    assert bad["flagged"] and bad["score"] < 0.5
    doc = fleet.validate("a")
    assert doc["counters"].get("challenges_failed", 0) >= 1 and doc["counters"].get("challenges_passed", 0) >= 1
    [e] = [e for e in doc["evidence"] if e["field"] == "challenge"]
    assert (e["reporter"], e["witness"], e["blamed"], e["claimed"], e["witnessed"]) == (
        ids["e"], ids["c"], ids["e"], "0", "10")
