"""meshctl validate and peers with trust: rich views from plain data at 80 columns, and flagged peers marked."""

from __future__ import annotations

import textwrap

from meshnode.cli._convert import message_dict
from meshnode.cli._output import render_text
from meshnode.cli._trust import mark_flagged, validate_view
from meshnode.cli._views import peers_view
from meshnode.v1 import mesh_pb2, trust_pb2

LIAR = "95fd992f9a14b9b8"
HONEST = "b752b16931a98a97"
AT = 1_700_000_000_000_000_000


def sample_validate() -> trust_pb2.ValidateResponse:
    return trust_pb2.ValidateResponse(
        threshold=0.5,
        scores=[trust_pb2.TrustScore(node_id=LIAR, score=0.16, flagged=True, evidence=2, last_evidence_ns=AT),
                trust_pb2.TrustScore(node_id="c0ffee0000000001", score=0.85, evidence=1, last_evidence_ns=AT)],
        evidence=[trust_pb2.Evidence(reporter=HONEST, witness=LIAR, proto="tcp", src="10.20.0.1", sport=40000,
                                     dst="10.20.0.2", dport=7400, field="bytes_rx", claimed="700",
                                     witnessed="1400", reason="acked_more_than_received",
                                     severity=trust_pb2.CONTRADICTION, at_ns=AT, blamed=LIAR),
                  trust_pb2.Evidence(reporter=LIAR, witness="c0ffee0000000001", proto="udp", src="fd00::2",
                                     sport=5353, dst="fd00::3", dport=53, field="existence", claimed="present",
                                     witnessed="absent", reason="missing_at_witness",
                                     severity=trust_pb2.CONTRADICTION, at_ns=AT)],
        counters={"claims_checked": 1234, "claims_matched": 1200, "evidence": 2, "digests_validated": 50,
                  "unverifiable_witness_gap": 3, "unverifiable_no_witness": 4},
    )


def _text(s: str) -> str:
    return textwrap.dedent(s).lstrip("\n")


def test_validate_view_names_flagged_nodes_scores_and_the_flows_of_the_evidence() -> None:
    out = render_text(validate_view(message_dict(sample_validate()), plain=True), width=80)
    assert max(len(line) for line in out.splitlines()) <= 80
    assert out == _text(EXPECTED)


def test_validate_view_without_evidence() -> None:
    out = render_text(validate_view(message_dict(trust_pb2.ValidateResponse(threshold=0.5)), plain=True))
    assert out.splitlines()[0] == "no node flagged: every peer's reports agree with the other ends of its flows"


def test_validate_view_wide_keeps_full_ids_and_reasons() -> None:
    out = render_text(validate_view(message_dict(sample_validate()), wide=True, plain=True), width=200)
    assert f"{HONEST}  {LIAR}* tcp 10.20.0.1:40000→10.20.0.2:7400" in out
    assert "acked_more_than_received (contradiction)" in out


def test_peers_marks_flagged_members() -> None:
    peers = mesh_pb2.PeersResponse(peers=[
        mesh_pb2.Peer(node_id=HONEST, addr="10.20.0.1:7400", state=mesh_pb2.ALIVE, is_self=True, digest_age_ms=500),
        mesh_pb2.Peer(node_id=LIAR, addr="10.20.0.2:7400", state=mesh_pb2.ALIVE, digest_age_ms=700),
    ])
    doc = mark_flagged(message_dict(peers), message_dict(sample_validate()))
    assert [(p["node_id"], p["flagged"], p["trust_score"]) for p in doc["peers"]] == [
        (HONEST, False, 1.0), (LIAR, True, 0.16)]
    out = render_text(peers_view(doc, plain=True), width=80)
    assert f"{LIAR}!" in out and f"{HONEST}*!" not in out
    assert f"! flagged by cross-validation (left out of fleet aggregates): {LIAR}" in out
    # a node without the trust service: nothing marked, scores unknown
    doc = mark_flagged(message_dict(peers), None)
    assert [(p["flagged"], p["trust_score"]) for p in doc["peers"]] == [(False, None), (False, None)]
    assert "!" not in render_text(peers_view(doc, plain=True), width=80)


EXPECTED = """
    flagged (left out of fleet aggregates): 95fd992f

    TRUST SCORES
    NODE     SCORE STATE   PENALTIES LAST
    95fd992f  0.16 FLAGGED         2 22:13:20
    c0ffee00  0.85 low             1 22:13:20

    EVIDENCE (newest first; * = blamed)
    REPORTER  WITNESS   FLOW                               FIELD     CLAIMED    SEEN
    b752b169  95fd992f* tcp 10.20.0.1:40000→10.20.0.2:7400 bytes_rx      700    1400
    95fd992f  c0ffee00  udp [fd00::2]:5353→[fd00::3]:53    existence present  absent

    threshold 0.50 · claims_checked 1,234 · claims_matched 1,200 · evidence 2 ·
    digests_validated 50 · unverifiable 7
    """


def sample_challenge(verdict: int) -> dict[str, object]:
    doc = message_dict(trust_pb2.ChallengeResponse(
        suspect=LIAR, prober=HONEST, target="10.20.0.2:7400", attempts=10, connected=10, reported=0, tolerance=2,
        verdict=verdict, detail="the suspect's digests report 0 of the 10 connections the prober made "
        "(at least 8 expected)", digests=3, score=0.4, flagged=True, started_ns=AT, finished_ns=AT + 4_500_000_000))
    doc["verdict"] = str(doc["verdict"]).removeprefix("challenge_")
    return doc


def test_challenge_view_says_the_verdict_and_the_counts() -> None:
    from meshnode.cli._trust import challenge_view

    out = render_text(challenge_view(sample_challenge(trust_pb2.CHALLENGE_FAILED), plain=True), width=80)
    assert out == _text("""
        challenge of 95fd992f: FAILED
        the suspect's digests report 0 of the 10 connections the prober made (at least 8
        expected)

        prober     b752b169 connected 10 of 10 times to 10.20.0.2:7400
        reported   0 by the suspect (tolerance 2) in 3 digest(s), 4.5 s
        trust now  0.40 FLAGGED
        """)
    wide = render_text(challenge_view(sample_challenge(trust_pb2.CHALLENGE_PASSED), wide=True, plain=True),
                       width=120)
    assert wide.splitlines()[0] == f"challenge of {LIAR}: PASSED"


def test_validate_challenge_args() -> None:
    from meshnode.cli._args import build_parser

    args = build_parser().parse_args(["validate", "--challenge", LIAR, "--prober", HONEST, "--count", "5", "--port",
                                      "31001", "--json"])
    assert (args.challenge, args.prober, args.count, args.port, args.json) == (LIAR, HONEST, 5, 31001, True)
