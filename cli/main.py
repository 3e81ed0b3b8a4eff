"""``meshctl``: the console script.

Only argparse and the standard library load before a command runs; each command imports gRPC, protobuf
and rich itself, so ``meshctl --help`` and usage errors stay fast.
"""

from __future__ import annotations

import importlib
import os
import sys

from cli._exceptions import EXIT_INTERRUPTED, EXIT_NODE_ERROR, MeshctlError

# command -> module holding ``run(args) -> int``
COMMANDS: dict[str, str] = {
    "status": "cli._commands",
    "flows": "cli._commands",
    "health": "cli._commands",
    "events": "cli._commands",
    "peers": "cli._commands",
    "query": "cli._commands",
    "blame": "cli._commands",
    "validate": "cli._commands",
    "top": "cli._top",
}


def main(argv: list[str] | None = None) -> int:
    """Run one meshctl command; every failure is one line on stderr and an exit code (see --help)."""
    from cli._args import parse

    args = parse(sys.argv[1:] if argv is None else argv)
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
