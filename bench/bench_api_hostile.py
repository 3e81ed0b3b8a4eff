"""Loop latency of a ``meshnode run`` node (fake sensor, mesh on) while hostile API clients attack it.

Run: ``.venv/bin/python -m bench.bench_api_hostile [--seconds 8] [--root DIR ...] [--rounds N]``; ``--root``
(repeatable) runs the node of each source tree given (e.g. an export of an older commit, with its generated
``meshnode/v1``) side by side: each attack on each tree in turn, ``--rounds`` times, then the latencies of
every round pooled per tree.

For each attack a fresh node (1 s export periods, 50 fake flows a poll unless said) is attacked for
``--seconds`` while a probe thread calls ``Status`` (a hop to a worker thread and back) and ``Mesh.Peers``
(answered on the event loop that runs SWIM) every 50 ms with a 30 s deadline. Prints p50/p99/max of both in
ms, then the seconds SIGTERM took to stop the node with the attack still on (period flushed; the node's
exit code is 0). The attacks:

* ``none``: no attack (the baseline);
* ``250k filter``: a follow stream whose filter names 250,000 destinations (a 3 MB request), sent again as
  soon as it ends;
* ``1,024-value filters``: 16 follow streams with 1,024-value filters that no flow matches, 200 fake flows a
  poll (400 flows/s);
* ``idle streams``: 100 Flows streams over 20,000 stored flows that the client never reads;
* ``Health flood``: 8 clients asking Health over the whole history, again and again.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshnode.v1 import flow_pb2, observer_pb2, observer_pb2_grpc  # noqa: E402
from tests._support.nodeproc import LatencyProbe, NodeProcess, destinations, percentile, prefill  # noqa: E402

Attack = Callable[[observer_pb2_grpc.ObserverStub, threading.Event], None]


def _repeat(stop: threading.Event, call: Callable[[], object]) -> None:
    while not stop.is_set():
        with contextlib.suppress(grpc.RpcError):
            call()


def big_filter(stub: observer_pb2_grpc.ObserverStub, stop: threading.Event) -> None:
    req = observer_pb2.FlowsRequest(follow=True, whitelist=[flow_pb2.FlowFilter(dst=destinations(250_000))])

    def once() -> None:
        for _ in stub.Flows(req, timeout=5):
            pass

    _repeat(stop, once)


def wide_filters(stub: observer_pb2_grpc.ObserverStub, stop: threading.Event) -> None:
    req = observer_pb2.FlowsRequest(follow=True, whitelist=[flow_pb2.FlowFilter(dst=destinations(1_024))])
    calls = [stub.Flows(req) for _ in range(16)]
    stop.wait()
    for c in calls:
        c.cancel()


def idle_streams(stub: observer_pb2_grpc.ObserverStub, stop: threading.Event) -> None:
    calls = [stub.Flows(observer_pb2.FlowsRequest(number=1_000_000)) for _ in range(100)]
    stop.wait()
    for c in calls:
        c.cancel()


def health_flood(stub: observer_pb2_grpc.ObserverStub, stop: threading.Event) -> None:
    threads = [threading.Thread(target=_repeat, args=(stop, lambda: stub.Health(
        observer_pb2.HealthRequest(since_ns=1), timeout=30))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


ATTACKS: dict[str, tuple[Attack | None, int, int]] = {
    # name: (attack, fake flows a poll, stored flows before start)
    "none": (None, 50, 20_000),
    "250k filter": (big_filter, 50, 0),
    "1,024-value filters": (wide_filters, 200, 0),
    "idle streams": (idle_streams, 50, 20_000),
    "Health flood": (health_flood, 50, 20_000),
}


@contextlib.contextmanager
def attacking(address: str, attack: Attack | None) -> Iterator[None]:
    stop = threading.Event()
    with grpc.insecure_channel(address) as ch:
        t = threading.Thread(target=attack, args=(observer_pb2_grpc.ObserverStub(ch), stop), daemon=True) \
            if attack else None
        if t:
            t.start()
        try:
            yield
        finally:
            stop.set()
            if t:
                t.join(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--root", type=Path, action="append", help="a source tree whose node runs (repeatable; "
                                                                 "default this one)")
    ap.add_argument("--rounds", type=int, default=1, help="runs of every attack on every tree")
    ap.add_argument("--only", action="append", choices=list(ATTACKS), help="run only these attacks")
    args = ap.parse_args()
    roots: list[Path] = args.root or [ROOT]
    tags = {root: f"[{i}]" if len(roots) > 1 else "" for i, root in enumerate(roots)}
    for root, tag in tags.items():
        print(f"node {tag} from {root}".replace("  ", " "))
    print(f"{args.seconds:g} s per attack; latencies in ms (p50 / p99 / max)")
    print(f"{'attack':<26}{'Status':>24}{'Peers (loop)':>24}{'samples':>9}{'SIGTERM s':>11}")

    def ms(v: list[float]) -> str:
        return f"{percentile(v, 0.5) * 1000:.1f} / {percentile(v, 0.99) * 1000:.0f} / {max(v) * 1000:.0f}"

    pooled: dict[tuple[str, Path], tuple[list[float], list[float]]] = {}
    for _ in range(args.rounds):
        for name, (attack, per_poll, stored) in ATTACKS.items():
            if args.only and name not in args.only:
                continue
            for root in roots:
                data = Path(tempfile.mkdtemp(prefix="bench-api-"))
                if stored:
                    prefill(data, stored)
                with NodeProcess(data, flows_per_poll=per_poll, root=root) as node:
                    time.sleep(1.5)
                    with attacking(node.address, attack):
                        time.sleep(0.5)
                        with LatencyProbe(node.address) as probe:
                            time.sleep(args.seconds)
                        try:
                            stopped = f"{node.terminate(30):.1f}"
                        except Exception:  # still running after 30 s
                            stopped = ">30"
                status, peers = pooled.setdefault((name, root), ([], []))
                status += probe.status
                peers += probe.peers
                label = f"{name} {tags[root]}".strip()
                print(f"{label:<26}{ms(probe.status):>24}{ms(probe.peers):>24}{len(probe.status):>9}"
                      f"{stopped:>11}", flush=True)
    if args.rounds > 1:
        print(f"pooled over {args.rounds} rounds")
        for (name, root), (status, peers) in pooled.items():
            label = f"{name} {tags[root]}".strip()
            print(f"{label:<26}{ms(status):>24}{ms(peers):>24}{len(status):>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
