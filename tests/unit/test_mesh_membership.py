"""SWIM + Lifeguard membership on the in-memory network with a manual clock: no sockets, no sleeps."""

from __future__ import annotations

import math
import random

import pytest

from meshnode.mesh import (
    Awareness,
    ManualScheduler,
    MeshConfig,
    State,
    Suspicion,
    TransmitLimitedQueue,
    apply_delta,
    remaining_suspicion_time,
    retransmit_limit,
    scale_timeout,
    suspicion_timeout,
)
from meshnode.mesh._sim import SimCluster
from meshnode.mesh._state import incarnation_admissible, next_incarnation
from meshnode.v1 import mesh_pb2

# ---------------------------------------------------------------------------------------------- pure math


@pytest.mark.parametrize(
    ("n", "k", "elapsed", "min_t", "max_t", "expected"),
    [
        # memberlist suspicion_test.go TestSuspicion_remainingSuspicionTime
        (0, 3, 0.0, 2.0, 30.0, 30.0),
        (1, 3, 2.0, 2.0, 30.0, 14.0),
        (2, 3, 3.0, 2.0, 30.0, 4.81),
        (3, 3, 4.0, 2.0, 30.0, -2.0),
        (4, 3, 5.0, 2.0, 30.0, -3.0),
        (5, 3, 10.0, 2.0, 30.0, -8.0),
        # k = 0: no confirmations expected, the minimum applies at once
        (0, 0, 1.0, 6.0, 36.0, 5.0),
    ],
)
def test_remaining_suspicion_time_shrinks_with_confirmations(n, k, elapsed, min_t, max_t, expected):
    assert remaining_suspicion_time(n, k, elapsed, min_t, max_t) == pytest.approx(expected, abs=1e-9)


def test_remaining_suspicion_time_is_monotonic_in_confirmations():
    times = [remaining_suspicion_time(c, 4, 0.0, 6.0, 36.0) for c in range(7)]
    assert times == sorted(times, reverse=True)
    assert times[0] == 36.0
    assert times[4:] == [6.0, 6.0, 6.0]


@pytest.mark.parametrize(
    ("mult", "n", "interval", "expected"),
    [(4, 1, 1.0, 4.0), (4, 10, 1.0, 4.0), (4, 100, 1.0, 8.0), (4, 1000, 0.5, 6.0), (5, 1000, 1.0, 15.0),
     (4, 0, 1.0, 4.0)],
)
def test_suspicion_timeout_scales_with_log_n(mult, n, interval, expected):
    assert suspicion_timeout(mult, n, interval) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("score", "delta", "max_mult", "new_score", "timeout_1s"),
    [(0, -1, 8, 0, 1.0), (0, 1, 8, 1, 2.0), (6, 3, 8, 7, 8.0), (7, 1, 8, 7, 8.0), (3, -1, 8, 2, 3.0)],
)
def test_awareness_health_score_is_clamped_and_scales_timeouts(score, delta, max_mult, new_score, timeout_1s):
    assert apply_delta(score, delta, max_mult) == new_score
    assert scale_timeout(1.0, new_score) == pytest.approx(timeout_1s)
    a = Awareness(max_mult)
    a.score = score
    a.apply_delta(delta)
    assert a.score == new_score
    assert a.scale_timeout(1.0) == pytest.approx(timeout_1s)


@pytest.mark.parametrize(
    ("mult", "n", "limit"), [(3, 0, 0), (3, 1, 3), (3, 99, 6), (4, 100, 12), (4, 1000, 16)]
)
def test_retransmit_limit(mult, n, limit):
    assert retransmit_limit(mult, n) == limit


def test_transmit_limited_queue_sends_each_broadcast_a_bounded_number_of_times():
    q = TransmitLimitedQueue(lambda: 9, retransmit_mult=2)  # limit 2 * ceil(log10(10)) = 2
    q.queue("a", b"A" * 10)
    q.queue("b", b"B" * 10)
    assert q.get_broadcasts(overhead=2, limit=12) == [b"B" * 10]  # newest first, only one fits
    assert q.get_broadcasts(overhead=2, limit=100) == [b"A" * 10, b"B" * 10]  # fewest transmits first
    assert q.get_broadcasts(overhead=2, limit=100) == [b"A" * 10]
    assert q.get_broadcasts(overhead=2, limit=100) == []
    q.queue("a", b"old")
    q.queue("a", b"new")  # same subject: the newer replaces the older
    assert q.get_broadcasts(overhead=0, limit=100) == [b"new"]


def test_suspicion_timer_fires_earlier_with_each_confirmation():
    sched = ManualScheduler()
    fired: list[tuple[float, int]] = []
    s = Suspicion(sched, "a", k=3, min_timeout=2.0, max_timeout=30.0,
                  on_timeout=lambda c: fired.append((sched.now(), c)))
    sched.advance(2.0)
    assert s.confirm("b") is True  # 16 s total now
    assert s.confirm("b") is False  # the same peer again is no news
    assert s.confirm("a") is False  # nor is the first suspecter
    sched.advance(1.0)
    assert s.confirm("c") is True  # ~7.81 s total
    sched.advance(4.0)
    assert fired == []
    sched.advance(1.0)
    assert fired == [(pytest.approx(7.81), 2)]


# ---------------------------------------------------------------------------------------------- scenarios

CFG = MeshConfig()


def _converged_cluster(n: int, seed: int = 7, **kw) -> SimCluster:
    c = SimCluster(seed=seed, **kw)
    c.build(n)
    assert c.run(30.0, c.converged) < 30.0
    return c


def _inject(c: SimCluster, to: str, *gossip: mesh_pb2.Gossip) -> None:
    """A packet from an outsider carrying ``gossip`` (what a confused or malicious peer could send)."""
    pkt = mesh_pb2.MeshPacket(source="outsider", source_addr="addr-outsider", gossip=list(gossip))
    c.net.endpoint("addr-outsider").send_packet(c.addr[to], pkt.SerializeToString())


def test_suspect_is_refuted_and_stays_alive():
    c = _converged_cluster(5)
    target = c.nodes["n1"]
    inc = target.incarnation
    _inject(c, "n0", mesh_pb2.Gossip(suspect=mesh_pb2.Suspect(node="n1", incarnation=inc, **{"from": "n4"})))
    c.run(0.01)
    assert c.nodes["n0"].state_of("n1") == State.SUSPECT
    c.run(20.0)
    assert target.counters["refuted"] == 1
    assert target.incarnation == inc + 1
    assert all(m.state_of("n1") == State.ALIVE for m in c.alive())
    assert all(m.member("n1").incarnation == inc + 1 for m in c.alive())  # type: ignore[union-attr]
    assert sum(m.counters["dead"] for m in c.alive()) == 0


def test_suspect_becomes_dead_after_the_suspicion_timeout():
    c = _converged_cluster(8)
    c.crash("n3")
    start = c.sched.now()
    elapsed = c.run(60.0, lambda: all(m.state_of("n3") == State.DEAD for m in c.alive()))
    assert all(m.state_of("n3") == State.DEAD for m in c.alive())
    # never before the minimum suspicion timeout, never after the maximum (plus a probe and gossip)
    min_t = suspicion_timeout(CFG.suspicion_mult, 8, CFG.probe_interval)
    assert min_t <= elapsed <= CFG.suspicion_max_timeout_mult * min_t + 2.0
    assert c.sched.now() > start
    # nobody else was hurt
    assert c.converged({f"n{i}" for i in range(8)} - {"n3"})


def test_dead_member_refutes_when_it_comes_back_within_gossip_to_the_dead_time():
    c = _converged_cluster(6)
    c.net.partition(["addr-2"])
    c.run(60.0, lambda: all(m.state_of("n2") == State.DEAD for m in c.alive() if m.node_id != "n2"))
    c.net.heal()
    assert c.run(60.0, c.converged) < 60.0
    assert c.nodes["n2"].counters["refuted"] >= 1


@pytest.mark.parametrize(("indirect_checks", "expect_suspicion"), [(3, False), (0, True)])
def test_indirect_probes_save_a_member_behind_one_lossy_link(indirect_checks, expect_suspicion):
    cfg = MeshConfig(indirect_checks=indirect_checks)
    c = SimCluster(seed=11, config=cfg)
    c.build(6)
    assert c.run(30.0, c.converged) < 30.0
    c.net.set_loss("addr-0", "addr-1", 1.0)  # n0 <-> n1 drops everything, every other path works
    c.run(40.0)
    suspicions = c.nodes["n0"].counters["suspicions"]
    assert (suspicions > 0) is expect_suspicion
    assert (c.nodes["n0"].counters["probes_failed"] > 0) is expect_suspicion
    # either way n1 is alive in the end: with indirect probes it was never suspected, without them it refuted
    assert all(m.state_of("n1") == State.ALIVE for m in c.alive())


def test_partition_then_heal_gives_one_view_again():
    cfg = MeshConfig(push_pull_interval=5.0, reconnect_interval=3.0)
    c = SimCluster(seed=5, config=cfg)
    c.build(10)
    assert c.run(30.0, c.converged) < 30.0
    left = {f"n{i}" for i in range(5)}
    right = {f"n{i}" for i in range(5, 10)}
    c.net.partition([c.addr[n] for n in left], [c.addr[n] for n in right])

    def split() -> bool:
        return all(c.converged(side) for side in (left, right))

    assert c.run(120.0, split) < 120.0
    assert c.nodes["n0"].state_of("n7") == State.DEAD
    c.net.heal()
    assert c.run(120.0, c.converged) < 120.0
    assert all(len([x for x in m.members() if x.state == State.ALIVE]) == 10 for m in c.alive())


@pytest.mark.parametrize(
    ("seeds", "answered"),
    [(["addr-0"], 1), (["addr-gone", "addr-3"], 1), (["addr-1", "addr-2"], 2), (["addr-gone"], 0)],
)
def test_joining_node_learns_everyone(seeds, answered):
    c = _converged_cluster(30)
    newcomer = c.add(labels={"region": "eu", "site": "ams1", "host": "new"}, node_id="newcomer")
    result: list[int] = []
    newcomer.join(seeds, on_done=result.append)
    c.run(CFG.stream_timeout + 0.1, lambda: bool(result))
    assert result == [answered]
    if answered:
        assert len([m for m in newcomer.members() if m.state == State.ALIVE]) == 31
        assert c.run(10.0, c.converged) < 10.0
        assert c.nodes["n17"].member("newcomer").labels == {  # type: ignore[union-attr]
            "region": "eu", "site": "ams1", "host": "new"}
    else:
        assert [m.node_id for m in newcomer.members()] == ["newcomer"]


def test_graceful_leave_is_left_not_dead():
    c = _converged_cluster(8)
    done: list[float] = []
    c.nodes["n4"].leave(on_done=lambda: done.append(c.sched.now()))
    c.run(5.0, lambda: bool(done))
    assert done, "the leave broadcast went out its full count"
    c.nodes["n4"].shutdown()
    c.run(2.0)
    others = [m for m in c.alive()]
    assert all(m.state_of("n4") == State.LEFT for m in others)
    assert sum(m.counters["suspicions"] for m in others) == 0
    assert sum(m.counters["dead"] for m in others) == 0
    assert all(m.num_members() == 7 for m in others)


def test_a_lone_nodes_leave_is_done_at_once_and_a_node_with_peers_waits_for_its_broadcast():
    """A node alone in its mesh has nobody to tell: its stop waited out the whole 2 s leave timeout."""
    c = SimCluster(seed=3)
    c.build(1)
    done: list[float] = []
    c.nodes["n0"].leave(on_done=lambda: done.append(c.sched.now()))
    assert done == [c.sched.now()]
    c = _converged_cluster(3)
    done.clear()
    c.nodes["n1"].leave(on_done=lambda: done.append(c.sched.now()))
    assert done == []  # told nobody yet
    c.run(5.0, lambda: bool(done))
    assert done


def test_label_update_spreads_with_a_new_incarnation():
    c = SimCluster(seed=2)
    c.build(6, labels=lambda i: {"region": "eu", "site": f"s{i % 2}", "host": f"h{i}"})
    assert c.run(30.0, c.converged) < 30.0
    assert c.nodes["n5"].member("n2").labels == {"region": "eu", "site": "s0", "host": "h2"}  # type: ignore[union-attr]
    c.nodes["n2"].set_labels({"region": "us", "site": "s9", "host": "h2"})
    c.run(5.0)
    for m in c.alive():
        assert m.member("n2").labels["region"] == "us"  # type: ignore[union-attr]


def _gossip_packet(g: mesh_pb2.Gossip) -> bytes:
    return mesh_pb2.MeshPacket(gossip=[g]).SerializeToString()


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff\xff\xff garbage",
        _gossip_packet(mesh_pb2.Gossip(alive=mesh_pb2.Alive(node="", addr="x"))),
        _gossip_packet(mesh_pb2.Gossip(alive=mesh_pb2.Alive(
            node="evil", addr="a", labels={f"k{i}": "v" for i in range(100)}))),
        _gossip_packet(mesh_pb2.Gossip(suspect=mesh_pb2.Suspect(node="x" * 500))),
    ],
    ids=["garbage", "empty-node-id", "too-many-labels", "oversize-node-id"],
)
def test_bad_packets_are_counted_and_dropped(payload, caplog):
    c = _converged_cluster(3)
    c.net.endpoint("addr-evil").send_packet(c.addr["n0"], payload)
    c.run(5.0)
    assert c.nodes["n0"].counters["packets_malformed"] == 1
    assert "addr-evil" in caplog.text
    assert "evil" not in {m.node_id for m in c.nodes["n0"].members()}
    assert c.converged()


def test_bad_stream_request_is_refused_without_harm():
    c = _converged_cluster(3)
    answers: list[tuple[bytes | None, str]] = []
    evil = c.net.endpoint("addr-evil")
    evil.request(c.addr["n1"], b"\x08\x01\x12", 1.0, lambda a, e: answers.append((a, e)))
    c.run(2.0)
    assert answers and answers[0][0] is None
    assert c.nodes["n1"].counters["streams_malformed"] == 1
    assert c.converged()


def test_runs_are_deterministic_for_a_seed():
    def trace(seed: int) -> list[tuple[float, str, str, str]]:
        c = SimCluster(seed=seed, loss=0.05)
        c.build(12)
        c.run(10.0)
        c.crash("n6")
        c.run(20.0)
        return c.events

    assert trace(42) == trace(42)
    assert trace(42) != trace(43)


def test_message_loss_does_not_kill_healthy_members():
    c = SimCluster(seed=9, loss=0.05)
    c.build(20)
    c.run(60.0)
    assert c.converged()
    assert sum(m.counters["dead"] for m in c.alive()) == 0
    assert math.isfinite(c.sched.now())


def test_bad_members_in_push_pull_state_are_dropped_and_the_rest_merged(caplog):
    c = _converged_cluster(3)
    pp = mesh_pb2.PushPull(source="rogue", source_addr="addr-rogue", members=[
        mesh_pb2.PushPullMember(node="good", addr="addr-good", incarnation=1, state=mesh_pb2.ALIVE,
                                labels={"site": "s1"}),
        mesh_pb2.PushPullMember(node="bad", addr="addr-bad", incarnation=1, state=mesh_pb2.ALIVE,
                                labels={f"k{i}": "v" for i in range(100)}),
        mesh_pb2.PushPullMember(node="weird", addr="addr-weird", incarnation=1, state=99),  # type: ignore[arg-type]
    ])
    rogue = c.net.endpoint("addr-rogue")
    rogue.set_handlers(lambda a, p: None, lambda a, p: mesh_pb2.StreamMessage(push_pull=pp).SerializeToString())
    n0 = c.nodes["n0"]
    # pushed unasked: only its sender's own entry and members already known would be believed
    answers: list[bytes | None] = []
    rogue.request(c.addr["n0"], mesh_pb2.StreamMessage(push_pull=pp).SerializeToString(), 1.0,
                  lambda a, e: answers.append(a))
    c.run(0.1)
    assert answers and answers[0] is not None
    theirs = mesh_pb2.StreamMessage.FromString(answers[0]).push_pull
    assert {m.node for m in theirs.members} == {"n0", "n1", "n2"}
    assert n0.counters["members_unsolicited"] == 3
    # the answer to an exchange n0 started: the good member is merged, the bad ones dropped
    joined: list[int] = []
    n0.join(["addr-rogue"], on_done=joined.append)
    c.run(0.1)
    assert joined == [1]
    assert n0.state_of("good") == State.ALIVE
    assert n0.state_of("bad") is None and n0.state_of("weird") is None
    assert n0.counters["members_malformed"] == 2
    assert "addr-rogue" in caplog.text


def test_transmit_limited_queue_is_bounded_and_counts_what_it_drops():
    q = TransmitLimitedQueue(lambda: 10, retransmit_mult=4, max_items=3)
    for i in range(5):
        q.queue(f"k{i}", bytes([i]))
    assert len(q) == 3
    assert q.dropped == 2
    assert sorted(q.get_broadcasts(overhead=0, limit=100)) == [b"\x02", b"\x03", b"\x04"]


def test_buddy_system_tells_a_suspect_on_the_probe_itself():
    # no gossip rounds, and the suspicion is cleared from n0's queue: only the ping can carry it to n1
    c = SimCluster(seed=3, config=MeshConfig(gossip_nodes=0, push_pull_interval=0, reconnect_interval=0))
    c.build(2)
    assert c.run(10.0, c.converged) < 10.0
    n0, n1 = c.nodes["n0"], c.nodes["n1"]
    _inject(c, "n0", mesh_pb2.Gossip(suspect=mesh_pb2.Suspect(node="n1", incarnation=n1.incarnation,
                                                              **{"from": "outsider"})))
    c.run(0.01)
    assert n0.state_of("n1") == State.SUSPECT
    n0._broadcasts.reset()
    took = c.run(5.0, lambda: n1.counters["refuted"] > 0)
    assert took <= 2 * CFG.probe_interval
    c.run(1.0)
    assert n0.state_of("n1") == State.ALIVE


def test_a_member_that_missed_a_joiners_alive_learns_it_from_the_joiners_first_probe():
    """A joiner's Alive spreads by a bounded number of transmissions to random members; a member they all
    missed would list the joiner only at its next push-pull (up to 30 s; 11-15 s seen in the trust lab), and
    would not answer its probes meanwhile (a ping from a node it does not list is not answered). The joiner's
    ping carries its own Alive until the member answers it directly."""
    c = SimCluster(seed=5, config=MeshConfig(gossip_nodes=0, push_pull_interval=0, reconnect_interval=0))
    c.build(3)
    assert c.run(10.0, c.converged) < 10.0
    joiner = c.add(node_id="joiner")
    joiner.join([c.addr["n0"]])
    c.run(0.01)  # the join's push-pull: n0 and the joiner list each other
    for nid in ("n0", "joiner"):  # no broadcast left: only the joiner's own pings can tell n1 and n2
        c.nodes[nid]._broadcasts.reset()
    assert [c.nodes[n].member("joiner") is None for n in ("n1", "n2")] == [True, True]
    took = c.run(10.0, lambda: all(c.nodes[n].member("joiner") is not None for n in ("n1", "n2")))
    assert took <= 4 * CFG.probe_interval
    c.run(2.0)
    assert joiner.counters["probes_failed"] == 0 and c.converged()


def test_transmit_limited_queue_evicts_the_most_sent_oldest_item_through_bursts_and_sends():
    """The queue sorts its eviction order once per burst: it must still drop exactly what a scan would."""
    rng = random.Random(5)
    q = TransmitLimitedQueue(lambda: 10, retransmit_mult=4, max_items=16)
    model: dict[str, list[int]] = {}  # key -> [transmits, id]
    next_id = 0
    for _ in range(3000):
        if rng.random() < 0.8:
            key = f"k{rng.randrange(40)}"
            next_id += 1
            model.pop(key, None)
            model[key] = [0, next_id]
            if len(model) > 16:
                worst = max(model, key=lambda k: (model[k][0], -model[k][1]))
                del model[worst]
            q.queue(key, key.encode())
        else:
            limit = rng.randrange(1, 40)
            sent = q.get_broadcasts(overhead=0, limit=limit)
            for payload in sent:
                item = model[payload.decode()]
                item[0] += 1
                if item[0] >= 8:  # 4 * ceil(log10(10 + 1))
                    del model[payload.decode()]
        assert sorted(q._items) == sorted(model)
    assert q.dropped > 100


@pytest.mark.parametrize(
    ("claimed", "held", "admissible"),
    [
        (0, None, True),
        (2**63, None, True),
        (2**63 + 1, None, False),  # a stranger at once past the bound
        (2**64 - 1, 5, False),
        (2**63 + 1, 2**63, True),  # the refutation of an accusation made at the bound
        (2**63 + 2, 2**63, False),
        (2**64 - 1, 2**64 - 2, True),
        (2**64 - 1, 2**64 - 1, True),
    ],
)
def test_incarnations_past_2_63_are_admitted_one_step_at_a_time(claimed, held, admissible):
    assert incarnation_admissible(claimed, held) is admissible


@pytest.mark.parametrize(
    ("own", "accused", "expected"),
    [(0, 0, 1), (3, 7, 8), (7, 3, 8), (2**63, 2**63, 2**63 + 1), (2**64 - 2, 0, 2**64 - 1),
     (2**64 - 1, 2**64 - 1, 2**64 - 1)],
)
def test_refutation_saturates_in_the_64_bit_field(own, accused, expected):
    assert next_incarnation(own, accused) == expected
