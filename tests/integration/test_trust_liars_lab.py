"""Every class of liar caught in one real fleet: six `meshnode run` nodes with the eBPF sensor on six lab hosts,
export period 2 s; host l tells one lie of each class about flows at once (test-only MESHNODE_TEST_LIE), each about
another honest victim, so that each victim's first-hand evidence names its class, and host m claims an address:

- inflating bytes (double_tx) on what l sends to a's port 31100: a finds acked_more_than_received;
- deflating bytes (halve_tx) on what l sends to b's port 31102: b finds received_more_than_acked;
- omitting flows (hide) that c opens to l's port 31103: c finds missing_at_witness, l the witness;
- inventing flows (invent) with d's port 31104: d finds missing_at_witness, l the reporter;
- claiming another member's address (claim): m publishes d's address as its own; every node finds it on the
  face of m's digests (claims_member_address).

Each victim flags its liar within 2 export periods of the lie's publication (the invented flow and the claimed
address are in the liars' first digests), and no honest node has evidence against it anywhere: while l disputes
only d (its invented flows, from the start), a third party cannot tell which of the two lied and blames neither;
once l disputes three members or more, it is the majority's liar everywhere.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from tests._support import traffic as t
from tests._support.trustfleet import PERIOD, Fleet, running_fleet

HOSTS = ["a", "b", "c", "d", "l", "m"]
INFLATE, DEFLATE, OMIT, INVENT = 31100, 31102, 31103, 31104
# a lie is published as the period its flow ended in closes (< 1 period after the traffic), then flagged within 2
# periods: gossiped and judged at the victim's next period close, or, for an absence, once the witness's digest
# of the period the flow ended in, the skew (2 s here, a whole period) included, is held
WITHIN = 3 * PERIOD + 1.0


@pytest.fixture(scope="module")
def liars(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    def lies(lab: Any) -> dict[str, str]:
        ip = {h: lab[h].ip for h in HOSTS}
        return {"l": (f"double_tx:{ip['a']}:{INFLATE},halve_tx:{ip['b']}:{DEFLATE},hide:{ip['c']}:{OMIT},"
                      f"invent:{ip['d']}:{INVENT}"),
                "m": f"claim:{ip['d']}"}

    with running_fleet(tmp_path_factory.mktemp("liars"), HOSTS, lies) as f:
        yield f


def _named(doc: dict[str, Any], liar: str, reason: str, port: int) -> list[dict[str, Any]]:
    """Evidence blamed on the liar for this reason, about a flow of this service port (0: the address claim)."""
    return [e for e in doc["evidence"] if e["blamed"] == liar and e["reason"] == reason
            and (port in (e["sport"], e["dport"]) if port else e["field"] == "addresses")]


def _caught(fleet: Fleet, victim: str, reason: str, port: int) -> float:
    liar = fleet.ids["m" if reason == "claims_member_address" else "l"]

    def found() -> tuple[bool, Any]:
        doc = fleet.validate(victim)
        flagged = any(s["node_id"] == liar and s["flagged"] for s in doc["scores"])
        return bool(_named(doc, liar, reason, port)) and flagged, doc["evidence"][:4]

    return fleet.wait(found, 6 * PERIOD, f"{victim} flagging l for {reason}")


def test_every_class_of_liar_is_flagged_by_its_victim_and_no_honest_node_gets_evidence(liars: Fleet) -> None:
    fleet, lab = liars, liars.lab
    took: dict[str, float] = {}
    # on the face of its digests, and the invented flow: in l's first digests
    for victim, reason, name, port in (("d", "claims_member_address", "claim", 0),
                                       ("d", "missing_at_witness", "invent", INVENT)):
        took[name] = _caught(fleet, victim, reason, port)
    for h in "abc":  # the claim is wrong on the face of m's digests: everybody flags m for it
        _caught(fleet, h, "claims_member_address", 0)

    sinks = {h: t.start(lab[h], t.TCP_SINK, port) for h, port in (("a", INFLATE), ("b", DEFLATE), ("l", OMIT))}
    for s in sinks.values():
        t.wait_ready(s)
    try:
        for src, dst, port, victim, reason, name, flows in (
            ("l", "a", INFLATE, "a", "acked_more_than_received", "inflate", 1),
            ("l", "b", DEFLATE, "b", "received_more_than_acked", "deflate", 3),  # a mismatch: 0.7 each
            ("c", "l", OMIT, "c", "missing_at_witness", "omit", 1),
        ):
            for p in [t.start(lab[src], t.TCP_BULK, lab[dst].ip, port, 200_000) for _ in range(flows)]:
                t.result(p, timeout=60)
            took[name] = _caught(fleet, victim, reason, port)
    finally:
        for s in sinks.values():
            s.kill()
    omitted = _named(fleet.validate("c"), fleet.ids["l"], "missing_at_witness", OMIT)
    assert {(e["reporter"], e["witness"], e["src"], e["dst"]) for e in omitted} == {
        (fleet.ids["c"], fleet.ids["l"], lab["c"].ip, lab["l"].ip)}, omitted

    time.sleep(PERIOD)  # the last judgments everywhere
    docs = {h: fleet.validate(h) for h in "abcd"}
    mesh = {h: (fleet.meshctl(h, "peers") or {}).get("counters", {}) for h in "abcd"}
    print(f"\nliar classes flagged by their victims after the lie (s, export period {PERIOD:g} s): {took}; per "
          f"honest node: claims waiting for a gap {[d['counters'].get('gap_waits', 0) for d in docs.values()]}, "
          f"unverifiable_witness_gap {[d['counters'].get('unverifiable_witness_gap', 0) for d in docs.values()]}, "
          f"digests fetched by seq {[m.get('digest_fetches', 0) for m in mesh.values()]}, "
          f"missed periods filled {[m.get('digests_history_filled', 0) for m in mesh.values()]}, "
          f"records of contacts not yet members "
          f"{[d['counters'].get('endpoint_records_for_contacts', 0) for d in docs.values()]}")
    for name, s in took.items():
        assert s <= WITHIN, f"{name} flagged only {s:.1f} s after the lie"
    honest = {fleet.ids[h] for h in "abcd"}
    for h, d in docs.items():
        against = [e for e in d["evidence"] if e["blamed"] in honest]
        assert not against, f"{h} holds evidence against honest nodes: {against[:4]}"
        assert all(s["score"] == 1.0 for s in d["scores"] if s["node_id"] in honest), (h, d["scores"])
