"""Running the lab's own commands (ip, tc, nft, sysctl) with errors that explain themselves.

The lab drives the kernel through iproute2 and nftables rather than netlink bindings: they are what an SRE
would type, so a failing step can be replayed by hand from the error message, which carries the exact argv
and the tool's stderr.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from functools import cache

from ._errors import LabCommandError, LabUnavailableError
from ._names import CGROUP_ROOT, NETNS_DIR

#: Tools the lab needs, with where to get them.
REQUIRED_TOOLS = {
    "ip": "iproute2",
    "tc": "iproute2",
    "nft": "nftables",
    "nsenter": "util-linux",
    "sh": "a POSIX shell",
    "sysctl": "procps",
    "ss": "iproute2",
}
_DEFAULT_TIMEOUT = 20.0


@cache
def tool(name: str) -> str:
    """Absolute path of a required tool, looked up once.

    Absolute paths matter because hosts run commands with caller-supplied environments, which may have no PATH.
    """
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if path is None:
        hint = REQUIRED_TOOLS.get(name, name)
        raise LabUnavailableError(f"the lab needs the '{name}' command (install {hint})")
    return path


def missing_prerequisites() -> list[str]:
    """What this machine lacks to build a lab, as human phrases (empty when all is there)."""
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces and cgroups need CAP_SYS_ADMIN)")
    if not (CGROUP_ROOT / "cgroup.procs").exists():
        missing.append(f"cgroup v2 mounted at {CGROUP_ROOT}")
    for name, package in REQUIRED_TOOLS.items():
        if shutil.which(name) is None and shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin") is None:
            missing.append(f"the '{name}' command ({package})")
    return missing


def check_prerequisites() -> None:
    """Raise ``LabUnavailableError`` naming everything that is missing, so one run shows all of it."""
    missing = missing_prerequisites()
    if missing:
        raise LabUnavailableError("cannot build a lab: needs " + "; ".join(missing))


def run(
    argv: Sequence[str],
    *,
    what: str,
    input: str | None = None,
    timeout: float = _DEFAULT_TIMEOUT,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run a lab command; on failure raise ``LabCommandError`` with ``what`` the lab was doing and stderr.

    Args:
        argv: the command; its first element is resolved with ``tool()``.
        what: a phrase for the error message ("add veth for host a"), because argv alone rarely says why.
        input: text for stdin (nft rulesets, ip batches).
        timeout: seconds; a hung tool becomes an error instead of a hung test.
        check: when False, return the result whatever the exit status (teardown tolerates "not found").
    """
    full = [tool(argv[0]), *argv[1:]]
    try:
        result = subprocess.run(
            full,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            stdin=None if input is not None else subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired as exc:
        stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr or ""
        raise LabCommandError(full, None, stderr, what=what) from exc
    if check and result.returncode != 0:
        stderr = result.stderr
        if input is not None:
            stderr = _annotate_batch_error(stderr, input)
        raise LabCommandError(full, result.returncode, stderr, what=what)
    return result


def _annotate_batch_error(stderr: str, batch: str) -> str:
    """Append the failing line of an ``ip -batch`` input, which ip only reports by number."""
    m = re.search(r"Command failed -:(\d+)", stderr)
    if m is None:
        return stderr
    lines = batch.splitlines()
    index = int(m.group(1)) - 1
    if 0 <= index < len(lines):
        return f"{stderr.strip()} (line {index + 1}: {lines[index]!r})"
    return stderr


def netns_argv(netns: str, argv: Sequence[str]) -> list[str]:
    """``argv`` run inside the named network namespace, and nothing else changed.

    ``nsenter --net`` rather than ``ip netns exec``: the latter also remounts /sys for the namespace, which
    hides /sys/fs/cgroup and tracefs, so an eBPF sensor started on a host could not attach to anything.
    """
    return [tool("nsenter"), f"--net={NETNS_DIR / netns}", "--", *argv]


def ip_batch(netns: str | None, lines: Sequence[str], *, what: str) -> None:
    """Run several ``ip`` commands in one process (``ip -batch``), in ``netns`` or in the root namespace.

    One process per namespace instead of one per command keeps building a lab in the tens of milliseconds.
    """
    if not lines:
        return
    argv = ["ip"] + (["-n", netns] if netns else []) + ["-batch", "-"]
    run(argv, what=what, input="\n".join(lines) + "\n")


def sysctl(netns: str, settings: dict[str, str], *, what: str) -> None:
    """Set per-namespace sysctls (``net.*``) inside ``netns``."""
    args = [f"{key}={value}" for key, value in settings.items()]
    run(netns_argv(netns, [tool("sysctl"), "-q", "-w", *args]), what=what)


def sysctl_many(namespaces: Sequence[str], settings: dict[str, str], *, what: str) -> None:
    """``sysctl()`` in several namespaces at once (one process each, run in parallel to save time)."""
    args = [f"{key}={value}" for key, value in settings.items()]
    running = []
    for netns in namespaces:
        argv = netns_argv(netns, [tool("sysctl"), "-q", "-w", *args])
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        running.append((netns, argv, proc))
    failures = []
    for netns, argv, proc in running:
        try:
            _out, err = proc.communicate(timeout=_DEFAULT_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            _out, err = proc.communicate()
        if proc.returncode != 0:
            failures.append((netns, argv, proc.returncode, err))
    if failures:
        netns, argv, code, err = failures[0]
        raise LabCommandError(argv, code, err, what=f"{what} in {netns}")


def nft(netns: str, ruleset: str, *, what: str) -> None:
    """Load an nft ruleset (``nft -f -``) inside ``netns``."""
    run(netns_argv(netns, [tool("nft"), "-f", "-"]), what=what, input=ruleset)


def list_netns() -> list[str]:
    """Names of all named network namespaces (those ``ip netns list`` shows)."""
    try:
        return sorted(entry.name for entry in os.scandir(NETNS_DIR))
    except FileNotFoundError:
        return []


def netns_pids(netns: str) -> list[int]:
    """Pids of the processes inside a named namespace (``ip netns pids``); empty if it is gone."""
    result = run(["ip", "netns", "pids", netns], what=f"list processes in {netns}", check=False)
    if result.returncode != 0:
        return []
    return [int(word) for word in result.stdout.split() if word.isdigit()]
