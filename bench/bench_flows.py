"""``meshctl flows`` speed (issue 5): a real node serving a store of 100,000 flows, timed end to end.

    .venv/bin/python -m bench.bench_flows                       # this tree only
    .venv/bin/python -m bench.bench_flows --baseline 0268af8    # and side by side with an older commit

Fills a fresh data directory with ``--flows`` varied records (TCP and UDP, IPv4 and IPv6, failures, drop
reasons, services; all ending within the last 10 minutes, so a bare ``meshctl flows`` shows the oldest
1,000 of them) through ``Store.close_period``, starts ``meshnode run --insecure --sensor diag`` on it and
times, median of ``--runs`` each (process start included, output to a file):

- ``meshctl flows --since all --limit N --json`` (goal 2 s for 100,000 records),
- ``meshctl flows`` (human table of the node's default 1,000 records; goal 0.3 s),
- the Flows RPC alone: a Python gRPC client in this process asking for the same N records in batches,
  counting them without decoding (the server's share).

With ``--baseline REV`` the tree at REV is exported (``git archive``, nothing in the checkout changes) and
its node and meshctl run against the same data directory, alternating with this tree's, so both see the
same machine load; the outputs of the two must be byte-for-byte equal, and the ratios are this / baseline.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import random
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshnode._model import FlowRecord  # noqa: E402
from meshnode.store import Retention, Store  # noqa: E402

S = 1_000_000_000
COMMS = ["curl", "nginx", "postgres", "java", "python3", "sshd", "chrony", "apt", "node", "envoy"]
PORTS = [443, 443, 443, 80, 5432, 22, 123, 8080, 53, 6379]
TCP_OUTCOMES = ["established"] * 8 + ["refused", "timeout", "reset"]
UDP_OUTCOMES = ["udp_answered"] * 4 + ["udp_unanswered"]
LIMITS = ["app", "receiver_window", "send_buffer", "congestion", "unknown"]
PERIOD_ROWS = 10_000
NODE_CMD = "import sys; from meshnode.cli_main import main; sys.exit(main())"


def make_flow(i: int, end: int, rng: random.Random) -> FlowRecord:
    """One varied flow record ending at ``end``."""
    k = rng.randrange(10)
    udp = PORTS[k] in (53, 123)
    v6 = rng.random() < 0.2
    dst = (f"fd00:{rng.randrange(4):x}::{rng.randrange(1, 65535):x}" if v6
           else f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}")
    outcome = rng.choice(UDP_OUTCOMES if udp else TCP_OUTCOMES)
    failed = outcome not in ("established", "udp_answered")
    drops = {"TCP_RETRANS": rng.randrange(1, 5)} if rng.random() < 0.05 else {}
    return FlowRecord(
        flow_id=(1 << 63) + i if i % 97 == 0 else i, src="fd00::1" if v6 else "10.0.0.1",
        sport=32768 + i % 28000, dst=dst, dport=PORTS[k], proto="udp" if udp else "tcp",
        direction="inbound" if i % 13 == 0 else "outbound", pid=1000 + k, comm=COMMS[k],
        cgroup=f"/system.slice/{COMMS[k]}.service", cgroup_id=5000 + k, netns=4026531840,
        start_ns=end - rng.randrange(1, 5 * S), end_ns=end,
        bytes_tx=0 if failed else rng.randrange(100, 100_000),
        bytes_rx=0 if failed else rng.randrange(100, 10_000_000),
        packets_tx=rng.randrange(1, 100), packets_rx=0 if failed else rng.randrange(1, 10_000),
        outcome=outcome, retransmits=rng.randrange(3), srtt_us=0 if udp else rng.randrange(100, 80_000),
        min_rtt_us=0 if udp else 90, max_rtt_us=0 if udp else 90_000, cwnd=0 if udp else 10,
        cwnd_min=0 if udp else 10, cwnd_max=0 if udp else 40, limited_by="unknown" if udp else rng.choice(LIMITS),
        connect_us=0 if udp or failed else rng.randrange(100, 5000), resets_rx=int(outcome == "refused"),
        drops=sum(drops.values()), rttvar_us=rng.randrange(0, 5000), delivery_rate=rng.randrange(0, 10**9),
        lost=rng.randrange(2), reordering=rng.randrange(3), service="https" if PORTS[k] == 443 else "",
        node_id="bench-node", drop_reasons=drops,
    )


def fill(data_dir: Path, n: int, seed: int) -> None:
    """``n`` records ending within the last 10 minutes, in periods of PERIOD_ROWS records, plus 200 interims."""
    rng = random.Random(seed)
    now = time.time_ns()
    t0 = now - 600 * S
    step = 590 * S // n
    store = Store.in_dir(data_dir, Retention())
    try:
        seq = store.open_period(t0)
        for first in range(0, n, PERIOD_ROWS):
            last = min(n, first + PERIOD_ROWS)
            finals = [make_flow(i + 1, t0 + i * step, rng) for i in range(first, last)]
            end = finals[-1].end_ns + 1
            interims = [make_flow(10**9 + j, end, rng).replace(kind="interim") for j in range(200)]
            nxt = end if last < n else None
            _, seq_next, _ = store.close_period(seq, end, finals, interims, "", next_start_ns=nxt, now_ns=end)
            if seq_next is not None:
                seq = seq_next
    finally:
        store.close()


def export_tree(rev: str, dest: Path) -> Path:
    """The committed tree at ``rev`` under ``dest`` (read from git; the checkout is not touched)."""
    data = subprocess.run(["git", "archive", "--format=tar", rev], cwd=ROOT, check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, filter="data")
    return dest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Variant:
    """One tree (this checkout or an exported revision) and its timings."""

    name: str
    tree: Path
    times: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # (meshctl, node) CPU seconds
    digests: dict[str, set[str]] = field(default_factory=dict)
    lines: dict[str, int] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(self.tree), "PYTHONDONTWRITEBYTECODE": "1"}

    def meshctl(self, node: str, *args: str) -> list[str]:
        return [sys.executable, "-m", "cli", "--node", node, *args]


def start_node(v: Variant, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    node = subprocess.Popen(
        [sys.executable, "-c", NODE_CMD, "run", "--insecure", "--listen", f"127.0.0.1:{port}", "--data-dir",
         str(data_dir), "--metrics", "off", "--sensor", "diag", "--export-period", "60", "--log-level", "warning"],
        cwd=v.tree, env=v.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if node.poll() is not None:
            err = node.stderr.read().decode() if node.stderr else ""
            raise SystemExit(f"{v.name}: the node exited with {node.returncode}: {err[-2000:]}")
        r = subprocess.run(v.meshctl(f"127.0.0.1:{port}", "status", "--json"), cwd=v.tree, env=v.env(),
                           capture_output=True)
        if r.returncode == 0:
            return node
        time.sleep(0.2)
    stop_node(node)
    raise SystemExit(f"{v.name}: the node did not answer within 60 s")


def stop_node(node: subprocess.Popen[bytes]) -> None:
    node.terminate()
    try:
        node.wait(30)
    except subprocess.TimeoutExpired:
        node.kill()
        node.wait(10)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def time_command(v: Variant, key: str, cmd: list[str], out_path: Path, node_pid: int) -> None:
    with out_path.open("wb") as out:
        c0, n0 = children_cpu_s(), cpu_s(node_pid)
        t = time.perf_counter()
        r = subprocess.run(cmd, cwd=v.tree, env=v.env(), stdout=out, stderr=subprocess.PIPE, timeout=300)
        elapsed = time.perf_counter() - t
        v.cpu.setdefault(key, []).append((children_cpu_s() - c0, cpu_s(node_pid) - n0))
    if r.returncode != 0:
        raise SystemExit(f"{v.name}: {' '.join(cmd[2:])} exited {r.returncode}: {r.stderr.decode()[-2000:]}")
    data = out_path.read_bytes()
    v.times.setdefault(key, []).append(elapsed)
    v.digests.setdefault(key, set()).add(hashlib.sha256(data).hexdigest())
    v.lines[key] = data.count(b"\n")


def time_rpc(v: Variant, node: str, n: int, node_pid: int) -> None:
    """The Flows RPC alone, from this process: records counted, not decoded into Python objects."""
    import grpc

    from meshnode.v1 import observer_pb2, observer_pb2_grpc

    with grpc.insecure_channel(node, options=[("grpc.max_receive_message_length", 64 << 20)]) as ch:
        stub = observer_pb2_grpc.ObserverStub(ch)  # type: ignore[no-untyped-call]
        req = observer_pb2.FlowsRequest(number=n, batch_size=1000)
        n0 = cpu_s(node_pid)
        t = time.perf_counter()
        got = sum(len(r.flows) or r.HasField("flow") for r in stub.Flows(req, timeout=120))
        elapsed = time.perf_counter() - t
        v.cpu.setdefault("rpc", []).append((0.0, cpu_s(node_pid) - n0))
    if got != n:
        raise SystemExit(f"{v.name}: the Flows RPC returned {got} records, not {n}")
    v.times.setdefault("rpc", []).append(elapsed)


def run_variant(v: Variant, data_dir: Path, scratch: Path, n: int, runs: int) -> None:
    port = free_port()
    node = start_node(v, data_dir, port)
    addr = f"127.0.0.1:{port}"
    try:
        commands = {
            "json": v.meshctl(addr, "flows", "--since", "all", "--limit", str(n), "--json", "--timeout", "120s"),
            "table": v.meshctl(addr, "flows"),
        }
        for key, cmd in commands.items():  # warm-up: page cache, the node's first query
            time_command(v, key, cmd, scratch / f"{v.name}-{key}.out", node.pid)
            v.times[key].pop()
            v.cpu[key].pop()
        time_rpc(v, addr, n, node.pid)
        v.times["rpc"].pop()
        v.cpu["rpc"].pop()
        for _ in range(runs):
            for key, cmd in commands.items():
                time_command(v, key, cmd, scratch / f"{v.name}-{key}.out", node.pid)
            time_rpc(v, addr, n, node.pid)
    finally:
        stop_node(node)


LABELS = {"json": "meshctl flows --since all --limit N --json", "table": "meshctl flows (1,000-row table)",
          "rpc": "Flows RPC alone (server + gRPC)"}
GOALS = {"json": 2.0, "table": 0.3}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--flows", type=int, default=100_000, help="records in the store (default 100,000)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs per command (default 5; median shown)")
    ap.add_argument("--rounds", type=int, default=1, help="alternate the variants this many times (default 1)")
    ap.add_argument("--baseline", metavar="REV", help="also run the tree at this git revision, side by side")
    ap.add_argument("--seed", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-flows-", dir="/var/tmp"))
    try:
        variants = [Variant("this", ROOT)]
        if args.baseline:
            rev = subprocess.run(["git", "rev-parse", "--short", args.baseline], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout.strip()
            variants.insert(0, Variant(f"base {rev}", export_tree(rev, tmp / "baseline")))
        data_dir = tmp / "data"
        t = time.perf_counter()
        fill(data_dir, args.flows, args.seed)
        print(f"store: {args.flows:,} flows (+200 interim) in {time.perf_counter() - t:.1f} s; "
              f"load average {os.getloadavg()[0]:.2f}; median of {args.runs} x {args.rounds} round(s)")
        for _ in range(args.rounds):
            for v in variants:
                run_variant(v, data_dir, tmp, args.flows, args.runs)
        print(f"\n{'seconds (median)':<44}" + "".join(f"{v.name:>14}" for v in variants)
              + ("       ratio" if len(variants) == 2 else "") + "    goal")
        for key, label in LABELS.items():
            meds = [statistics.median(v.times[key]) for v in variants]
            ratio = f"{meds[-1] / meds[0]:>11.2f}x" if len(variants) == 2 else ""
            goal = f"  <= {GOALS[key]:g}" if key in GOALS else ""
            print(f"{label.replace('N', f'{args.flows:,}'):<44}" + "".join(f"{m:>14.3f}" for m in meds)
                  + ratio + goal)
        print(f"\n{'CPU seconds (median): meshctl / node':<44}" + "".join(f"{v.name:>14}" for v in variants)
              + ("       ratio" if len(variants) == 2 else ""))
        for key, label in LABELS.items():
            for side, name in ((0, "meshctl"), (1, "node")):
                if key == "rpc" and side == 0:
                    continue
                meds = [statistics.median(c[side] for c in v.cpu[key]) for v in variants]
                ratio = f"{meds[-1] / meds[0]:>11.2f}x" if len(variants) == 2 and meds[0] else ""
                print(f"{(name + ': ' + label).replace('N', f'{args.flows:,}')[:43]:<44}"
                      + "".join(f"{m:>14.2f}" for m in meds) + ratio)
        for key in ("json", "table"):
            spread = "; ".join(f"{v.name}: " + ", ".join(f"{x:.2f}" for x in sorted(v.times[key]))
                               for v in variants)
            print(f"  {key} runs: {spread}")
        this = variants[-1]
        print(f"\noutput lines: json {this.lines['json']:,}, table {this.lines['table']:,}")
        for key in ("json", "table"):
            if len(this.digests[key]) != 1:
                print(f"WARNING: {key} output differed between runs of this tree")
            if len(variants) == 2:
                same = variants[0].digests[key] == this.digests[key]
                print(f"{key} output byte-for-byte equal to the baseline's: {'yes' if same else 'NO'}")
                if not same:
                    return 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
