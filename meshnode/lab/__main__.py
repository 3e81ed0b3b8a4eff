"""``python -m meshnode.lab [--include-live] [PREFIX]``: remove what crashed labs left on this machine.

For a human after an interrupted run (or a CI job's last step): a new ``Lab`` sweeps dead labs by itself, but
nothing else would remove leftovers when no test runs afterwards.
"""

from __future__ import annotations

import argparse
import sys

from ._errors import LabError
from ._names import DEFAULT_SWEEP_PREFIX
from ._sweep import sweep


def main(argv: list[str] | None = None) -> int:
    """Sweep, print what was removed; exit 1 if anything could not be removed."""
    parser = argparse.ArgumentParser(
        prog="python -m meshnode.lab", description="Remove what crashed labs left on this machine."
    )
    parser.add_argument("prefix", nargs="?", default=DEFAULT_SWEEP_PREFIX, help="name prefix or lab id")
    parser.add_argument("--include-live", action="store_true", help="also remove labs whose owning process still runs")
    args = parser.parse_args(argv)
    try:
        report = sweep(args.prefix, include_live=args.include_live)
    except LabError as exc:
        print(f"sweep failed: {exc}", file=sys.stderr)
        return 1
    for lab in report.labs:
        print(f"removed lab {lab}")
    for lab in report.skipped_live:
        print(f"kept lab {lab} (its process still runs; --include-live removes it)")
    for error in report.errors:
        print(f"could not remove: {error}", file=sys.stderr)
    if not report.labs and not report.skipped_live:
        print("no labs found")
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
