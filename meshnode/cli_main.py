"""``meshnode``: the daemon and its tools.

Each subcommand lives in its own module exposing ``configure(subparsers)``; modules are imported lazily
only for the subcommand that runs, so ``meshnode --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "run": ("meshnode.daemon._run_cmd", "run a node: sensor, store, gRPC API and mesh"),
    "capture": ("meshnode.sensor._capture_cmd", "run the sensor alone and print flows as they end"),
    "ca": ("meshnode.trust._ca_cmd", "create a fleet CA and issue node/client certificates"),
    "lab": ("meshnode.demo._lab_cmd", "a demo lab: 6 hosts in 2 sites, real traffic, a node on each; inject faults"),
}


def build_parser(argv: list[str]) -> argparse.ArgumentParser:
    """The parser; only the chosen subcommand's module is imported."""
    parser = argparse.ArgumentParser(
        prog="meshnode",
        description="meshnode: a network-health sensor node (eBPF flows, local history, gRPC API, mesh).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, (module, help_text) in SUBCOMMANDS.items():
        if name == chosen:
            importlib.import_module(module).configure(sub)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meshnode`` console script."""
    args_in = sys.argv[1:] if argv is None else argv
    parser = build_parser(args_in)
    args = parser.parse_args(args_in)
    if args.command is None:
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
