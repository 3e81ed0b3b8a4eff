"""capture --json's line rendering, C against Python, on synthetic ring records (no root, no kernel).

Run: ``.venv/bin/python -m bench.bench_json_render [--flows 2000]``.

Three shapes of poll: every flow of one owner (the common case), every flow of a new owner (one ctypes call
per owner), and refused connects (a reset event, then the flow's end). Both paths render the same records
into the same text (checked); /proc lookups are stubbed so that only rendering is timed. Prints us per flow,
best of 3.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from meshnode.probes import _records as rec  # noqa: E402
from meshnode.sensor._ebpf import EbpfSensor  # noqa: E402
from tests._support.sensor import NO_PID, fake_sensor, raw_event  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flows", type=int, default=2000)
    n = ap.parse_args().flows
    EbpfSensor._owner = lambda self, pid, k: (k, "")  # type: ignore[method-assign]
    EbpfSensor._cgroup = lambda self, c, p: ""  # type: ignore[method-assign]
    tmp = Path(tempfile.mkdtemp())
    cases = {
        "same owner": [raw_event(cookie=i + 1, dport=443) for i in range(n)],
        "every flow a new owner": [raw_event(cookie=i + 1, pid=NO_PID - i, comm=b"curl", dport=443)
                                   for i in range(n)],
        "refused (event + end)": [r for i in range(n) for r in (
            raw_event(rec.EV_RESET_RX, cookie=i + 1, sk=0x1000 + i),
            raw_event(cookie=i + 1, sk=0x1000 + i, outcome=2))],
    }
    print(f"{'poll of':24s} {'python':>8s} {'C':>8s}   us a flow, best of 3, {n} flows")
    for name, raws in cases.items():
        best, text = {}, {}
        for native in (False, True):
            best[native] = float("inf")
            for _ in range(3):
                s = fake_sensor(tmp, raws, native=native)
                t = time.perf_counter()
                text[native] = s.poll_json().text
                best[native] = min(best[native], time.perf_counter() - t)
        assert text[False] == text[True], name
        print(f"{name:24s} {best[False] * 1e6 / n:8.2f} {best[True] * 1e6 / n:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
