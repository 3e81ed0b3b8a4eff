"""The lab: hosts on one machine for tests, benchmarks and demos.

Each host is a network namespace plus a cgroup v2 directory; hosts are joined by a bridge in a "switch"
namespace (or, in a site lab, by per-site router namespaces whose uplinks meet in a "core" namespace).
Processes run *on* a host (inside its namespace and its cgroup); faults (drop, reject, random loss,
blackhole routes, tbf rate limits) are put on a host, on a pair of hosts, or on a site's uplink. Nothing is
changed in the root namespace, and everything is removed at the end, even after a failure or a signal::

    from tests.lab import Lab

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

In pytest, use the ``make_lab`` fixture (a factory) or bind ``lab_fixture(...)`` to a name; both call
``tests._env.require_kernel()`` first, so the test skips (fails under ``CI=true``) on a machine without
root, eBPF or cgroup v2::

    from tests.lab import lab_fixture, make_lab  # noqa: F401 (fixtures are used by name)

    trio = lab_fixture(3, scope="module")

    def test_something(trio): ...
    def test_other(make_lab):  # noqa: F811 (the parameter is the imported fixture)
        lab = make_lab(sites={"east": 2, "west": 2})

Outside pytest (benchmarks, demos), ``Lab`` alone is enough and pytest is not imported.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._cmd import missing_prerequisites
from ._errors import LabCommandError, LabError, LabUnavailableError, LabUsageError
from ._faults import Direction, Fault, FaultKind, FaultTarget, Peer, RouteType
from ._host import Host, Site, Uplink
from ._lab import Lab
from ._names import CGROUP_ROOT, IPV4_SPACE, IPV6_SPACE, parse_lab_id, parse_rate
from ._sweep import SweepReport, owner_alive, sweep

if TYPE_CHECKING:
    from ._pytest import LabFactory, lab_fixture, make_lab

__all__ = [
    "CGROUP_ROOT",
    "IPV4_SPACE",
    "IPV6_SPACE",
    "Direction",
    "Fault",
    "FaultKind",
    "FaultTarget",
    "Host",
    "Lab",
    "LabCommandError",
    "LabError",
    "LabFactory",
    "LabUnavailableError",
    "LabUsageError",
    "Peer",
    "RouteType",
    "Site",
    "SweepReport",
    "Uplink",
    "lab_fixture",
    "make_lab",
    "missing_prerequisites",
    "owner_alive",
    "parse_lab_id",
    "parse_rate",
    "sweep",
]

_PYTEST_NAMES = frozenset({"LabFactory", "lab_fixture", "make_lab"})


def __getattr__(name: str) -> Any:
    """Load the pytest helpers on first use, so benchmarks and demos can use the lab without pytest."""
    if name in _PYTEST_NAMES:
        from . import _pytest

        return getattr(_pytest, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
