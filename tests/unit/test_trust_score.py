"""Trust scores over a simulated fleet: honest with loss, a byte liar, a flow hider, recovery; attribution."""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable

import pytest

from meshnode.trust import (
    CrossValidator,
    EndpointClaim,
    Evidence,
    PeriodClaims,
    ScoreConfig,
    TrustState,
    ValidationConfig,
)

S = 10**9
P = 10 * S
T0 = 1_700_000_000 * S
MSS = 1448

Mutate = Callable[[EndpointClaim], EndpointClaim | None]


class Fleet:
    """N nodes making TCP and UDP flows to each other with random loss; each node's records per period.

    Bytes are exact at both ends of closed TCP flows (TCP repairs loss); segment counts differ by the lost
    segments (retransmitted) and end-of-connection jitter; UDP loses whole datagrams. Clocks differ by up
    to 200 ms, snapshots of long flows are taken up to 300 ms after the period boundary, and some short
    flows close across a boundary, so that their two final records land in different periods.
    """

    def __init__(self, n: int = 5, loss: float = 0.05, seed: int = 7) -> None:
        self.rng = random.Random(seed)
        self.nodes = [f"n{i}" for i in range(n)]
        self.addr = {nid: f"10.0.0.{i + 1}" for i, nid in enumerate(self.nodes)}
        self.owners = {a: n for n, a in self.addr.items()}
        self.skew = {nid: self.rng.randint(-200, 200) * 10**6 for nid in self.nodes}
        self.loss = loss
        self.port = 30000
        self.buffer: dict[int, dict[str, list[EndpointClaim]]] = {}
        self.long: dict[tuple[str, str], tuple[int, int, int, int]] = {}
        self.mutate: dict[str, Mutate] = {}
        self.current = 0

    def _lost(self, n: int) -> int:
        return sum(1 for _ in range(n) if self.rng.random() < self.loss)

    def _put(self, claim: EndpointClaim) -> None:
        k = max(self.current, (claim.end_ns - T0) // P)  # a node files a record in a period still open
        self.buffer.setdefault(k, {}).setdefault(claim.reporter, []).append(claim)

    def _tcp(self, a: str, b: str, start: int) -> None:
        self.port += 1
        x, y = self.rng.randint(100, 200_000), self.rng.randint(100, 50_000)
        end = start + self.rng.randint(50, 3000) * 10**6
        segs_ab, segs_ba = math.ceil(x / MSS) + 3, math.ceil(y / MSS) + 3
        lost_ab, lost_ba = self._lost(segs_ab), self._lost(segs_ba)
        j1, j2 = self.rng.randint(0, 1), self.rng.randint(0, 1)
        self._put(EndpointClaim(a, self.addr[a], self.port, self.addr[b], 443, "tcp", "outbound",
                                start + self.skew[a], end + self.skew[a], x, y, segs_ab + lost_ab, segs_ba - j2,
                                "established", True))
        self._put(EndpointClaim(b, self.addr[b], 443, self.addr[a], self.port, "tcp", "inbound",
                                start + 5 * 10**5 + self.skew[b], end + 3 * 10**6 + self.skew[b], y, x,
                                segs_ba + lost_ba, segs_ab - j1, "established", True))

    def _udp(self, a: str, b: str, start: int) -> None:
        self.port += 1
        m, size = self.rng.randint(1, 20), self.rng.randint(40, 1200)
        got_b = m - self._lost(m)
        got_a = got_b - self._lost(got_b)
        end = start + self.rng.randint(1, 500) * 10**6
        outcome = "udp_answered" if got_a else "udp_unanswered"
        self._put(EndpointClaim(a, self.addr[a], self.port, self.addr[b], 53, "udp", "outbound",
                                start + self.skew[a], end + self.skew[a], m * size, got_a * size, m, got_a,
                                outcome, True))
        if got_b:
            self._put(EndpointClaim(b, self.addr[b], 53, self.addr[a], self.port, "udp", "inbound",
                                    start + 10**5 + self.skew[b], end + 10**6 + self.skew[b], got_b * size,
                                    got_b * size, got_b, got_b, "udp_answered", True))

    def _snapshots(self, k: int) -> None:
        boundary = T0 + (k + 1) * P
        for i, a in enumerate(self.nodes):
            for b in self.nodes[i + 1:]:
                if (a, b) not in self.long:
                    self.port += 1
                    self.long[(a, b)] = (self.port, T0 + k * P + S, self.rng.randint(1000, 90_000),
                                         self.rng.randint(100, 9000))
                port, start, r_ab, r_ba = self.long[(a, b)]
                ta = boundary + self.rng.randint(0, 300) * 10**6
                tb = boundary + self.rng.randint(0, 300) * 10**6

                def received(rate: int, t: int, start: int = start) -> int:
                    return rate * (t - start) // S

                def acked(rate: int, t: int, start: int = start) -> int:
                    return max(0, received(rate, t) - rate // 100)  # an RTT's worth in flight

                self.buffer.setdefault(k, {}).setdefault(a, []).append(EndpointClaim(
                    a, self.addr[a], port, self.addr[b], 8443, "tcp", "outbound", start + self.skew[a],
                    ta + self.skew[a], acked(r_ab, ta), received(r_ba, ta), acked(r_ab, ta) // MSS + 2,
                    received(r_ba, ta) // MSS + 1, "established", False))
                self.buffer.setdefault(k, {}).setdefault(b, []).append(EndpointClaim(
                    b, self.addr[b], 8443, self.addr[a], port, "tcp", "inbound", start + self.skew[b],
                    tb + self.skew[b], acked(r_ba, tb), received(r_ab, tb), acked(r_ba, tb) // MSS + 2,
                    received(r_ab, tb) // MSS + 1, "established", False))

    def period(self, k: int) -> list[PeriodClaims]:
        """Every node's claims of period ``k`` (flows started in it; finals land where they end)."""
        self.current = k
        for a in self.nodes:
            for b in self.nodes:
                if a == b:
                    continue
                for _ in range(2):
                    self._tcp(a, b, T0 + k * P + self.rng.randint(0, 9500) * 10**6)
                self._udp(a, b, T0 + k * P + self.rng.randint(0, 9000) * 10**6)
        self._snapshots(k)
        got = self.buffer.pop(k, {})
        out = []
        for nid in self.nodes:
            claims = got.get(nid, [])
            if nid in self.mutate:
                claims = [c2 for c in claims if (c2 := self.mutate[nid](c)) is not None]
            out.append(PeriodClaims(nid, T0 + k * P, T0 + (k + 1) * P, tuple(claims)))
        return out


class Observer:
    """One node's validator and trust state, fed every node's digest each period."""

    def __init__(self, fleet: Fleet, self_id: str, config: ScoreConfig | None = None) -> None:
        self.fleet = fleet
        self.validator = CrossValidator(ValidationConfig(period_s=10), owners=fleet.owners)
        self.trust = TrustState(self_id, config, now_ns=T0)
        self.evidence: list[list[Evidence]] = []

    def run_period(self, k: int) -> list[Evidence]:
        for pc in self.fleet.period(k):
            self.validator.add(pc)
        now = T0 + (k + 1) * P + S
        rep = self.validator.evaluate(now)
        self.trust.update(now, rep.evidence)
        self.evidence.append(rep.evidence)
        return rep.evidence


@pytest.mark.parametrize("seed", [7, 14, 21, 28])
def test_honest_fleet_with_5_percent_loss_is_never_flagged(seed):
    fleet = Fleet(n=5, loss=0.05, seed=seed)
    obs = Observer(fleet, "n0")
    for k in range(10):
        assert obs.run_period(k) == [], f"period {k}"
        assert obs.trust.flagged() == frozenset()
    c = obs.validator.counters
    assert c["claims_matched"] > 600 and c["evidence"] == 0
    assert all(obs.trust.score(n) == 1.0 for n in fleet.nodes)


def doubling_tx_to(fleet: Fleet, victims: set[str]) -> Mutate:
    victim_ips = {fleet.addr[v] for v in victims}

    def mutate(c: EndpointClaim) -> EndpointClaim:
        return dataclasses.replace(c, bytes_tx=c.bytes_tx * 2) if c.dst in victim_ips else c

    return mutate


def test_liar_doubling_tx_bytes_to_one_peer_is_flagged_by_that_peer_within_one_period():
    fleet = Fleet()
    obs = Observer(fleet, "n0")
    for k in range(3):
        assert obs.run_period(k) == []
    fleet.mutate["n3"] = doubling_tx_to(fleet, {"n0"})
    evs = obs.run_period(3)
    assert obs.trust.flagged() == frozenset({"n3"})
    assert obs.trust.score("n3") < 0.5
    # every piece of evidence is about a flow between n3 and n0, and names its 5-tuple and the bytes
    assert evs and all({e.reporter, e.witness} == {"n0", "n3"} for e in evs)
    ips = {fleet.addr["n0"], fleet.addr["n3"]}
    assert all({e.src, e.dst} == ips and e.sport and e.dport for e in evs)
    # the pair is compared once, from whichever end was judged first: n3's tx or n0's rx
    lies = [e for e in evs if e.proto == "tcp" and e.field in ("bytes_tx", "bytes_rx")]
    assert lies and {e.reason for e in evs if e.proto == "udp"} <= {
        "bytes_differ_without_loss", "byte_gap_exceeds_lost_datagrams", "received_more_than_sent"}
    for e in lies:
        assert e.reason == "acked_more_than_received"
        if e.reporter == "n3":
            assert e.field == "bytes_tx" and e.claimed == 2 * e.witnessed
        else:
            assert e.field == "bytes_rx" and e.witnessed == 2 * e.claimed


def test_liar_to_three_peers_is_flagged_by_a_third_party_by_majority_and_victims_are_not():
    fleet = Fleet()
    obs = Observer(fleet, "n1")
    for k in range(2):
        obs.run_period(k)
    fleet.mutate["n3"] = doubling_tx_to(fleet, {"n0", "n2", "n4"})
    obs.run_period(2)
    assert obs.trust.flagged() == frozenset({"n3"})
    assert obs.trust.score("n0") == obs.trust.score("n2") == obs.trust.score("n4") == 1.0


def test_liar_to_two_peers_is_not_blamed_by_a_third_party():
    """Two disputes of a node are what an honest node shows when a liar disputes it and its own record went
    missing once elsewhere: a third party waits for a third disputer (the victims blame the liar themselves)."""
    fleet = Fleet()
    obs = Observer(fleet, "n1")
    obs.run_period(0)
    fleet.mutate["n3"] = doubling_tx_to(fleet, {"n0", "n2"})
    for k in range(1, 6):
        obs.run_period(k)
        assert obs.trust.flagged() == frozenset(), k
    assert obs.trust.score("n0") == obs.trust.score("n2") == obs.trust.score("n3") == 1.0


def test_liar_to_one_peer_is_ambiguous_for_a_third_party():
    """A single disagreement between two others cannot say who lied: the third party blames neither (the honest
    end's score would drop as much as the liar's), however long it goes on; the evidence is kept, unblamed."""
    fleet = Fleet()
    obs = Observer(fleet, "n1")
    obs.run_period(0)
    fleet.mutate["n3"] = doubling_tx_to(fleet, {"n0"})
    found = 0
    for k in range(1, 12):
        found += len(obs.run_period(k))
        assert obs.trust.flagged() == frozenset(), k
        assert obs.trust.score("n3") == 1.0 and obs.trust.score("n0") == 1.0
    assert found >= 10


def test_hiding_one_flow_is_flagged_as_missing_at_the_witness_once_its_digest_is_held():
    fleet = Fleet()
    obs = Observer(fleet, "n0")
    for k in range(2):
        assert obs.run_period(k) == []
    hidden: list[EndpointClaim] = []

    def hide_one(c: EndpointClaim) -> EndpointClaim | None:
        if not hidden and c.final and c.proto == "tcp" and c.direction == "inbound" and c.dst == fleet.addr["n0"]:
            hidden.append(c)
            return None
        return c

    fleet.mutate["n3"] = hide_one
    found = {k: obs.run_period(k) for k in range(2, 6)}
    [(k, [e])] = [(k, evs) for k, evs in found.items() if evs]
    # n0's claim was judged as the period it was published in closed: n3's digest of that period, where the
    # record would be, was held without it
    assert k == (e.at_ns - T0) // P
    assert obs.trust.flagged() == frozenset({"n3"})
    assert (e.reporter, e.witness, e.reason) == ("n0", "n3", "missing_at_witness")
    h = hidden[0]
    assert e.flow == ("tcp", h.dst, h.dport, h.src, h.sport)


def test_flagged_liar_recovers_after_it_stops_lying():
    fleet = Fleet()
    obs = Observer(fleet, "n0")
    obs.run_period(0)
    fleet.mutate["n3"] = doubling_tx_to(fleet, {"n0"})
    for k in range(1, 6):
        obs.run_period(k)
        assert obs.trust.is_flagged("n3"), f"period {k}"
    del fleet.mutate["n3"]
    recovered_at = None
    for k in range(6, 30):
        obs.run_period(k)
        if recovered_at is None and not obs.trust.is_flagged("n3"):
            recovered_at = k
    assert recovered_at is not None and recovered_at <= 20
    assert not obs.trust.is_flagged("n3") and obs.trust.score("n3") > 0.95
    assert obs.trust.excluded(fleet.nodes) == set()


def ev(reporter: str, witness: str, severity: str = "contradiction", sport: int = 1) -> Evidence:
    return Evidence(reporter, witness, "tcp", "10.0.0.1", sport, "10.0.0.2", 443, "bytes_tx", 2, 1, "r",
                    severity, T0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("self_id", "evidence", "blamed"), [
    ("me", [ev("x", "me")], {"x": "witnessed_here"}),
    ("me", [ev("me", "x")], {"x": "reported_here"}),
    ("me", [ev("x", "y")], {}),
    ("me", [ev("x", "y", sport=1), ev("x", "y", sport=2)], {}),
    ("me", [dataclasses.replace(ev("x", "y"), reason="claims_member_address")], {"x": "on_its_face"}),
    ("me", [ev("x", "y", sport=1), ev("x", "z", sport=2)], {}),
    ("me", [ev("x", "y", sport=1), ev("x", "z", sport=2), ev("x", "w", sport=3)], {"x": "majority"}),
    ("me", [ev("y", "x", sport=1), ev("z", "x", sport=2), ev("w", "x", sport=3)], {"x": "majority"}),
    # an honest node disputed by a liar and by one honest miss elsewhere: two disputers, nobody blamed
    ("me", [ev("l", "h", sport=1), ev("h", "y", sport=2)], {}),
])
def test_attribution(self_id, evidence, blamed):
    t = TrustState(self_id, now_ns=T0)
    got = {(b.node_id, b.attribution) for b in t.update(T0, evidence)}
    assert got == set(blamed.items())


def test_already_flagged_end_takes_the_blame():
    t = TrustState("me", now_ns=T0)
    t.update(T0, [ev("x", "me")])
    assert t.is_flagged("x")
    [b] = t.update(T0 + S, [ev("x", "y")])
    assert (b.node_id, b.attribution) == ("x", "already_flagged")


@pytest.mark.parametrize(("severity", "count", "flagged"), [
    ("contradiction", 1, True),
    ("mismatch", 1, False),
    ("mismatch", 2, True),   # 0.7 * 0.7 = 0.49
    ("minor", 10, False),    # 0.95 ** 10 = 0.60
    ("minor", 14, True),
])
def test_penalties_by_severity(severity, count, flagged):
    t = TrustState("me", now_ns=T0)
    t.update(T0, [ev("x", "me", severity, sport=i) for i in range(count)])
    assert t.is_flagged("x") is flagged


def test_same_flow_counts_once_per_update_at_its_heaviest():
    t = TrustState("me", now_ns=T0)
    t.update(T0, [ev("x", "me", "minor"), ev("x", "me", "mismatch"), ev("x", "me", "mismatch")])
    assert t.score("x") == pytest.approx(0.7)


@pytest.mark.parametrize(("elapsed_s", "score"), [(0, 0.4), (60, 1 - 0.6 / math.e), (600, 1.0)])
def test_recovery_is_exponential_toward_one(elapsed_s, score):
    t = TrustState("me", ScoreConfig(recovery_s=60), now_ns=T0)
    t.update(T0, [ev("x", "me")])
    t.advance(T0 + elapsed_s * S)
    assert t.score("x") == pytest.approx(score, abs=1e-4)


def test_hysteresis_unflags_only_above_recover_above():
    t = TrustState("me", ScoreConfig(threshold=0.5, recover_above=0.8, recovery_s=60), now_ns=T0)
    t.update(T0, [ev("x", "me")])  # 0.4
    t.advance(T0 + 30 * S)  # 1 - 0.6 e^-0.5 = 0.636: above the threshold, still flagged
    assert t.score("x") > 0.5 and t.is_flagged("x")
    t.advance(T0 + 70 * S)  # 0.81
    assert not t.is_flagged("x")


def test_excluded_and_snapshot():
    t = TrustState("me", now_ns=T0)
    t.update(T0, [ev("x", "me")])
    assert t.excluded(["x", "y", "me"]) == {"x"}
    [x] = t.snapshot()
    assert (x.node_id, x.flagged, x.evidence) == ("x", True, 1)
    t.forget(["x"])
    assert t.excluded(["x"]) == set()


def test_an_unresolved_dispute_blames_nobody_and_counts_toward_the_majority():
    t = TrustState("me", now_ns=T0)
    assert t.update(T0, [ev("x", "y", sport=i) for i in range(20)]) == []
    assert t.score("x") == t.score("y") == 1.0 and t.snapshot() == []
    # x then disputes z and w too: three disputants, one for each of them: x is the majority's liar, for each
    blames = t.update(T0 + S, [ev("x", "y"), ev("x", "z", sport=2), ev("x", "w", sport=3)])
    assert {(b.node_id, b.attribution) for b in blames} == {("x", "majority")} and len(blames) == 3
    assert t.is_flagged("x") and t.score("y") == t.score("z") == t.score("w") == 1.0

