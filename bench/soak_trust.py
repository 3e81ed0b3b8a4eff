"""The honest soak (run by hand, not a test CI runs): five honest eBPF nodes (export period 2 s) under real TCP
and UDP traffic between every pair, 5 % random loss both ways on the b<->c link (nftables), for ``--seconds``
(bench/RESULTS.md, "Issue 13", has the 30-minute run). No node may hold any evidence, and every claim whose witness's
digests had a gap must have had it filled (the missed period fetched by seq) rather than end unverifiable.

    .venv/bin/python -m bench.soak_trust --seconds 1800      # root: eBPF nodes in lab namespaces
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests._support import traffic as t  # noqa: E402
from tests._support.trustfleet import HOSTS, PERIOD, running_fleet  # noqa: E402


def soak(tmp_path: Path, seconds: float) -> None:
    """Fails (AssertionError) when any node holds evidence or a score below 1 at the end."""
    rng = random.Random(13)
    with running_fleet(tmp_path, HOSTS, lambda lab: {}) as fleet:
        lab = fleet.lab
        sinks = [t.start(lab[h], t.TCP_SINK, 32000) for h in HOSTS]
        echo = t.start(lab["b"], t.UDP_ECHO, "4", 32001)
        for s in [*sinks, echo]:
            t.wait_ready(s)
        pairs = [(src, dst) for src in HOSTS for dst in HOSTS if src != dst]
        t0 = time.monotonic()
        rounds = 0
        try:
            with lab["b"].loss(5, peer=lab["c"]):
                while time.monotonic() - t0 < seconds:
                    procs = [t.start(lab[src], t.TCP_BULK, lab[dst].ip, 32000, rng.randrange(1_000, 400_000))
                             for src, dst in rng.sample(pairs, 4)]
                    procs += [t.start(lab[src], t.UDP_QUERY, lab["b"].ip, 32001, 300, 1.0) for src in "acd"]
                    for p in procs:
                        t.result(p, timeout=60)
                    rounds += 1
                    if rounds % 200 == 0:
                        docs = {h: fleet.validate(h) for h in HOSTS}
                        print(f"{time.monotonic() - t0:6.0f} s: evidence {[len(d['evidence']) for d in docs.values()]}"
                              f", matched {[d['counters'].get('claims_matched', 0) for d in docs.values()]}",
                              flush=True)
                    time.sleep(rng.uniform(0.2, 1.0))
            time.sleep(3 * PERIOD)  # the last claims judged
            docs = {h: fleet.validate(h) for h in HOSTS}
            mesh = {h: (fleet.meshctl(h, "peers") or {}).get("counters", {}) for h in HOSTS}
        finally:
            for s in [*sinks, echo]:
                s.kill()
    keys = ("claims_matched", "claims_checked", "claims_unchanged", "gap_waits", "unverifiable_witness_gap",
            "unverifiable_witness_truncated", "unverifiable_src_not_member", "unverifiable_no_witness",
            "unverifiable_witness_silent", "unverifiable_udp_tuple_incomplete")
    print(f"\nhonest soak, {seconds:.0f} s, {rounds} rounds of traffic, 5 % loss b<->c, period {PERIOD:g} s:")
    for h in HOSTS:
        c, m = docs[h]["counters"], mesh[h]
        print(f"  {h}: evidence {len(docs[h]['evidence'])}, " + ", ".join(f"{k} {c.get(k, 0)}" for k in keys)
              + f", digests fetched by seq {m.get('digest_fetches', 0)} (failed {m.get('digest_fetches_failed', 0)}),"
              f" missed periods filled {m.get('digests_history_filled', 0)}, history evicted "
              f"{m.get('digest_history_evicted', 0)}")
    for h, d in docs.items():
        assert d["evidence"] == [], f"{h}: {d['evidence'][:4]}"
        assert all(s["score"] == 1.0 and not s["flagged"] for s in d["scores"]), (h, d["scores"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=1800.0, help="how long the traffic runs (default 1800)")
    seconds = ap.parse_args().seconds
    with tempfile.TemporaryDirectory(prefix="soak_trust_") as tmp:
        soak(Path(tmp), seconds)
    print("no evidence, every score 1.0: passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
