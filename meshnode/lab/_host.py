"""Hosts and sites of a lab: where processes run and what faults are aimed at."""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import _cgroup, _cmd
from ._errors import LabCommandError, LabError, LabUsageError
from ._faults import Attachment, FaultTarget, Network
from ._names import CGROUP_ROOT, HOST_IFACE, NETNS_DIR, UPLINK_IFACE, core_port, switch_port

if TYPE_CHECKING:
    from ._faults import _LabHandle

# The child shell joins the host's cgroup *before* it execs into the namespace and the program, so the
# program and everything it forks start inside the cgroup: nothing can escape teardown, and the sensor sees
# every process of a host under one cgroup id. A shell rather than ``preexec_fn``: preexec_fn is unsafe in
# processes with threads (gRPC servers, the sensor's drain thread), and the exec keeps Popen.pid the
# program's own pid.
_JOIN_AND_EXEC = 'echo $$ > "$1" || exit 125; shift; exec "$@"'


class Host(FaultTarget):
    """One machine of the lab: a network namespace with one interface, plus a cgroup v2 directory.

    Attributes:
        name: short name (``a``, ``web1``); unique within the lab.
        ip: IPv4 address (``10.213.<site>.<n>``), as text.
        ip6: IPv6 address (``fd6d:6e6c:6162:<site>::<n>``), as text.
        netns: name of its network namespace (``ip netns list`` shows it).
        netns_path: the namespace's pin, for ``nsenter --net=`` or ``setns``.
        cgroup: absolute path of its cgroup directory.
        cgroup_rel: the same below the cgroup v2 root, starting with ``/``: what ``/proc/<pid>/cgroup`` shows
            after ``0::`` and what ``meshnode run --cgroup`` takes.
        iface: its interface (``eth0``).
        site: the site it belongs to, or None in a flat lab.
    """

    def __init__(
        self,
        lab: _LabHandle,
        name: str,
        *,
        netns: str,
        switch_netns: str,
        ip: ipaddress.IPv4Interface,
        ip6: ipaddress.IPv6Interface,
        cgroup: Path,
        site: Site | None,
    ) -> None:
        super().__init__()
        self._lab = lab
        self.name = name
        self.netns = netns
        self.netns_path = NETNS_DIR / netns
        self.iface = HOST_IFACE
        self.interface4 = ip
        self.interface6 = ip6
        self.ip = str(ip.ip)
        self.ip6 = str(ip6.ip)
        self.cgroup = cgroup
        self.cgroup_rel = "/" + str(cgroup.relative_to(CGROUP_ROOT))
        self.site = site
        self._attach = Attachment(netns, HOST_IFACE, switch_netns, switch_port(name), forwarding=False)
        self._procs: list[subprocess.Popen[Any]] = []

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.ip} {self.ip6} netns={self.netns}>"

    def networks(self) -> list[Network]:
        """The host's addresses as /32 and /128 networks (how a fault aimed at this host matches)."""
        return [ipaddress.ip_network(self.ip), ipaddress.ip_network(self.ip6)]

    def addresses(self) -> list[str]:
        """Both addresses, IPv4 first."""
        return [self.ip, self.ip6]

    @property
    def netns_inode(self) -> int:
        """Inode of the namespace: equal to the number in ``readlink /proc/<pid>/ns/net`` of its processes."""
        return os.stat(self.netns_path).st_ino

    # -- running things ------------------------------------------------------------------------------

    def wrap(self, argv: Sequence[str]) -> list[str]:
        """``argv`` rewritten to run on this host (its cgroup and netns), for APIs that take an argv.

        Use it with ``asyncio.create_subprocess_exec(*host.wrap(argv))`` and the like; ``popen`` uses it too
        and also remembers the process for teardown.
        """
        self._check_running()
        procs_file = str(self.cgroup / "cgroup.procs")
        return [_cmd.tool("sh"), "-c", _JOIN_AND_EXEC, "mnlab-run", procs_file, *_cmd.netns_argv(self.netns, argv)]

    def popen(self, argv: Sequence[str] | str, **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` on this host and return its ``Popen`` (pid = the program's pid).

        Keyword arguments go to ``subprocess.Popen`` unchanged; ``shell=True`` with a string runs it with
        ``sh -c``. The process and all its descendants are killed when the lab closes.

        Raises:
            FileNotFoundError: the program does not exist (checked here, as ``Popen`` would, because inside
                the wrapper a missing program would only show as exit status 127).
        """
        if popen_kwargs.pop("shell", False):
            if not isinstance(argv, str):
                raise LabUsageError("shell=True needs the command as one string")
            argv = [_cmd.tool("sh"), "-c", argv]
        elif isinstance(argv, str):
            argv = [argv]
        argv = list(argv)
        if not argv:
            raise LabUsageError("empty argv")
        env: Mapping[str, str] | None = popen_kwargs.get("env")
        search_path = (env if env is not None else os.environ).get("PATH", os.defpath)
        if "/" not in argv[0] and shutil.which(argv[0], path=search_path) is None:
            raise FileNotFoundError(2, f"no program {argv[0]!r} on PATH to run on host {self.name}", argv[0])
        if argv[0].startswith("/") and not os.access(argv[0], os.X_OK):
            raise FileNotFoundError(2, f"{argv[0]} is not an executable to run on host {self.name}", argv[0])
        proc: subprocess.Popen[Any] = subprocess.Popen(self.wrap(argv), **popen_kwargs)
        self._procs = [p for p in self._procs if p.poll() is None]
        self._procs.append(proc)
        return proc

    def run(
        self,
        argv: Sequence[str] | str,
        *,
        timeout: float = 30.0,
        check: bool = True,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` on this host to completion; stdout and stderr are captured as text.

        Raises:
            LabCommandError: it exited non-zero (with ``check``) or outlived ``timeout`` (it is then killed);
                the message carries its stderr.
        """
        shown = [argv] if isinstance(argv, str) else list(argv)
        proc = self.popen(
            argv,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=cwd,
        )
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            proc.kill()
            try:
                out, err = proc.communicate(timeout=2)
            except subprocess.TimeoutExpired:
                err = ""  # a grandchild holds the pipe; the lab's teardown will kill it
            raise LabCommandError(shown, None, err or "", what=f"on host {self.name} (>{timeout}s)") from exc
        if check and proc.returncode != 0:
            raise LabCommandError(shown, proc.returncode, err, what=f"on host {self.name}")
        return subprocess.CompletedProcess(shown, proc.returncode, out, err)

    def python(self, code: str, *args: str, **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``python -c code args...`` on this host, with the interpreter running this process.

        ``code`` is dedented, so it can be written as an indented triple-quoted string.
        """
        return self.popen([sys.executable, "-c", textwrap.dedent(code), *args], **popen_kwargs)

    def wait_listening(self, port: int, *, udp: bool = False, timeout: float = 10.0) -> None:
        """Wait until a socket on this host listens on ``port`` (TCP, or a bound UDP socket with ``udp``).

        For servers that do not announce readiness (a node's gRPC port, an HTTP server): poll ``ss`` in the
        host's namespace instead of sleeping. ``ss`` runs outside the host's cgroup, so the lab's own tooling
        never shows up among the host's processes.

        Raises:
            LabError: nothing listened within ``timeout`` seconds.
        """
        argv = _cmd.netns_argv(self.netns, [_cmd.tool("ss"), "-Hn", "-lu" if udp else "-lt", f"sport = :{port}"])
        deadline = time.monotonic() + timeout
        while True:
            result = _cmd.run(argv, what=f"list listening sockets on host {self.name}")
            if result.stdout.strip():
                return
            if time.monotonic() >= deadline:
                proto = "UDP" if udp else "TCP"
                raise LabError(f"nothing listens on {proto} port {port} of host {self.name} after {timeout}s")
            time.sleep(0.02)

    def pids(self) -> list[int]:
        """Pids of the processes now in the host's cgroup."""
        return _cgroup.procs(self.cgroup)

    def kill(self, timeout: float = 5.0) -> None:
        """Kill every process on the host (the whole cgroup) and reap the ones the lab started."""
        _cgroup.kill(self.cgroup)
        self._reap(timeout)
        _cgroup.wait_empty(self.cgroup, timeout)

    def _reap(self, timeout: float) -> None:
        for proc in self._procs:
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._procs = []

    def _check_running(self) -> None:
        if self._lab.closed:
            raise LabUsageError(f"lab {self._lab.id} is closed; cannot run anything on host {self.name}")


class Uplink(FaultTarget):
    """A site's link to the core: faults here affect only the site's traffic with other sites.

    "All traffic" for a blackhole means routes to every other site; filters hook ``forward`` on the site
    router, matching the uplink interface.
    """

    def __init__(self, lab: _LabHandle, site: str, *, netns: str, core_netns: str) -> None:
        super().__init__()
        self._lab = lab
        self.name = f"{site}-uplink"
        self._attach = Attachment(netns, UPLINK_IFACE, core_netns, core_port(site), forwarding=True)
        self._remote: list[Network] = []

    def __repr__(self) -> str:
        return f"<Uplink {self.name} netns={self._attach.netns}>"

    def _remote_networks(self) -> list[Network] | None:
        return list(self._remote)


class Site:
    """A group of hosts behind one router (a namespace holding the site LAN bridge and the uplink).

    Attributes:
        name: short name (``east``).
        index: 1-based; the third octet of the site's IPv4 /24 and the fourth group of its IPv6 /64.
        netns: the site router's namespace.
        subnet4, subnet6: the site's networks.
        gateway, gateway6: the router's addresses on the site LAN (the hosts' default route).
        hosts: the site's hosts by name.
        uplink: fault target for the link between this site and the core.
    """

    def __init__(
        self,
        lab: _LabHandle,
        name: str,
        index: int,
        *,
        netns: str,
        core_netns: str,
        subnet4: ipaddress.IPv4Network,
        subnet6: ipaddress.IPv6Network,
        gateway: ipaddress.IPv4Address,
        gateway6: ipaddress.IPv6Address,
    ) -> None:
        self.name = name
        self.index = index
        self.netns = netns
        self.subnet4 = subnet4
        self.subnet6 = subnet6
        self.gateway = str(gateway)
        self.gateway6 = str(gateway6)
        self.hosts: dict[str, Host] = {}
        self.uplink = Uplink(lab, name, netns=netns, core_netns=core_netns)

    def __repr__(self) -> str:
        return f"<Site {self.name} {self.subnet4} {self.subnet6} hosts={list(self.hosts)}>"

    def networks(self) -> list[Network]:
        """The site's /24 and /64 (how a fault aimed at this site matches)."""
        return [self.subnet4, self.subnet6]
