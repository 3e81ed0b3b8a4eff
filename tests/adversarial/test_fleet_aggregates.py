"""Fleet aggregates against a lying member, over real gRPC between MeshService nodes on 127.0.0.1.

A member signs whatever numbers it likes. Duplicate destination keys are refused at verification (and
counted), values beyond what one host can report are clamped (and marked), sums saturate, and the robust
figures (medians, trimmed means of per-host rates) stay where the honest hosts put them.
"""

from __future__ import annotations

import time

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meshnode.mesh import (
    HOST_LIMITS,
    U64_MAX,
    Aggregate,
    DigestExchange,
    DigestRejected,
    ManualScheduler,
    NodeKey,
    aggregate,
    host_reports,
    sign_digest,
    verify_digest,
)
from meshnode.v1 import flow_pb2, mesh_pb2, mesh_pb2_grpc
from tests._support.meshfleet import Fleet, run, until

DB = "10.9.0.5:5432"
PERIOD_S = 10
HONEST = 5


def _rollup(i: int, scale: int = 1, key: str = DB) -> flow_pb2.Rollup:
    """Honest host ``i``'s rollup of ``DB`` in a 10 s period (``scale`` inflates every count)."""
    flows = (100 + 10 * i) * scale
    return flow_pb2.Rollup(key=key, flows=flows, useful=flows - 5 * scale, failures={"timeout": 5 * scale},
                           bytes_tx=flows * 1000, bytes_rx=flows * 4000, retransmits=(3 + i) * scale,
                           rtt_p50_us=(900 + 10 * i) * scale, rtt_p95_us=(3000 + 10 * i) * scale)


class Source:
    """A member's digest of the last 10 s: its rollups as given."""

    def __init__(self, *rollups: flow_pb2.Rollup) -> None:
        self.rollups = rollups

    def local_digest(self) -> mesh_pb2.Digest:
        now = time.time_ns()
        return mesh_pb2.Digest(period_start_ns=now - PERIOD_S * 10**9, period_end_ns=now,
                               by_destination=list(self.rollups))


def _fleet_with(liar: Source) -> list[Source]:
    return [Source(_rollup(i)) for i in range(HONEST)] + [liar]


async def _query(addr: str) -> mesh_pb2.FleetQueryResponse:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
        resp: mesh_pb2.FleetQueryResponse = await stub.FleetQuery(
            mesh_pb2.FleetQueryRequest(destination=DB, deadline_ms=5000), timeout=10)
        return resp


async def _counters(addr: str) -> dict[str, int]:
    async with grpc.aio.insecure_channel(addr) as ch:
        stub = mesh_pb2_grpc.MeshStub(ch)  # type: ignore[no-untyped-call]
        resp = await stub.Peers(mesh_pb2.PeersRequest(), timeout=10)
        return dict(resp.counters)


# ---------------------------------------------------------------------------------------------- the 2^63 attack


def test_two_rollups_of_2_63_flows_are_refused_and_every_query_still_answers() -> None:
    """The attack of issue 13: one member publishes two rollups of 2**63 flows for one destination. Before,
    the fleet sum overflowed uint64 and FleetQuery answered UNKNOWN to every caller on every node."""
    liar = Source(flow_pb2.Rollup(key=DB, flows=2**63, useful=2**63), flow_pb2.Rollup(key=DB, flows=2**63))

    async def scenario(fleet: Fleet) -> None:
        bad = fleet.meshes[-1].node_id
        await until(lambda: all(m.membership.member(bad) is not None for m in fleet.meshes), 15)
        for mesh in fleet.meshes[:HONEST]:  # whichever node is asked
            resp = await _query(mesh.advertise)
            status = {n.node_id: n for n in resp.nodes}
            assert not status[bad].answered and status[bad].error == "duplicate_key"
            assert resp.partial and len(resp.digests) == HONEST
            [row] = resp.aggregates
            assert row.hosts == HONEST
            assert row.attempts == sum(_rollup(i).flows for i in range(HONEST))
        counters = await _counters(fleet.meshes[0].advertise)
        assert counters["query_digests_duplicate_key"] == 1
        # gossip refuses it too: the nodes it was announced to pull it, drop it (counted) and do not pass it on
        await until(lambda: any(m.exchange.counters["digests_duplicate_key"] for m in fleet.meshes[:HONEST]), 15)
        assert all(m.exchange.latest(bad) is None for m in fleet.meshes[:HONEST])

    run(_fleet_with(liar), scenario, name="dup")


def test_one_rollup_at_the_uint64_limit_is_clamped_and_the_sums_do_not_overflow() -> None:
    """Without a duplicate: one member reports 2**64-1 of everything. Its values count at what one host can
    do in 10 s (marked), and the fleet's sums and robust figures stay answerable."""
    top = U64_MAX
    liar = Source(flow_pb2.Rollup(key=DB, flows=top, useful=top, failures={"timeout": top, "refused": top},
                                  bytes_tx=top, bytes_rx=top, retransmits=top, rtt_p50_us=2**32 - 1,
                                  rtt_p95_us=2**32 - 1))

    async def scenario(fleet: Fleet) -> None:
        resp = await _query(fleet.meshes[0].advertise)
        assert not resp.partial
        [row] = resp.aggregates
        honest = [_rollup(i) for i in range(HONEST)]
        period = HOST_LIMITS.period_s(0, PERIOD_S * 10**9)
        assert row.hosts == HONEST + 1 and row.hosts_clamped == 1
        assert row.attempts == sum(r.flows for r in honest) + HOST_LIMITS.flows(period)
        assert row.retransmits == sum(r.retransmits for r in honest) + HOST_LIMITS.packets(period)
        assert row.failures["refused"] == HOST_LIMITS.flows(period)
        rates = sorted(r.flows / PERIOD_S for r in honest)
        assert rates[0] <= row.attempts_per_s <= rates[-1]
        assert row.hosts_trimmed == 2
        assert row.rtt_p50_us_median <= max(r.rtt_p50_us for r in honest)
        counters = await _counters(fleet.meshes[0].advertise)
        assert counters["query_reports_clamped"] == 1

    run(_fleet_with(liar), scenario, name="top")


# ---------------------------------------------------------------------------------------------- a 1000x liar


ROBUST = ("attempts_per_s", "bytes_tx_per_s", "bytes_rx_per_s", "retransmits_per_s", "useful_fraction",
          "rtt_p50_us", "rtt_p95_us")


def _robust(a: Aggregate) -> dict[str, float]:
    out = {name: getattr(a, name) for name in ROBUST}
    out.update({f"failure_fraction[{k}]": v for k, v in a.failure_fraction.items()})
    return out


def test_a_member_inflating_by_1000x_moves_no_robust_figure_by_more_than_its_share() -> None:
    """A member reports 1000 times what an honest host does. Each robust figure of the answer lies between the
    figures the fleet would give had that member reported like the honest hosts at either end (hosts 0 and 4
    hold every per-host extreme here): it counts as one host, no more. (The sums move by 1000x its share;
    they are totals, documented as such.)"""
    liar = Source(_rollup(2, scale=1000))

    async def scenario(fleet: Fleet) -> None:
        resp = await _query(fleet.meshes[0].advertise)
        assert not resp.partial
        [row] = resp.aggregates
        digests = [mesh_pb2.Digest.FromString(s.payload) for s in resp.digests]
        liar_id = fleet.meshes[-1].node_id
        now = time.time_ns()

        def as_if(rollup: flow_pb2.Rollup) -> dict[str, float]:
            ds = []
            for d in digests:
                d2 = mesh_pb2.Digest()
                d2.CopyFrom(d)
                if d.node_id == liar_id:
                    del d2.by_destination[:]
                    d2.by_destination.append(rollup)
                ds.append(d2)
            [a] = aggregate(host_reports(ds), now_ns=now, destination=DB)
            return _robust(a)

        [got] = aggregate(host_reports(digests), now_ns=now, destination=DB)
        low, high = as_if(_rollup(0)), as_if(_rollup(HONEST - 1))
        for name, value in _robust(got).items():
            lo, hi = sorted((low[name], high[name]))
            assert lo <= value <= hi, (name, lo, value, hi)
        # what the wire says is what was computed
        assert (row.attempts_per_s, row.bytes_tx_per_s, row.useful_fraction_median, row.rtt_p95_us_median) == (
            pytest.approx(got.attempts_per_s), pytest.approx(got.bytes_tx_per_s),
            pytest.approx(got.useful_fraction), round(got.rtt_p95_us or 0))
        assert dict(row.failure_fraction_median) == pytest.approx(got.failure_fraction)
        assert row.hosts_clamped == 0  # 1000x a small host is still a plausible host: robust, not clamped

    run(_fleet_with(liar), scenario, name="x1000")


# ---------------------------------------------------------------------------------------------- duplicates


def _signed(*rollups: flow_pb2.Rollup) -> mesh_pb2.SignedDigest:
    key = NodeKey.from_seed(b"dup-publisher")
    d = mesh_pb2.Digest(version=1, node_id=key.node_id, seq=1, period_start_ns=0, period_end_ns=10**9,
                        by_destination=list(rollups))
    return sign_digest(key, d)


def test_duplicate_destination_keys_are_refused_at_verification_and_counted() -> None:
    dup = _signed(_rollup(0), _rollup(1), _rollup(2, key="10.9.0.6:443"))
    with pytest.raises(DigestRejected) as exc:
        verify_digest(dup, 8192)
    assert exc.value.reason == "duplicate_key" and DB in str(exc.value)
    ex = DigestExchange(NodeKey.from_seed(b"receiver"), ManualScheduler(wall_start_ns=2 * 10**9))
    assert not ex.ingest(dup, "10.0.0.9:7946")
    assert ex.counters["digests_duplicate_key"] == 1 and not ex.held()
    # distinct keys pass
    assert ex.ingest(_signed(_rollup(0), _rollup(1, key="10.9.0.6:443")), "10.0.0.9:7946")


# ---------------------------------------------------------------------------------------------- property

_count = st.integers(0, U64_MAX)
_liar_rollup = st.builds(
    flow_pb2.Rollup, key=st.just(DB), flows=_count, useful=_count, bytes_tx=_count, bytes_rx=_count,
    retransmits=_count, rtt_p50_us=st.integers(0, 2**32 - 1), rtt_p95_us=st.integers(0, 2**32 - 1),
    failures=st.dictionaries(st.sampled_from(["timeout", "refused", "reset", "made_up"]), _count, max_size=4),
)


@st.composite
def _honest_rollup(draw: st.DrawFn) -> flow_pb2.Rollup:
    flows = draw(st.integers(1, 10**6))
    timeouts = draw(st.integers(0, flows))
    return flow_pb2.Rollup(
        key=DB, flows=flows, useful=draw(st.integers(0, flows - timeouts)), failures={"timeout": timeouts},
        bytes_tx=draw(st.integers(0, 10**12)), bytes_rx=draw(st.integers(0, 10**12)),
        retransmits=draw(st.integers(0, 10**6)), rtt_p50_us=draw(st.integers(1, 10**6)),
        rtt_p95_us=draw(st.integers(1, 10**7)))


def _digest(i: int, rollup: flow_pb2.Rollup, start_ns: int, end_ns: int) -> mesh_pb2.Digest:
    return mesh_pb2.Digest(version=1, node_id=f"n{i}", seq=1, period_start_ns=start_ns, period_end_ns=end_ns,
                           by_destination=[rollup])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(honest=st.lists(_honest_rollup(), min_size=2, max_size=8), liar=_liar_rollup,
       liar_period=st.tuples(st.integers(0, 2**63), st.integers(0, 2**63)))
def test_one_liar_with_any_values_leaves_every_robust_figure_within_the_honest_range(
    honest: list[flow_pb2.Rollup], liar: flow_pb2.Rollup, liar_period: tuple[int, int]
) -> None:
    """N >= 2 honest hosts (with one honest host and one liar, nothing can tell which is which) and one host
    reporting anything, over any period: every robust figure is within the range of the honest hosts' own
    values, and no sum passes the wire field's limit."""
    end = 10**18
    digests = [_digest(i, r, end - PERIOD_S * 10**9, end) for i, r in enumerate(honest)]
    digests.append(_digest(len(honest), liar, *liar_period))
    [got] = aggregate(host_reports(digests), now_ns=end, destination=DB)
    alone = host_reports(digests[:-1])

    def within(value: float | None, values: list[float]) -> bool:
        lo, hi = min(values), max(values)
        return value is not None and lo - 1e-9 * abs(lo) <= value <= hi + 1e-9 * abs(hi)

    assert within(got.useful_fraction, [r.useful / r.attempts for r in alone])
    assert within(got.rtt_p50_us, [r.rtt_p50_us for r in alone])
    assert within(got.rtt_p95_us, [r.rtt_p95_us for r in alone])
    for name in ("attempts", "bytes_tx", "bytes_rx", "retransmits"):
        assert within(getattr(got, f"{name}_per_s"), [getattr(r, name) / r.period_s for r in alone]), name
    for outcome, value in got.failure_fraction.items():
        assert within(value, [r.failures.get(outcome, 0) / r.attempts for r in alone]), outcome
    assert max(got.attempts, got.useful, got.bytes_tx, got.bytes_rx, got.retransmits,
               *got.failures.values()) <= U64_MAX
