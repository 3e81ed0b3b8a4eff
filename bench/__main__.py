"""``python -m bench [NAME ...]``: run the benchmarks (all by default); each prints its own report.

Names: sensor (root; eBPF vs tcplife-bpfcc), store (SQLite ingest and queries), mesh (gossip simulation).
Results and the commands that produced them are kept in bench/RESULTS.md.
"""

from __future__ import annotations

import runpy
import sys

BENCHES = {"sensor": "bench.bench_sensor", "store": "bench.bench_store", "mesh": "bench.bench_mesh"}


def main(argv: list[str]) -> int:
    names = argv or list(BENCHES)
    unknown = [n for n in names if n not in BENCHES]
    if unknown:
        print(f"unknown benchmark {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    for name in names:
        print(f"== {name} ({BENCHES[name]})", flush=True)
        sys.argv = [BENCHES[name]]
        try:
            runpy.run_module(BENCHES[name], run_name="__main__")
        except SystemExit as exc:
            if exc.code not in (0, None):
                return int(exc.code) if isinstance(exc.code, int) else 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
