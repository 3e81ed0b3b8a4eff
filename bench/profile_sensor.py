"""User-space cost per flow of the eBPF sensor, measured in-process (issue 3's CPU goal).

Run as root: ``.venv/bin/python -m bench.profile_sensor [--conns 5000] [--cprofile]``.

Starts an ``EbpfSensor`` in this process, scoped to a fresh cgroup, runs a loopback churn (100 B request,
5 KB reply) from a client and a server placed in that cgroup, and polls like ``meshnode capture --json``
does, timing with ``time.process_time`` (this process's CPU only; the workload runs in other processes):

* ``ring``: draining the ring buffer and decoding its records (``Probes.poll_events``);
* ``model``: kernel records -> FlowRecord (``EbpfSensor._handle`` and the rest of ``poll``);
* ``json``: the capture's JSON line per flow.

``--path json`` measures what ``meshnode capture --json`` runs since the JSON fast path,
``EbpfSensor.poll_json``: ``ring`` is then ``Probes.poll_raw`` (records unpacked, nothing decoded) and
``model`` everything else up to the poll's text (``json`` is 0: the lines come out of ``poll_json``).
``--path poll`` (the default, and what the node runs) is ``poll`` then ``json_line`` per flow.

With ``--cprofile`` it prints the top functions of the same path instead (cProfile inflates small calls;
use it for where, the plain run for how much).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_sensor import CLIENT, PY, SERVER  # noqa: E402

CGROUP_ROOT = Path("/sys/fs/cgroup/unified")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--conns", type=int, default=5000)
    ap.add_argument("--cprofile", action="store_true", help="print the top functions instead of timings")
    ap.add_argument("--path", choices=("poll", "json"), default="poll",
                    help="poll + json_line per flow (the node's path), or poll_json (capture --json's)")
    ns = ap.parse_args()
    if os.geteuid() != 0:
        print("profile_sensor: run as root (it loads BPF programs)", file=sys.stderr)
        return 2
    from meshnode.sensor._capture_cmd import json_line
    from meshnode.sensor._ebpf import EbpfSensor

    name = f"mn-profile-{os.getpid()}"
    cg = CGROUP_ROOT / name
    cg.mkdir()
    sensor = EbpfSensor(scope="/" + name)
    server = None
    try:
        sensor.start()
        enter = f"open('{cg}/cgroup.procs', 'w').write(str(__import__('os').getpid()))\n"
        server = subprocess.Popen([PY, "-c", enter + SERVER], stdout=subprocess.PIPE, text=True)
        assert server.stdout is not None
        port = int(server.stdout.readline())
        client = subprocess.Popen([PY, "-c", enter + CLIENT, str(port), str(ns.conns)],
                                  stdout=subprocess.DEVNULL)
        prof = cProfile.Profile() if ns.cprofile else None
        t_ring = t_model = t_json = 0.0
        flows = events = 0
        sink = io.StringIO()
        probes = sensor._probes
        ring_name = "poll_raw" if ns.path == "json" else "poll_events"
        orig_ring = getattr(probes, ring_name)

        def timed_ring() -> list[object]:
            nonlocal t_ring
            t0 = time.process_time()
            out = orig_ring()
            t_ring += time.process_time() - t0
            return out  # type: ignore[no-any-return]

        setattr(probes, ring_name, timed_ring)
        ours = (f'"sport": {port},', f'"dport": {port},')
        deadline = time.monotonic() + 60 + ns.conns / 100
        while time.monotonic() < deadline:
            done = client.poll() is not None
            if prof:
                prof.enable()
            if ns.path == "json":
                t0 = time.process_time()
                text = sensor.poll_json().text
                t1 = t2 = time.process_time()
                sink.write(text)
            else:
                t0 = time.process_time()
                batch = sensor.poll()
                t1 = time.process_time()
                for f in batch.ended:
                    sink.write(json_line(f))
                t2 = time.process_time()
                text = "".join(map(json_line, batch.ended))
                events += len(batch.events)
            if prof:
                prof.disable()
            t_model += t1 - t0
            t_json += t2 - t1
            flows += sum(1 for ln in text.splitlines() if ours[0] in ln or ours[1] in ln)
            sink.seek(0)
            sink.truncate()
            if done and flows >= 2 * ns.conns:
                break
            time.sleep(0.1)
        t_model -= t_ring
        c = sensor.counters()
        print(f"path {ns.path}: flows {flows} (expected {2 * ns.conns}), events {events}, "
              f"ringbuf_full {c['ringbuf_full']}")
        if prof:
            st = pstats.Stats(prof)
            st.sort_stats("tottime").print_stats(25)
            return 0
        per = 1e6 / max(flows, 1)
        print(f"us per flow: ring+decode {t_ring * per:.2f}, model {t_model * per:.2f}, json {t_json * per:.2f}, "
              f"total {(t_ring + t_model + t_json) * per:.2f}")
    finally:
        if server is not None:
            server.kill()
            server.wait()
        sensor.close()
        for _ in range(50):
            try:
                cg.rmdir()
                break
            except OSError:
                time.sleep(0.1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
