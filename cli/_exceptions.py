"""Errors meshctl reports, each with its exit code.

Every failure ends as one line on stderr and a distinct exit code; nothing prints a traceback::

    MeshctlError                 exit 1   base: something went wrong
    ├── UsageError               exit 2   a bad flag, duration, address or filter (caught before any call)
    ├── NotAvailable             exit 2   the node does not offer what the command needs (yet)
    └── NodeError                exit 1   the node answered with an error status (INVALID_ARGUMENT, ...)
        ├── Unreachable          exit 3   no connection (UNAVAILABLE)
        ├── DeadlineExceeded     exit 4   the node did not answer in time (DEADLINE_EXCEEDED)
        └── PermissionDenied     exit 5   PERMISSION_DENIED or UNAUTHENTICATED

Usage errors are the caller's misuse and never reach the network; node errors are I/O and come from
translating ``grpc.RpcError`` at one boundary (``cli._client``), raised ``from`` the original.
"""

from __future__ import annotations

from typing import Final

EXIT_OK: Final = 0
EXIT_NODE_ERROR: Final = 1
EXIT_USAGE: Final = 2
EXIT_UNREACHABLE: Final = 3
EXIT_DEADLINE: Final = 4
EXIT_PERMISSION: Final = 5
EXIT_INTERRUPTED: Final = 130


class MeshctlError(Exception):
    """Base of meshctl's errors: a one-line message and an exit code."""

    exit_code: int = EXIT_NODE_ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UsageError(MeshctlError):
    """The command line is wrong: a flag, a duration, an address, a filter value."""

    exit_code = EXIT_USAGE


class NotAvailable(MeshctlError):
    """The node lacks the service a command needs (e.g. no mesh yet)."""

    exit_code = EXIT_USAGE


class NodeError(MeshctlError):
    """The node answered with an error status; ``code`` is the gRPC status name (``"INVALID_ARGUMENT"``)."""

    def __init__(self, message: str, code: str = "UNKNOWN") -> None:
        super().__init__(message)
        self.code = code


class Unreachable(NodeError):
    """No connection to the node."""

    exit_code = EXIT_UNREACHABLE


class DeadlineExceeded(NodeError):
    """The node did not answer before the deadline."""

    exit_code = EXIT_DEADLINE


class PermissionDenied(NodeError):
    """The node refused the caller."""

    exit_code = EXIT_PERMISSION
