"""Time to correct blame in the lab, in export periods, with precision (root; real eBPF, six nodes).

The scenario fleet (``meshnode.lab.Fleet``: six hosts in two sites, real client loops, one node per host);
web1's node is asked ``Diagnosis.Blame`` with the default request (what ``meshctl blame`` asks) every
0.25 s from inside the lab (``BlameWatch``). Per run, for each fault scenario in turn:

* **named**: from the fault being in force to the first answer whose top suspect is the expected one;
* **healed**: from the fault's removal to the first answer that no longer names it;
* **wrong**: answers during the fault (kept ``--keep`` periods after it was named) whose top suspect was
  another entity (from the first answer with one on), and **false alarms**: answers with any suspect in
  the healthy stretch after the heal (``--hold`` periods, which also let the fleet settle before the next
  fault).

Precision is correct top answers over all answers that named anyone. Prints one JSON line per scenario run
and a table (median and worst, in periods).

    sudo .venv/bin/python bench/bench_blame_lab.py [--runs 10] [--period 2] [--hold 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from meshnode.lab import BlameWatch, Fleet
from meshnode.lab._watch import Answer, top

FAULTS = ("blackhole-server", "site-loss", "refuse-port", "bad-client")
GIVE_UP = 40.0


def one(fleet: Fleet, watch: BlameWatch, name: str, period: float, hold: float, keep: float) -> dict[str, object]:
    handle = fleet.fault(name)
    assert handle.expected is not None
    want = (handle.expected.kind, handle.expected.name)
    t0 = handle.started_ns / 1e9

    def named_ok(a: Answer) -> bool:
        t = top(a)
        return t is not None and t[:2] == want

    def gone(a: Answer) -> bool:
        return all((s[0], s[1]) != want for s in a.get("suspects", []))

    named = watch.wait(named_ok, t0, GIVE_UP)
    time.sleep(keep * period)  # the fault stays: are the answers after the first right one right too?
    t_heal = time.time()
    handle.remove()
    healed = watch.wait(gone, t_heal, GIVE_UP)
    t_healed = healed["t"] if healed else time.time()
    time.sleep(hold * period)
    during = [a for a in watch.answers(t0, t_heal) if "error" not in a]
    after = [a for a in watch.answers(t_healed, time.time()) if "error" not in a]
    first = next((i for i, a in enumerate(during) if top(a) is not None), len(during))
    wrong = [t for a in during[first:] if (t := top(a)) is not None and not named_ok(a)]
    alarms = [t for a in after if (t := top(a)) is not None]
    right = sum(1 for a in during if named_ok(a))
    return {
        "scenario": name, "named_s": round(named["t"] - t0, 2) if named else None,
        "healed_s": round(t_healed - t_heal, 2) if healed else None, "answers": len(during) + len(after),
        "right": right, "wrong": len(wrong), "false_alarms": len(alarms),
        "wrong_tops": sorted({f"{k} {n}" for k, n, _ in [*wrong, *alarms]})[:5],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--period", type=float, default=2.0)
    ap.add_argument("--hold", type=float, default=3.0, help="healthy periods after each heal")
    ap.add_argument("--keep", type=float, default=2.0, help="periods a fault stays after it is named")
    ap.add_argument("--faults", default=",".join(FAULTS))
    args = ap.parse_args()
    faults = [f for f in args.faults.split(",") if f]
    results: list[dict[str, object]] = []
    with (Fleet.up(nodes=True, export_period=args.period) as fleet,
          BlameWatch(fleet.host("web1"), fleet.node_addr("web1")) as watch):
        # warm up: web1 holds all four client hosts' transactions and names nobody
        ready = watch.wait(lambda a: a.get("hosts", 0) >= 4 and not a.get("suspects"), time.time(), 90)
        if ready is None:
            print("web1's node never saw the fleet healthy", file=sys.stderr)
            return 1
        t = time.time()
        time.sleep(3 * args.period)
        healthy = [a for a in watch.answers(t) if "error" not in a]
        base = {"scenario": "none", "answers": len(healthy),
                "false_alarms": sum(1 for a in healthy if top(a) is not None)}
        print(json.dumps(base), flush=True)
        for run in range(args.runs):
            for name in faults:
                r = one(fleet, watch, name, args.period, args.hold, args.keep)
                r["run"] = run + 1
                results.append(r)
                print(json.dumps(r), flush=True)
    p = args.period
    print(f"\nexport period {p:g} s, {args.runs} runs; times in periods (median / worst), web1 asked every 0.25 s")
    print("| scenario | runs named | named: median | worst | healed: median | worst | precision | false alarms |")
    print("|---|---|---|---|---|---|---|---|")
    for name in faults:
        rs = [r for r in results if r["scenario"] == name]
        named = [float(r["named_s"]) / p for r in rs if r["named_s"] is not None]  # type: ignore[arg-type]
        healed = [float(r["healed_s"]) / p for r in rs if r["healed_s"] is not None]  # type: ignore[arg-type]
        right = sum(int(r["right"]) for r in rs)  # type: ignore[call-overload]
        wrong = sum(int(r["wrong"]) for r in rs)  # type: ignore[call-overload]
        alarms = sum(int(r["false_alarms"]) for r in rs)  # type: ignore[call-overload]
        answers = sum(int(r["answers"]) for r in rs)  # type: ignore[call-overload]
        prec = right / (right + wrong + alarms) if right + wrong + alarms else 1.0

        def fmt(xs: list[float], f: object) -> str:
            return f"{f(xs):.2f}" if xs else "-"  # type: ignore[operator]

        print(f"| {name} | {len(named)}/{len(rs)} | {fmt(named, statistics.median)} | {fmt(named, max)} | "
              f"{fmt(healed, statistics.median)} | {fmt(healed, max)} | {prec:.3f} | {alarms} of {answers} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
