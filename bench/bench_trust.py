"""Trust benchmark: the cost of signing and verifying digests, and of cross-validating them (issue 7).

A realistic digest is built with the mesh's own code: rollups for 50 destinations plus the 20 mesh peers
(``rollups_from_flows``) and 200 endpoint records (``endpoint_records``), once unbounded and once cut to
the mesh's default size bound (``DigestConfig.max_bytes``, what nodes actually publish). Measured per
digest, best of several rounds of many iterations (CPU time of this process):

* sign: ``sign_digest`` (deterministic serialization + Ed25519 sign), and the raw Ed25519 sign alone;
* verify: ``verify_digest`` (Ed25519 verify + parse + identity checks), and the raw Ed25519 verify alone;
* validate: ``claims_from_digest`` + ``CrossValidator.add`` + its share of ``evaluate`` for a pair of nodes
  whose 200 endpoint records all match.

CPU share of verification at N nodes with a period of P seconds: every node verifies every node's digest
once per period, so N / P verifications per second per node (10/s at N = 100, P = 10 s); the share is
cost x N / P over one second of one core.

Wired path (``--wired``, what ``meshnode run`` does per period since issue 7): one node's ``DigestExchange``
ingests the N - 1 peers' signed digests of a period (verify + parse), each handed through ``on_accept`` to a
``TrustMonitor`` (claims, validator), plus its own; then ``set_members`` and ``close_period``. Each node has
one closed TCP flow with each of its ``--fanout`` successors and predecessors (both ends report it, all
match), 50 outside destinations, digests bounded as published. CPU per period / period = the share.

    .venv/bin/python bench/bench_trust.py [--nodes 100] [--period 10] [--iterations 2000]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshnode._model import FlowRecord
from meshnode.mesh import (
    DIGEST_VERSION,
    DigestConfig,
    DigestExchange,
    ManualScheduler,
    NodeKey,
    bound_digest,
    check_signature,
    digest_from_period,
    endpoint_records,
    rollups_from_flows,
    sign_digest,
    verify_digest,
)
from meshnode.trust import CrossValidator, TrustMonitor, ValidationConfig, claims_from_digest
from meshnode.v1 import mesh_pb2

S = 10**9
T0 = 1_700_000_000 * S
P = 10 * S


@dataclass
class _Period:
    period_start_ns: int
    period_end_ns: int
    by_destination: list[object]


def flows(rng: random.Random, me: str, peers: list[str], n_dest: int, n_endpoints: int,
          inbound: bool = False) -> list[FlowRecord]:
    """Outbound flows to ``n_dest`` destinations, and ``n_endpoints`` flows with mesh members."""
    out = []
    for i in range(n_dest):
        dst, dport = f"172.16.{i // 200}.{i % 200 + 1}", rng.choice((443, 5432, 53, 8080))
        for _ in range(rng.randint(1, 20)):
            out.append(FlowRecord(flow_id=len(out), src=me, sport=rng.randint(32768, 60999), dst=dst,
                                  dport=dport, proto="tcp", direction="outbound",
                                  start_ns=T0 + S, end_ns=T0 + 2 * S, bytes_tx=rng.randint(100, 10**6),
                                  bytes_rx=rng.randint(100, 10**7), packets_tx=rng.randint(3, 900),
                                  packets_rx=rng.randint(3, 9000), outcome="established",
                                  srtt_us=rng.randint(100, 90_000), service="https"))
    for i in range(n_endpoints):
        peer = peers[i % len(peers)]
        tx, rx = rng.randint(100, 10**6), rng.randint(100, 10**6)
        out.append(FlowRecord(flow_id=10**6 + i, src=me, sport=40000 + i, dst=peer, dport=7946, proto="tcp",
                              direction="outbound", start_ns=T0 + S, end_ns=T0 + 2 * S, bytes_tx=tx, bytes_rx=rx,
                              packets_tx=tx // 1448 + 3, packets_rx=rx // 1448 + 3, outcome="established",
                              kind="final"))
    return out


def mirror(recs: list[FlowRecord], me: str) -> list[FlowRecord]:
    """The other ends' records of the endpoint flows (as the peer at ``dst`` records them)."""
    return [r.replace(src=r.dst, sport=r.dport, dst=r.src, dport=r.sport, direction="inbound",
                      bytes_tx=r.bytes_rx, bytes_rx=r.bytes_tx, packets_tx=r.packets_rx, packets_rx=r.packets_tx,
                      start_ns=r.start_ns + 1000, end_ns=r.end_ns + 1000)
            for r in recs if r.flow_id >= 10**6]


def build(key: NodeKey, recs: list[FlowRecord], members: set[str], seq: int = 1) -> mesh_pb2.Digest:
    d = digest_from_period(_Period(T0, T0 + P, rollups_from_flows(recs)),  # type: ignore[arg-type]
                           endpoint_records(recs, members))
    d.version, d.node_id, d.seq = DIGEST_VERSION, key.node_id, seq
    d.labels.update({"region": "eu", "site": "ams1", "host": "web-1"})
    return d


def per_call(fn: Callable[[], object], iterations: int, rounds: int = 5) -> float:
    """Best-of-rounds CPU seconds per call."""
    best = float("inf")
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(iterations):
            fn()
        best = min(best, (time.process_time() - t) / iterations)
    return best


def wired(nodes: int, period: float, fanout: int, periods: int, seed: int) -> tuple[float, int, int, int]:
    """CPU seconds per period of verification + validation at one node of ``nodes``; claims matched, evidence
    and endpoint records per digest (see the module docstring)."""
    rng = random.Random(seed)
    p_ns = int(period * 1e9)
    keys = [NodeKey.from_seed(f"wired-{i}".encode()) for i in range(nodes)]
    ips = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(nodes)]
    owners = {ips[i]: keys[i].node_id for i in range(nodes)}
    sched = ManualScheduler(wall_start_ns=T0)
    me = 0
    ex = DigestExchange(keys[me], sched)
    monitor = TrustMonitor(keys[me].node_id, validation=ValidationConfig(period_s=period), now_ns=T0)
    ex.on_accept = lambda digest, _signed: monitor.on_digest(digest, "gossip")
    peer_ex = [DigestExchange(k, sched) for k in keys]
    cpu: list[float] = []
    matched = evidence = n_endp = 0
    for k in range(periods):
        start = T0 + k * p_ns
        signed = []
        for i in range(nodes):
            recs = flows(rng, ips[i], ips, 50, 0)
            for d in range(1, fanout + 1):
                for j, direction in (((i + d) % nodes, "outbound"), ((i - d) % nodes, "inbound")):
                    lo, hi = (i, j) if direction == "outbound" else (j, i)
                    sport = 40000 + lo * 7 + d  # the same 5-tuple at both ends
                    tx, rx = 1000 + 37 * lo + d, 500 + 11 * hi + d
                    a_src, a_sport, a_dst, a_dport = ips[lo], sport, ips[hi], 7400
                    if direction == "outbound":
                        r = FlowRecord(flow_id=10**6 + j, src=a_src, sport=a_sport, dst=a_dst, dport=a_dport,
                                       proto="tcp", direction="outbound", bytes_tx=tx, bytes_rx=rx, packets_tx=9,
                                       packets_rx=9, outcome="established", kind="final")
                    else:
                        r = FlowRecord(flow_id=10**6 + j, src=a_dst, sport=a_dport, dst=a_src, dport=a_sport,
                                       proto="tcp", direction="inbound", bytes_tx=rx, bytes_rx=tx, packets_tx=9,
                                       packets_rx=9, outcome="established", kind="final")
                    recs.append(r.replace(start_ns=start + S, end_ns=start + 2 * S))
            d_i = digest_from_period(_Period(start, start + p_ns, rollups_from_flows(recs)),  # type: ignore[arg-type]
                                     endpoint_records(recs, set(ips) - {ips[i]}))
            d_i.addresses.append(ips[i])
            signed.append(peer_ex[i].publish(d_i))
        sched.advance(period)
        t = time.process_time()
        for i in range(nodes):
            if i == me:
                held = peer_ex[me].latest(keys[me].node_id)
                assert held is not None
                monitor.on_digest(held.digest, "self")
            else:
                ex.ingest(signed[i], ips[i])
        monitor.set_members(owners)
        rep = monitor.close_period(T0 + (k + 1) * p_ns + S)
        cpu.append(time.process_time() - t)
        matched += rep.matched
        evidence += len(rep.evidence)
        sample = peer_ex[1].latest(keys[1].node_id)
        n_endp = len(sample.digest.endpoints) if sample is not None else 0
    steady = sorted(cpu[1:])[len(cpu[1:]) // 2]  # median, after the first period
    return steady, matched, evidence, n_endp


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--period", type=float, default=10.0)
    ap.add_argument("--iterations", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--wired", action="store_true", help="also measure the node's wired path per period")
    ap.add_argument("--fanout", type=int, default=10, help="wired: flows with this many successors each")
    ap.add_argument("--periods", type=int, default=5, help="wired: periods simulated")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    me, peer_ips = "10.0.0.1", [f"10.0.1.{i}" for i in range(1, 21)]
    key = NodeKey.from_seed(b"bench")
    recs = flows(rng, me, peer_ips, 50, 200)
    full = build(key, recs, set(peer_ips))
    bounded = bound_digest(full, DigestConfig().max_bytes)
    it = args.iterations
    rate = args.nodes / args.period
    print(f"digest: {len(full.by_destination)} rollups + {len(full.endpoints)} endpoint records; "
          f"{args.nodes} nodes, period {args.period:g} s -> {rate:.1f} verifications/s per node")
    print(f"{'digest':<28}{'bytes':>7}{'sign us':>10}{'verify us':>11}{'raw sign':>10}{'raw verify':>12}"
          f"{'verify CPU %':>14}")
    for label, d in ((f"unbounded ({len(full.by_destination)} + {len(full.endpoints)})", full),
                     (f"bounded to {DigestConfig().max_bytes} B ({len(d_e := bounded.endpoints)} endp.)", bounded)):
        signed = sign_digest(key, d)
        payload = signed.payload
        sign = per_call(lambda d=d: sign_digest(key, d), it)
        verify = per_call(lambda s=signed: verify_digest(s, 10**7), it)
        raw_sign = per_call(lambda p=payload: key.sign(p), it)
        raw_verify = per_call(lambda s=signed: check_signature(s.public_key, s.signature, s.payload), it)
        share = verify * rate * 100
        print(f"{label:<28}{len(payload):>7}{sign * 1e6:>10.1f}{verify * 1e6:>11.1f}{raw_sign * 1e6:>10.1f}"
              f"{raw_verify * 1e6:>12.1f}{share:>13.3f}%")
    del d_e
    # cross-validation of one pair: a's 200 claims against b's 200 mirrored records
    peer_key = NodeKey.from_seed(b"peer")
    a_digest = build(key, [r.replace(dst="10.0.1.1") if r.flow_id >= 10**6 else r for r in recs], {"10.0.1.1"})
    b_recs = mirror([r.replace(dst="10.0.1.1") for r in recs], me)
    b_digest = build(peer_key, b_recs, {me})
    owners = {me: key.node_id, "10.0.1.1": peer_key.node_id}

    def validate_pair() -> None:
        v = CrossValidator(ValidationConfig(period_s=args.period), owners=owners)
        v.add(claims_from_digest(a_digest, "a")[0])
        v.add(claims_from_digest(b_digest, "b")[0])
        rep = v.evaluate(T0 + P + S)
        assert not rep.evidence and rep.matched == 400, rep

    vit = max(20, it // 20)
    pair = per_call(validate_pair, vit)
    per_digest = pair / 2
    print(f"cross-validation: {per_digest * 1e6:.0f} us per digest of 200 endpoint records (pair of nodes, all "
          f"matched) -> {per_digest * rate * 100:.2f}% CPU at {rate:.1f} digests/s")
    if args.wired:
        per_period, matched, evidence, n_endp = wired(args.nodes, args.period, args.fanout, args.periods, args.seed)
        print(f"wired path, one node of {args.nodes}: {args.nodes - 1} peer digests verified + validated "
              f"({n_endp} endpoint records each) + close_period: {per_period * 1e3:.1f} ms CPU per "
              f"{args.period:g} s period -> {per_period / args.period * 100:.2f}% of one core "
              f"(claims matched {matched}, evidence {evidence} over {args.periods} periods)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
