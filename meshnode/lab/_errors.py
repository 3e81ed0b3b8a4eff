"""Errors raised by the lab.

The hierarchy separates misuse (a bug in the calling test) from the machine refusing to do something (an
environment problem the test cannot fix), so that callers can skip on one and fail on the other::

    LabError                      base of everything the lab raises
    ├── LabUsageError             misuse: bad host name, unknown host, a fault the target cannot carry
    │                             (also a ValueError, so generic callers can treat it as bad input)
    ├── LabUnavailableError       this machine lacks root, cgroup v2 or a tool (ip, nft, tc, nsenter)
    └── LabCommandError           an ip / nft / tc / sysctl command failed; carries argv, exit code and
                                  stderr so the failure explains itself in a test log
"""

from __future__ import annotations

from collections.abc import Sequence


class LabError(Exception):
    """Base class of every error raised by the lab."""


class LabUsageError(LabError, ValueError):
    """The caller asked for something the lab cannot express (a programming error in the test)."""


class LabUnavailableError(LabError):
    """The machine cannot host a lab: not root, no cgroup v2, or a command-line tool is missing."""


class LabCommandError(LabError):
    """A command the lab ran to build, change or tear down the topology failed.

    Attributes:
        argv: the command line that failed.
        returncode: its exit status (``None`` when it timed out).
        stderr: what it printed on stderr, stripped; the part a reader needs to see.
    """

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str, what: str = "") -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        status = "timed out" if returncode is None else f"exited {returncode}"
        head = f"{what}: " if what else ""
        detail = f": {self.stderr}" if self.stderr else " (no stderr)"
        super().__init__(f"{head}`{' '.join(self.argv)}` {status}{detail}")
