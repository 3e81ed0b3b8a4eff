"""What holds a ``meshnode run`` node's event loop under one attack of ``bench_api_hostile``.

Run: ``.venv/bin/python -m bench.profile_node_loop [--attack "idle streams"] [--seconds 30] [--root DIR ...]``.
The node process alone gets a ``sitecustomize`` (in a temporary directory on its ``PYTHONPATH``) that times
every garbage collection (``gc.callbacks``: generation, wall and thread-CPU ms), every loop callback over
10 ms (wall and CPU: a slow callback with no CPU is the loop's thread waiting for a CPU or the GIL) and a
10 ms loop-lag timer, and writes them out at exit. Prints, per tree: Status p50/p99/max as the bench probes
it, the node's CPU seconds in the window, the loop lag, the collections in the window by generation (full
ones with their time) and the slow callbacks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import grpc

from bench.bench_api_hostile import ATTACKS, ROOT, attacking
from meshnode.v1 import observer_pb2, observer_pb2_grpc
from tests._support.nodeproc import NodeProcess, percentile, prefill

SITECUSTOMIZE = '''
import os
out = os.environ.get("MESHNODE_LOOP_PROFILE")
if out:
    import asyncio.events, atexit, gc, json, threading, time
    gcs, slow, lags, began, started = [], [], [], {}, []

    def on_gc(phase, info):
        if phase == "start":
            began["t"], began["c"] = time.perf_counter(), time.thread_time()
        elif "t" in began:
            gcs.append((info["generation"], (time.perf_counter() - began.pop("t")) * 1e3,
                        (time.thread_time() - began.pop("c")) * 1e3, time.time()))

    gc.callbacks.append(on_gc)
    run = asyncio.events.Handle._run

    def tick(loop, due):
        now = loop.time()
        lags.append((time.time(), now - due))
        loop.call_at(now + 0.01, tick, loop, now + 0.01)

    def timed(self):
        if not started and self._loop is not None and threading.current_thread() is threading.main_thread():
            started.append(1)
            self._loop.call_later(1.0, tick, self._loop, self._loop.time() + 1.0)
        t, c = time.perf_counter(), time.thread_time()
        run(self)
        if time.perf_counter() - t > 0.010:
            slow.append(((time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3, time.time()))

    asyncio.events.Handle._run = timed
    atexit.register(lambda: json.dump({"gc": gcs, "slow": slow, "lags": lags}, open(out, "w")))
'''


def cpu_seconds(pid: int) -> float:
    """User + system CPU of every thread of ``pid`` so far."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{task}/stat").read_text().rpartition(")")[2].split()
        except OSError:  # the thread ended meanwhile
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def profile(root: Path, attack_name: str, seconds: float, hooks: Path) -> None:
    attack, per_poll, stored = ATTACKS[attack_name]
    data = Path(tempfile.mkdtemp(prefix="bench-api-"))
    if stored:
        prefill(data, stored)
    out = hooks / f"profile-{time.monotonic_ns()}.json"
    env = {"PYTHONPATH": f"{hooks}:{root}", "MESHNODE_LOOP_PROFILE": str(out)}
    status: list[float] = []
    with NodeProcess(data, flows_per_poll=per_poll, root=root, env=env) as node:
        time.sleep(1.5)
        with attacking(node.address, attack), grpc.insecure_channel(node.address) as ch:
            time.sleep(0.5)
            stub = observer_pb2_grpc.ObserverStub(ch)
            cpu0, w0 = cpu_seconds(node.pid), time.time()
            while time.time() < w0 + seconds:
                began = time.monotonic()
                stub.Status(observer_pb2.StatusRequest(), timeout=30)
                status.append(time.monotonic() - began)
                time.sleep(0.05)
            cpu, w1 = cpu_seconds(node.pid) - cpu0, time.time()
            node.terminate(30)
    d = json.loads(out.read_text())
    lags = [lag for t, lag in d["lags"] if w0 <= t <= w1]
    print(f"{attack_name} [{root}]: Status p50 {percentile(status, 0.5) * 1e3:.1f} p99 "
          f"{percentile(status, 0.99) * 1e3:.0f} max {max(status) * 1e3:.0f} ms ({len(status)} samples); "
          f"node CPU {cpu:.1f} s in {w1 - w0:.0f} s")
    print(f"  loop lag p50 {percentile(lags, 0.5) * 1e3:.1f} p99 {percentile(lags, 0.99) * 1e3:.0f} max "
          f"{max(lags, default=0) * 1e3:.0f} ms")
    in_window = [g for g in d["gc"] if w0 <= g[3] <= w1]
    for gen in (0, 1, 2):
        got = [g for g in in_window if g[0] == gen]
        cpus = ", ".join(f"{g[2]:.0f}" for g in got) if gen == 2 else f"max {max((g[2] for g in got), default=0):.1f}"
        print(f"  gen {gen} collections in the window: {len(got)} (CPU ms: {cpus})")
    slow = [s for s in d["slow"] if w0 <= s[2] <= w1]
    idle = sum(1 for s in slow if s[1] < 0.25 * s[0])
    print(f"  loop callbacks over 10 ms: {len(slow)}, {idle} of them mostly waiting (CPU < 1/4 of wall); "
          f"longest {max((s[0] for s in slow), default=0):.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--attack", default="idle streams", choices=list(ATTACKS))
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--root", type=Path, action="append", help="a source tree whose node runs (repeatable)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="loop-profile-") as tmp:
        hooks = Path(tmp)
        (hooks / "sitecustomize.py").write_text(SITECUSTOMIZE)
        for root in args.root or [ROOT]:
            profile(root, args.attack, args.seconds, hooks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
