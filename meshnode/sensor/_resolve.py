"""Names for numbers the kernel reports: cgroup ids → paths, pids → comm, ports → service names.

Each lookup is cached; a miss on a cgroup id rescans the hierarchy at most once per second so a burst of
flows from a cgroup that was removed does not turn into a burst of directory walks.
"""

from __future__ import annotations

import os
import socket
import time
from functools import lru_cache
from pathlib import Path


class CgroupNames:
    """cgroup v2 id (the directory's inode number) → path relative to the hierarchy root."""

    def __init__(self, root: Path, rescan_interval_s: float = 1.0) -> None:
        self._root = root
        self._names: dict[int, str] = {}
        self._last_scan = 0.0
        self._interval = rescan_interval_s

    def path(self, cgroup_id: int) -> str:
        """The path ("/lab/a"), or "" when unknown (removed, or id 0)."""
        if cgroup_id == 0:
            return ""
        name = self._names.get(cgroup_id)
        if name is None and time.monotonic() - self._last_scan >= self._interval:
            self._scan()
            name = self._names.get(cgroup_id)
        return name or ""

    def _scan(self) -> None:
        self._last_scan = time.monotonic()
        root = str(self._root)
        for dirpath, _dirs, _files in os.walk(root):
            try:
                ino = os.stat(dirpath).st_ino
            except OSError:
                continue
            rel = dirpath[len(root):] or "/"
            self._names[ino] = rel


def proc_comm(pid: int) -> str:
    """The comm of a live process from /proc, or "" when it is gone."""
    if pid <= 0:
        return ""
    try:  # any process can name itself with bytes that are not UTF-8 (prctl PR_SET_NAME)
        return Path(f"/proc/{pid}/comm").read_bytes().decode(errors="replace").strip()
    except OSError:
        return ""


def proc_cgroup(pid: int) -> str:
    """The cgroup v2 path of a live process ("0::/path" line), or ""."""
    if pid <= 0:
        return ""
    try:
        for line in Path(f"/proc/{pid}/cgroup").read_bytes().decode(errors="surrogateescape").splitlines():
            if line.startswith("0::"):
                return line[3:]
    except OSError:
        pass
    return ""


@lru_cache(maxsize=4096)
def service_name(port: int, proto: str = "tcp") -> str:
    """The service name of a well-known port (``443`` -> ``"https"``), empty when unknown.

    Ports from 49152 up are ephemeral (RFC 6335): a name from /etc/services there would mislabel a client's
    side of a flow. The summaries use this same function (``meshnode.summary.service_name``).
    """
    if not 0 < port < 49152:
        return ""
    try:
        return socket.getservbyport(port, proto)
    except (OSError, OverflowError):
        return ""
