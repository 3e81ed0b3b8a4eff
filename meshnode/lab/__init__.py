"""The lab: hosts on one machine for tests, benchmarks and demos (``meshnode lab``).

Each host is a network namespace plus a cgroup v2 directory; hosts are joined by a bridge in a "switch"
namespace (or, in a site lab, by per-site router namespaces whose uplinks meet in a "core" namespace).
Processes run *on* a host (inside its namespace and its cgroup); faults (drop, reject, random loss,
blackhole routes, tbf rate limits) are put on a host, on a pair of hosts, or on a site's uplink. Nothing is
changed in the root namespace, and everything is removed at the end, even after a failure or a signal::

    from meshnode.lab import Lab

    with Lab(3) as lab:                        # hosts a, b, c
        a, b = lab["a"], lab["b"]
        server = b.python(SERVER_CODE, "7000")  # python -c SERVER_CODE 7000, on b
        a.run(["curl", f"http://{b.ip}:7000/"])
        with a.reject(peer=b):                 # a and b refuse each other (TCP reset)
            ...
        with b.loss(30, direction="out"):      # 30 % of what b sends is lost on the wire
            ...

    with Lab(sites={"east": 3, "west": 3}) as lab:   # east1..east3 behind one router, west1..west3 another
        with lab.sites["east"].uplink.drop():        # east cut off from west; inside east all is well
            ...

``Fleet`` is the scenario fleet built on it (six hosts in two sites, traffic, nodes, named faults): the one
lab of ``meshnode lab up``, the blame tests and the benchmark. ``python -m meshnode.lab`` removes what
crashed labs left. pytest fixtures around ``Lab`` live with the tests (``tests/_support/lab.py``); this
package imports no pytest.

Modules (internal):

    _names      names, address plans, rates: pure functions
    _errors     the exceptions (LabError and its kinds)
    _cmd        running ip / nft / tc, prerequisites
    _cgroup     cgroup v2 directories of the hosts
    _faults     faults and the rules that make them
    _host       Host, Site, Uplink
    _lab        Lab
    _registry   teardown at interpreter exit and on signals
    _sweep      removing what crashed labs left
    _scenarios  the scenario fleet: Fleet, SCENARIOS, SITES, SERVICES, CLIENTS
    _watch      BlameWatch: a node's blame answers, asked from inside the lab every few hundred ms
"""

from __future__ import annotations

from ._cmd import missing_prerequisites
from ._errors import LabCommandError, LabError, LabUnavailableError, LabUsageError
from ._faults import Direction, Fault, FaultKind, FaultTarget, Peer, RouteType
from ._host import Host, Site, Uplink
from ._lab import Lab
from ._names import CGROUP_ROOT, IPV4_SPACE, IPV6_SPACE, parse_lab_id, parse_rate
from ._scenarios import (
    CLIENTS,
    NODE_PORT,
    SCENARIOS,
    SERVICES,
    SITES,
    Client,
    Fleet,
    Scenario,
    ScenarioHandle,
    Service,
    Suspect,
)
from ._sweep import SweepReport, owner_alive, sweep
from ._watch import BlameWatch

__all__ = [
    "CGROUP_ROOT",
    "CLIENTS",
    "IPV4_SPACE",
    "IPV6_SPACE",
    "NODE_PORT",
    "SCENARIOS",
    "SERVICES",
    "SITES",
    "BlameWatch",
    "Client",
    "Direction",
    "Fault",
    "FaultKind",
    "FaultTarget",
    "Fleet",
    "Host",
    "Lab",
    "LabCommandError",
    "LabError",
    "LabUnavailableError",
    "LabUsageError",
    "Peer",
    "RouteType",
    "Scenario",
    "ScenarioHandle",
    "Service",
    "Site",
    "Suspect",
    "SweepReport",
    "Uplink",
    "missing_prerequisites",
    "owner_alive",
    "parse_lab_id",
    "parse_rate",
    "sweep",
]
