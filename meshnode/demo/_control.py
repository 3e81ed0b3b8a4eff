"""The demo lab's state directory, its liveness lock and the control socket protocol.

One demo lab runs per state directory (default ``/run/meshnode-lab``, or ``$MESHNODE_LAB_DIR``)::

    lock           flock'ed by the supervisor for as long as it lives: the lab is up iff the lock is held,
                   and a crashed supervisor releases it with its last breath (no stale pid guessing)
    state.json     written by the supervisor: its pid, the lab id, hosts, nodes, the tmux socket, data dir
    control.sock   the supervisor's Unix socket: one JSON request line, one JSON answer line per connection
    supervisor.log the supervisor's output (the nodes' own logs are in the data directory)

Every kernel object of the lab is named ``mnlab-<supervisor pid>-<n>...``, so ``down`` after a crash removes
what is left by that prefix, even when the supervisor died before it could write the lab id.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Any

DEFAULT_STATE_DIR = Path("/run/meshnode-lab")
STATE_DIR_ENV = "MESHNODE_LAB_DIR"
LOCK = "lock"
STATE = "state.json"
SOCKET = "control.sock"
LOG = "supervisor.log"


class LabCommandError(Exception):
    """A ``meshnode lab`` command cannot do what was asked; the message says why and what to do."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def state_dir(given: str | None) -> Path:
    """The state directory: ``--state-dir``, else ``$MESHNODE_LAB_DIR``, else /run/meshnode-lab."""
    if given:
        return Path(given).resolve()
    env = os.environ.get(STATE_DIR_ENV)
    return Path(env).resolve() if env else DEFAULT_STATE_DIR


def tmux_socket(directory: Path) -> str:
    """The private tmux socket (``tmux -L``) of the lab in ``directory``: one per state directory."""
    if directory == DEFAULT_STATE_DIR:
        return "meshnode-lab"
    return "meshnode-lab-" + hashlib.sha256(str(directory).encode()).hexdigest()[:8]


def try_lock(directory: Path) -> int | None:
    """Take the lab's lock without waiting: the fd (keep it open to hold the lock), or None if it is held."""
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def is_up(directory: Path) -> bool:
    """Whether a supervisor holds the lock of ``directory`` (a lab is up or being built)."""
    if not (directory / LOCK).exists():
        return False
    fd = try_lock(directory)
    if fd is None:
        return True
    os.close(fd)
    return False


def read_state(directory: Path) -> dict[str, Any] | None:
    """The supervisor's state file, or None when there is none (or it is being rewritten)."""
    try:
        doc: dict[str, Any] = json.loads((directory / STATE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return doc


def write_state(directory: Path, doc: dict[str, Any]) -> None:
    """Replace the state file atomically."""
    tmp = directory / (STATE + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, directory / STATE)


def request(directory: Path, op: str, timeout: float = 60.0, **args: Any) -> dict[str, Any]:
    """Send one request to the supervisor and return its answer (``{"ok": true, ...}``).

    Raises:
        LabCommandError: no lab is up, the supervisor did not answer, or it answered with an error.
    """
    path = directory / SOCKET
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        sock.sendall(json.dumps({"op": op, **args}).encode() + b"\n")
        with sock.makefile("rb") as stream:
            line = stream.readline()
    except FileNotFoundError as exc:
        raise LabCommandError(f"no lab is up (no {path}); start one with `meshnode lab up`") from exc
    except (ConnectionRefusedError, TimeoutError, OSError) as exc:
        raise LabCommandError(f"the lab's supervisor did not answer on {path}: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            sock.close()
    if not line:
        raise LabCommandError(f"the lab's supervisor closed {path} without an answer (see {directory / LOG})")
    answer: dict[str, Any] = json.loads(line)
    if not answer.get("ok"):
        raise LabCommandError(str(answer.get("error", "the supervisor refused")), int(answer.get("code", 1)))
    return answer
