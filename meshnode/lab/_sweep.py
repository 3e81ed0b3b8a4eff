"""Removing what labs of dead processes left behind.

A lab killed with SIGKILL (or a crashed interpreter, or a CI runner that timed out) leaves named namespaces
and cgroup directories behind; they would pile up and, worse, keep processes alive that skew the next run's
measurements. Every object name starts with the lab id ``mnlab-<owner pid>-<seq>``, so a sweep can group the
leftovers by lab and remove those whose owner is gone, while labs of other live test processes (parallel
test runs on the same machine) are left alone.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field
from pathlib import Path

from . import _cgroup, _cmd, _registry
from ._errors import LabError
from ._names import CGROUP_ROOT, DEFAULT_SWEEP_PREFIX, parse_lab_id


@dataclass
class SweepReport:
    """What a sweep removed (and which labs it left because their owner still runs)."""

    labs: list[str] = field(default_factory=list)
    netns: list[str] = field(default_factory=list)
    cgroups: list[str] = field(default_factory=list)
    killed: list[int] = field(default_factory=list)
    skipped_live: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.labs)


@dataclass
class _Leftovers:
    pid: int
    netns: list[str] = field(default_factory=list)
    cgroup: Path | None = None


def owner_alive(pid: int) -> bool:
    """Whether the process that owns a lab still runs (a zombie counts as dead)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def find(prefix: str = DEFAULT_SWEEP_PREFIX) -> dict[str, _Leftovers]:
    """Lab objects whose names start with ``prefix`` (or, for a whole lab id, of exactly that lab), by lab id."""
    exact = parse_lab_id(prefix)
    exact_id = exact.text if exact is not None and exact.text == prefix.rstrip("-") else None

    def wanted(name: str, lab_id: str) -> bool:
        return lab_id == exact_id if exact_id is not None else name.startswith(prefix)

    found: dict[str, _Leftovers] = {}
    for name in _cmd.list_netns():
        parsed = parse_lab_id(name)
        if parsed is not None and wanted(name, parsed.text):
            found.setdefault(parsed.text, _Leftovers(parsed.pid)).netns.append(name)
    try:
        entries = list(os.scandir(CGROUP_ROOT))
    except FileNotFoundError:
        entries = []
    for entry in entries:
        parsed = parse_lab_id(entry.name)
        if parsed is not None and parsed.text == entry.name and wanted(entry.name, parsed.text) and entry.is_dir():
            found.setdefault(parsed.text, _Leftovers(parsed.pid)).cgroup = Path(entry.path)
    return found


def remove_lab(lab_id: str, netns: list[str], cgroup: Path | None, report: SweepReport) -> None:
    """Kill a lab's processes, delete its namespaces and remove its cgroup directory, noting it all."""
    me = os.getpid()
    if cgroup is not None:
        _cgroup.kill(cgroup)
    for name in netns:
        # Processes that entered the namespace without joining the cgroup (nsenter by hand) hold it open.
        for pid in _cmd.netns_pids(name):
            if pid == me:
                continue
            try:
                os.kill(pid, signal.SIGKILL)
                report.killed.append(pid)
            except ProcessLookupError:
                pass
        result = _cmd.run(["ip", "netns", "del", name], what=f"delete namespace {name}", check=False)
        if result.returncode == 0 or name not in _cmd.list_netns():
            report.netns.append(name)
        else:
            report.errors.append(f"netns {name}: {result.stderr.strip()}")
    if cgroup is not None:
        try:
            _cgroup.remove(cgroup)
            report.cgroups.append(str(cgroup))
        except LabError as exc:
            report.errors.append(str(exc))
    report.labs.append(lab_id)


def sweep(prefix: str = DEFAULT_SWEEP_PREFIX, *, include_live: bool = False) -> SweepReport:
    """Remove leftovers of labs whose names start with ``prefix`` (namespaces, cgroup directories).

    Args:
        prefix: ``"mnlab-"`` for all labs, or a lab id (``"mnlab-1234-2"``) for one.
        include_live: also remove labs whose owner process still runs. Labs this very process has open are
            never swept; close them instead.

    Returns:
        What was removed; ``errors`` lists what could not be (the sweep goes on past them).
    """
    report = SweepReport()
    mine = _registry.live_ids()
    for lab_id, left in sorted(find(prefix).items()):
        if lab_id in mine:
            continue
        if not include_live and owner_alive(left.pid):
            report.skipped_live.append(lab_id)
            continue
        remove_lab(lab_id, left.netns, left.cgroup, report)
    return report
