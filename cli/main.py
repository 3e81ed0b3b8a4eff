"""``meshctl``: the console script.

Only argparse and the standard library load before a command runs; each command imports gRPC, protobuf
and rich itself, so ``meshctl --help`` and usage errors stay fast.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

from meshnode.cli._exceptions import EXIT_INTERRUPTED, EXIT_NODE_ERROR, MeshctlError

if TYPE_CHECKING:
    import argparse

# command -> module holding ``run(args) -> int``
COMMANDS: dict[str, str] = {
    "status": "meshnode.cli._commands",
    "flows": "meshnode.cli._commands",
    "health": "meshnode.cli._commands",
    "events": "meshnode.cli._commands",
    "peers": "meshnode.cli._trust",
    "query": "meshnode.cli._commands",
    "blame": "meshnode.cli._blame",
    "validate": "meshnode.cli._trust",
    "top": "meshnode.cli._top",
    "measure": "meshnode.cli._measure",
    "dns": "meshnode.cli._dns",
}


def _exit_on_interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C during a command that leaves the terminal as it found it: flush what was printed, exit 130.

    A KeyboardInterrupt raised inside a blocking gRPC stream is not reliable (gRPC may swallow it and
    end the stream as if it were complete, or hang closing the channel); exiting here is.
    """
    with contextlib.suppress(Exception):  # the interrupted write, a closed pipe: nothing more to save
        sys.stdout.flush()
    os._exit(EXIT_INTERRUPTED)


def main(argv: list[str] | None = None) -> int:
    """Run one meshctl command; every failure is one line on stderr and an exit code (see --help)."""
    from meshnode.cli._args import parse

    args = parse(sys.argv[1:] if argv is None else argv)
    previous = None
    # top restores the terminal itself, through KeyboardInterrupt; handlers only go on the main thread
    if args.command != "top" and threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, _exit_on_interrupt)
    try:
        return _run(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _run(args: argparse.Namespace) -> int:
    try:
        module = importlib.import_module(COMMANDS[args.command])
        code: int = module.run(args)
    except MeshctlError as exc:
        sys.stderr.write(f"meshctl {args.command}: {exc.message}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (| head): not an error; silence the flush at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except Exception as exc:  # a bug in meshctl: still one line; the traceback only on request
        if os.environ.get("MESHCTL_DEBUG"):
            raise
        sys.stderr.write(f"meshctl {args.command}: internal error: {exc!r} "
                         "(set MESHCTL_DEBUG=1 for the traceback, and please report it)\n")
        return EXIT_NODE_ERROR
    return code


if __name__ == "__main__":
    sys.exit(main())
