"""The lab: hosts in network namespaces and cgroups, joined by bridges, torn down whatever happens."""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from . import _cgroup, _cmd, _registry
from ._errors import LabError, LabUsageError
from ._faults import Fault
from ._host import Host, Site
from ._names import (
    BRIDGE,
    CGROUP_ROOT,
    DEFAULT_SWEEP_PREFIX,
    GATEWAY_INDEX,
    HOST_IFACE,
    MAX_HOSTS_PER_SITE,
    MAX_SITES,
    UPLINK_IFACE,
    check_name,
    core_netns,
    core_port,
    default_host_names,
    host_ipv4,
    host_ipv6,
    host_netns,
    lab_id,
    lab_ipv4,
    lab_ipv6,
    site_ipv4,
    site_ipv6,
    site_netns,
    slot_for,
    slot_of,
    switch_netns,
    switch_port,
)
from ._sweep import SweepReport, find, remove_lab, sweep

_SEQ = itertools.count(1)
_SEQ_LOCK = threading.Lock()
#: Metric of the routes between sites, above the blackhole faults' metric so those win.
_SITE_ROUTE_METRIC = 100
_BRIDGE_OPTS = ["type", "bridge", "mcast_snooping", "0", "stp_state", "0"]


def _plan(
    hosts: int | Sequence[str], sites: Mapping[str, int | Sequence[str]] | None
) -> list[tuple[str | None, list[str]]]:
    """Group host names by site (``None``: a flat lab), validating every name."""
    if sites is not None:
        if hosts not in (0, (), []):
            raise LabUsageError("give either hosts (a flat lab) or sites, not both")
        if not sites or len(sites) > MAX_SITES:
            raise LabUsageError(f"a site lab needs 1..{MAX_SITES} sites, got {len(sites)}")
        groups: list[tuple[str | None, list[str]]] = []
        for site, members in sites.items():
            check_name(site, "site")
            names = [f"{site}{i + 1}" for i in range(members)] if isinstance(members, int) else list(members)
            groups.append((site, names))
    else:
        names = default_host_names(hosts) if isinstance(hosts, int) else list(hosts)
        groups = [(None, names)]
    seen: set[str] = set()
    for _site, names in groups:
        if len(names) > MAX_HOSTS_PER_SITE:
            raise LabUsageError(f"at most {MAX_HOSTS_PER_SITE} hosts per site, got {len(names)}")
        for name in names:
            check_name(name, "host")
            if name in seen:
                raise LabUsageError(f"host name {name!r} appears twice")
            seen.add(name)
    if not seen:
        raise LabUsageError("a lab needs at least one host")
    return groups


class Lab:
    """Hosts on one machine, each a network namespace plus a cgroup v2 directory, joined by bridges.

    A flat lab (``Lab(3)``, ``Lab(["web", "db"])``) puts all hosts on one bridge in a "switch" namespace,
    in ``10.<slot>.1.0/24`` and ``fd6d:6e6c:6162:<slot>01::/64`` (slot in hex there); the slot (128..254)
    differs between labs alive at the same time, so parallel runs never share addresses. A site lab
    (``Lab(sites={"east": 3, "west": 3})``) gives each site its own namespace holding the site's bridge and
    a router (the hosts' default gateway, .254 and ::fe), and joins the routers through uplinks to a "core"
    bridge; a fault on ``lab.sites["east"].uplink`` then affects only east's traffic with other sites. The
    root namespace is never changed: every link, address, route and nft table lives in a namespace the lab
    owns.

    Use it as a context manager, or call ``close()``. Teardown also runs at interpreter exit and on
    SIGTERM/SIGHUP, and a later lab sweeps what a SIGKILLed one left (see ``sweep``).

    Args:
        hosts: number of hosts (named ``a``, ``b``, ...) or their names.
        sites: site name -> number of hosts (named ``<site>1``, ...) or their names; excludes ``hosts``.
        sweep_stale: first remove leftovers of labs whose owning process is dead.

    Attributes:
        hosts: hosts by name, in creation order. ``lab["a"]`` is ``lab.hosts["a"]``.
        sites: sites by name (empty for a flat lab).
        cgroup, cgroup_rel: the lab's cgroup directory (parent of the hosts'), absolute and below the root.
        slot: the lab's address slot; ``ipv4_net`` (a /16) and ``ipv6_net`` (a /56) hold every lab address.
        sweep_report: what the start-up sweep removed (None with ``sweep_stale=False``).

    Raises:
        LabUnavailableError: not root, no cgroup v2 hierarchy mounted, or a tool is missing.
        LabUsageError: bad names or counts.
        LabCommandError: a command failed while building (what was built is removed again).
    """

    def __init__(
        self,
        hosts: int | Sequence[str] = 0,
        *,
        sites: Mapping[str, int | Sequence[str]] | None = None,
        sweep_stale: bool = True,
    ) -> None:
        groups = _plan(hosts, sites)
        _cmd.check_prerequisites()
        with _SEQ_LOCK:
            seq = next(_SEQ)
        self._id = lab_id(os.getpid(), seq)
        self._owner_pid = os.getpid()
        self._closed = False
        self._fault_seq = itertools.count(1)
        self._faults: list[Fault] = []
        self.cgroup: Path = CGROUP_ROOT / self._id
        self.cgroup_rel = "/" + self._id
        self.hosts: dict[str, Host] = {}
        self.sites: dict[str, Site] = {}
        self._infra_netns: list[str] = []
        self.sweep_report: SweepReport | None = sweep(DEFAULT_SWEEP_PREFIX) if sweep_stale else None
        self._remove_own_leftovers()
        self.slot = slot_for(self._id, _slots_in_use())
        self.ipv4_net = lab_ipv4(self.slot)
        self.ipv6_net = lab_ipv6(self.slot)
        started = time.monotonic()
        _registry.add(self)
        try:
            self._build(groups, flat=sites is None)
        except BaseException:
            # the build error is the one worth seeing; a later sweep removes whatever close() could not
            with contextlib.suppress(LabError):
                self.close()
            raise
        self.build_seconds = time.monotonic() - started

    # -- public surface -------------------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The lab id, ``mnlab-<owner pid>-<seq>``: the start of every name the lab gives."""
        return self._id

    @property
    def owner_pid(self) -> int:
        """Pid of the process that built the lab (only it tears the lab down)."""
        return self._owner_pid

    @property
    def closed(self) -> bool:
        """True once ``close()`` has started."""
        return self._closed

    @property
    def netns_names(self) -> list[str]:
        """Every namespace of the lab: hosts, then switch / site routers / core."""
        return [host.netns for host in self.hosts.values()] + list(self._infra_netns)

    @property
    def faults(self) -> list[Fault]:
        """Faults in force anywhere in the lab."""
        return [fault for fault in self._faults if fault.active]

    def host(self, name: str) -> Host:
        """The host called ``name``."""
        try:
            return self.hosts[name]
        except KeyError:
            raise LabUsageError(f"lab {self._id} has no host {name!r} (hosts: {list(self.hosts)})") from None

    def __getitem__(self, name: str) -> Host:
        return self.host(name)

    def __iter__(self) -> Iterator[Host]:
        return iter(self.hosts.values())

    def __len__(self) -> int:
        return len(self.hosts)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Lab {self._id} hosts={list(self.hosts)} sites={list(self.sites)} {state}>"

    def clear_faults(self) -> None:
        """Remove every fault in force (each one's removal is attempted; the first error is raised)."""
        first: LabError | None = None
        for fault in reversed(self.faults):
            try:
                fault.remove()
            except LabError as exc:
                first = first or exc
        if first is not None:
            raise first

    def close(self) -> None:
        """Kill every process on every host, then delete the namespaces and cgroup directories.

        Idempotent. Every step is attempted even if an earlier one fails; then a ``LabError`` lists what is
        left (a later ``sweep`` retries it).
        """
        if self._closed:
            return
        self._closed = True
        problems: list[str] = []
        try:
            for host in self.hosts.values():
                _cgroup.kill(host.cgroup)
            for host in self.hosts.values():
                host._reap(timeout=5.0)
            report = SweepReport()
            remove_lab(self._id, self.netns_names, self.cgroup if self.cgroup.exists() else None, report)
            problems += report.errors
            left = [name for name in _cmd.list_netns() if name.startswith(self._id + "-")]
            problems += [f"namespace {name} still exists" for name in left]
            if self.cgroup.exists():
                problems.append(f"cgroup {self.cgroup} still exists")
        finally:
            _registry.discard(self)
        if problems:
            raise LabError(f"teardown of lab {self._id} left: " + "; ".join(problems))

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- the FaultTarget's view of the lab --------------------------------------------------------------

    def _next_fault_seq(self) -> int:
        return next(self._fault_seq)

    def _fault_added(self, fault: Fault) -> None:
        self._faults.append(fault)

    def _fault_removed(self, fault: Fault) -> None:
        if fault in self._faults:
            self._faults.remove(fault)

    # -- building ---------------------------------------------------------------------------------------

    def _remove_own_leftovers(self) -> None:
        """A dead process with our pid may have left a lab with our id: remove it before reusing the id."""
        left = find(self._id)
        if self._id in left:
            remove_lab(self._id, left[self._id].netns, left[self._id].cgroup, SweepReport())

    def _build(self, groups: list[tuple[str | None, list[str]]], *, flat: bool) -> None:
        self.cgroup.mkdir()
        core = core_netns(self._id)
        placed: list[tuple[Site | None, str, str, int, str]] = []  # site, host, host netns, index, switch ns
        for site_index, (site_name, names) in enumerate(groups, start=1):
            site: Site | None = None
            if site_name is None:
                switch = switch_netns(self._id)
            else:
                switch = site_netns(self._id, site_name)
                site = Site(
                    self,
                    site_name,
                    site_index,
                    netns=switch,
                    core_netns=core,
                    subnet4=site_ipv4(self.slot, site_index),
                    subnet6=site_ipv6(self.slot, site_index),
                    gateway=host_ipv4(self.slot, site_index, GATEWAY_INDEX),
                    gateway6=host_ipv6(self.slot, site_index, GATEWAY_INDEX),
                )
                self.sites[site_name] = site
            self._infra_netns.append(switch)
            for host_index, name in enumerate(names, start=1):
                placed.append((site, name, host_netns(self._id, name), host_index, switch))
        if not flat:
            self._infra_netns.append(core)

        # Namespaces, all in one ip process; host namespaces are registered first so a failure here is
        # still cleaned up by close().
        for site, name, netns, host_index, switch in placed:
            index = site.index if site is not None else 1
            host = Host(
                self,
                name,
                netns=netns,
                switch_netns=switch,
                ip=_iface4(self.slot, index, host_index),
                ip6=_iface6(self.slot, index, host_index),
                cgroup=self.cgroup / name,
                site=site,
            )
            self.hosts[name] = host
            if site is not None:
                site.hosts[name] = host
        _cmd.ip_batch(None, [f"netns add {name}" for name in self.netns_names], what="create namespaces")
        # No duplicate address detection: with it, every IPv6 address (link-locals included) stays
        # "tentative" for a second or two after link-up, and a router cannot resolve its next hop meanwhile,
        # which made the first IPv6 connect across sites take 2 s. Set before any interface exists.
        _cmd.sysctl_many(
            self.netns_names,
            {"net.ipv6.conf.all.accept_dad": "0", "net.ipv6.conf.default.accept_dad": "0"},
            what="disable IPv6 duplicate address detection",
        )

        if not flat:
            _cmd.ip_batch(core, _bridge_lines(), what="create the core bridge")
        for switch in self._infra_netns:
            if switch == core:
                continue
            site = next((s for s in self.sites.values() if s.netns == switch), None)
            lines = _bridge_lines()
            for host in self.hosts.values():
                if host._attach.far_netns == switch:
                    port = switch_port(host.name)
                    lines += [
                        f"link add {port} type veth peer name {HOST_IFACE} netns {host.netns}",
                        f"link set {port} master {BRIDGE} up",
                    ]
            if site is not None:
                lines += self._router_lines(site, core)
            _cmd.ip_batch(switch, lines, what=f"build switch namespace {switch}")
            if site is not None:
                _cmd.sysctl(
                    switch,
                    {"net.ipv4.ip_forward": "1", "net.ipv6.conf.all.forwarding": "1"},
                    what=f"enable forwarding on site {site.name}",
                )
        if not flat:
            ports = [f"link set {core_port(site)} master {BRIDGE} up" for site in self.sites]
            _cmd.ip_batch(core, ports, what="attach site uplinks to the core bridge")
            self._add_site_routes()
            for site in self.sites.values():
                site.uplink._remote = [
                    net for other in self.sites.values() if other is not site for net in other.networks()
                ]

        for host in self.hosts.values():
            lines = [
                "link set lo up",
                f"link set {HOST_IFACE} up",
                f"addr add {host.interface4} dev {HOST_IFACE}",
                # nodad: the address is usable at once instead of "tentative" for a second or two
                f"addr add {host.interface6} dev {HOST_IFACE} nodad",
            ]
            if host.site is not None:
                lines += [
                    f"route add default via {host.site.gateway}",
                    f"route add default via {host.site.gateway6}",
                ]
            _cmd.ip_batch(host.netns, lines, what=f"configure host {host.name}")
            host.cgroup.mkdir()

    def _router_lines(self, site: Site, core: str) -> list[str]:
        """ip commands that make a site namespace the site's gateway and connect its uplink to the core."""
        transit4 = site_ipv4(self.slot, 0)
        transit6 = site_ipv6(self.slot, 0)
        lines = [
            f"addr add {site.gateway}/{site.subnet4.prefixlen} dev {BRIDGE}",
            f"addr add {site.gateway6}/{site.subnet6.prefixlen} dev {BRIDGE} nodad",
            f"link add {UPLINK_IFACE} type veth peer name {core_port(site.name)} netns {core}",
            f"addr add {host_ipv4(self.slot, 0, site.index)}/{transit4.prefixlen} dev {UPLINK_IFACE}",
            f"addr add {host_ipv6(self.slot, 0, site.index)}/{transit6.prefixlen} dev {UPLINK_IFACE} nodad",
            f"link set {UPLINK_IFACE} up",
        ]
        return lines

    def _add_site_routes(self) -> None:
        """Routes from every site router to every other site, via that site's transit address."""
        for site in self.sites.values():
            lines = []
            for other in self.sites.values():
                if other is site:
                    continue
                lines += [
                    f"route add {other.subnet4} via {host_ipv4(self.slot, 0, other.index)} metric {_SITE_ROUTE_METRIC}",
                    f"route add {other.subnet6} via {host_ipv6(self.slot, 0, other.index)} metric {_SITE_ROUTE_METRIC}",
                ]
            _cmd.ip_batch(site.netns, lines, what=f"route site {site.name} to the other sites")


def _slots_in_use() -> set[int]:
    """Address slots of the labs on this machine now (any owner), read from one host of each."""
    slots = set()
    for left in find(DEFAULT_SWEEP_PREFIX).values():
        host_ns = next((name for name in left.netns if "-h-" in name), None)
        if host_ns is None:
            continue
        argv = ["ip", "-n", host_ns, "-o", "-4", "addr", "show", "dev", HOST_IFACE]
        result = _cmd.run(argv, what=f"read the addresses of {host_ns}", check=False)
        for word in result.stdout.split():
            slot = slot_of(word.split("/")[0])
            if slot is not None:
                slots.add(slot)
    return slots


def _bridge_lines() -> list[str]:
    return ["link set lo up", f"link add {BRIDGE} {' '.join(_BRIDGE_OPTS)}", f"link set {BRIDGE} up"]


def _iface4(slot: int, site_index: int, host_index: int) -> ipaddress.IPv4Interface:
    return ipaddress.IPv4Interface((host_ipv4(slot, site_index, host_index), 24))


def _iface6(slot: int, site_index: int, host_index: int) -> ipaddress.IPv6Interface:
    return ipaddress.IPv6Interface((host_ipv6(slot, site_index, host_index), 64))
