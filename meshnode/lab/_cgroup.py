"""cgroup v2 directories of lab hosts: create, kill everything inside, remove.

A host's processes live in its cgroup so that the sensor can attribute flows to a host by cgroup (as it does
in production by service), and so that teardown can find every descendant of every process a test started,
including daemons that double-forked away from their parent.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from ._errors import LabError


def procs(cgroup: Path) -> list[int]:
    """Pids directly in ``cgroup`` (not its children); empty if the directory is gone."""
    try:
        text = (cgroup / "cgroup.procs").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return []
    return [int(line) for line in text.split()]


def subtree(cgroup: Path) -> list[Path]:
    """``cgroup`` and every cgroup below it, deepest first (the order ``rmdir`` needs)."""
    if not cgroup.is_dir():
        return []
    found: list[Path] = []
    for dirpath, _dirnames, _files in os.walk(cgroup, topdown=False):
        found.append(Path(dirpath))
    return found


def populated(cgroup: Path) -> bool:
    """Whether any live process is in ``cgroup`` or below (``populated`` of ``cgroup.events``)."""
    try:
        events = (cgroup / "cgroup.events").read_text()
    except FileNotFoundError:
        return False
    for line in events.splitlines():
        key, _, value = line.partition(" ")
        if key == "populated":
            return value.strip() == "1"
    return any(procs(path) for path in subtree(cgroup))


def kill(cgroup: Path) -> None:
    """SIGKILL every process in ``cgroup`` and below.

    ``cgroup.kill`` (kernel >= 5.14) kills the subtree atomically, so a process forking in a loop cannot escape;
    without it, fall back to killing each pid, repeatedly, until the subtree stays empty.
    """
    if not cgroup.is_dir():
        return
    kill_file = cgroup / "cgroup.kill"
    if kill_file.exists():
        try:
            kill_file.write_text("1")
            return
        except FileNotFoundError:
            return
        except OSError:
            pass  # fall through to per-pid killing
    me = os.getpid()
    for _ in range(50):
        pids = [pid for path in subtree(cgroup) for pid in procs(path) if pid != me]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def wait_empty(cgroup: Path, timeout: float) -> bool:
    """Wait until nothing runs in ``cgroup`` and below; True if it emptied within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while populated(cgroup):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.01)
    return True


def remove(cgroup: Path, timeout: float = 5.0) -> None:
    """Kill what runs in ``cgroup``, then remove it and every cgroup below it.

    Raises:
        LabError: when processes survive SIGKILL for ``timeout`` seconds (stuck in the kernel, e.g. in D state)
            or a directory cannot be removed; the message names the pids still there.
    """
    if not cgroup.is_dir():
        return
    kill(cgroup)
    if not wait_empty(cgroup, timeout):
        left = [pid for path in subtree(cgroup) for pid in procs(path)]
        raise LabError(f"processes {left} in {cgroup} survived SIGKILL for {timeout:.0f}s; cannot remove it")
    for path in subtree(cgroup):
        try:
            path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise LabError(f"cannot remove cgroup {path}: {exc}") from exc
