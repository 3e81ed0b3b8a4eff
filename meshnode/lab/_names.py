"""Names and addresses of lab objects: pure functions, no I/O, unit-tested without root.

Every kernel object a lab creates carries the lab id ``mnlab-<owner pid>-<seq>`` at the start of its name
(network namespaces, the cgroup directory, nft tables). The owner pid in the name is what lets a later run
tell a crashed lab (owner dead: sweep it) from a lab another test process is using right now (leave it).

Interface names are limited to 15 bytes by the kernel, so they carry no prefix: every interface the lab makes
lives inside a namespace the lab owns (``eth0`` in a host, ``p-<host>`` on a switch, ``up0``/``u-<site>`` for
site uplinks), which already scopes it, and the root namespace never sees one.
"""

from __future__ import annotations

import ipaddress
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

#: Where this host mounts the cgroup v2 hierarchy (labs make their hosts' cgroups under it): the sensor's.
from meshnode.probes import CGROUP_ROOT as CGROUP_ROOT

from ._errors import LabUsageError

#: Where ``ip netns add`` pins named network namespaces.
NETNS_DIR = Path("/run/netns")
#: First component of every lab id; ``sweep()`` defaults to it.
BASE = "mnlab"
DEFAULT_SWEEP_PREFIX = BASE + "-"

#: Interface of a host towards its switch (inside the host namespace).
HOST_IFACE = "eth0"
#: Bridge inside a switch / site namespace and inside the core namespace.
BRIDGE = "br0"
#: Interface of a site router towards the core (inside the site namespace).
UPLINK_IFACE = "up0"

# Host and site names become part of interface names ("p-<host>", "u-<site>", 15 bytes at most) and of
# namespace names, so they are short, lower-case and shell-safe.
_NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
_LAB_ID_RE = re.compile(r"^(?P<id>(?P<base>[a-z]+)-(?P<pid>[0-9]+)-(?P<seq>[0-9]+))(?:-|$)")
_RESERVED = frozenset({"sw", "core"})

#: IPv4 space of all labs. Each lab takes one /16, ``10.<slot>.0.0/16``, slot 128..254 chosen per lab so
#: that labs running side by side (parallel test runs) use different addresses: a sensor watching the whole
#: machine then never mixes their flows up. Within a lab: ``10.<slot>.<site>.<host>/24``, site 1 for a flat
#: lab, site 0 the transit net between site routers.
IPV4_SPACE = ipaddress.IPv4Network("10.128.0.0/9")
#: IPv6 space of all labs: a ULA /48 whose global id spells "mnlab" (6d 6e 6c 61 62). Each lab takes a /56,
#: ``fd6d:6e6c:6162:<slot><site>::/64`` per site (slot and site one byte each).
IPV6_SPACE = ipaddress.IPv6Network("fd6d:6e6c:6162::/48")
#: Slots a lab can take (second IPv4 octet, high byte of the IPv6 subnet id).
SLOTS = range(128, 255)
#: Host index of a site's router on the site LAN (.254 and ::fe).
GATEWAY_INDEX = 254
MAX_HOSTS_PER_SITE = 200
MAX_SITES = 200


@dataclass(frozen=True)
class LabId:
    """A parsed lab id: the text ``mnlab-<pid>-<seq>`` and the pid of the process that owns the lab."""

    text: str
    pid: int
    seq: int


def lab_id(pid: int, seq: int) -> str:
    """The lab id a process with ``pid`` gives to its ``seq``-th lab."""
    return f"{BASE}-{pid}-{seq}"


def parse_lab_id(name: str) -> LabId | None:
    """The lab id at the start of an object name (netns, cgroup dir, nft table), or None if it has none.

    >>> parse_lab_id("mnlab-42-3-h-a")
    LabId(text='mnlab-42-3', pid=42, seq=3)
    """
    m = _LAB_ID_RE.match(name)
    if m is None or m.group("base") != BASE:
        return None
    return LabId(m.group("id"), int(m.group("pid")), int(m.group("seq")))


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it can name a host or site, else raise ``LabUsageError`` saying what is allowed."""
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise LabUsageError(
            f"{what} name {name!r} must be 1-10 characters, lower-case letters and digits, starting with a "
            "letter (it becomes part of 15-byte interface names)"
        )
    if name in _RESERVED:
        raise LabUsageError(f"{what} name {name!r} is reserved for the lab's own namespaces")
    return name


def default_host_names(count: int) -> list[str]:
    """Names for ``count`` hosts: ``a``, ``b``, ... up to 26 hosts, else ``h1``, ``h2``, ..."""
    if count < 0:
        raise LabUsageError(f"host count must be >= 0, not {count}")
    if count <= 26:
        return [chr(ord("a") + i) for i in range(count)]
    return [f"h{i + 1}" for i in range(count)]


def host_netns(lab: str, host: str) -> str:
    """Name of the network namespace of ``host``."""
    return f"{lab}-h-{host}"


def switch_netns(lab: str) -> str:
    """Name of the switch namespace of a flat lab (the bridge that joins all hosts)."""
    return f"{lab}-sw"


def site_netns(lab: str, site: str) -> str:
    """Name of a site's namespace: the site's LAN bridge and its router towards the core."""
    return f"{lab}-s-{site}"


def core_netns(lab: str) -> str:
    """Name of the core namespace: the bridge joining the site routers' uplinks."""
    return f"{lab}-core"


def switch_port(host: str) -> str:
    """Interface, on the switch side, of the veth pair that connects ``host``."""
    return f"p-{host}"


def core_port(site: str) -> str:
    """Interface, on the core side, of the veth pair that is ``site``'s uplink."""
    return f"u-{site}"


def nft_table(lab: str, seq: int) -> str:
    """Name of the nft table of the ``seq``-th fault of a lab (inside the namespace the fault lives in)."""
    return f"{lab}-f{seq}"


def slot_for(lab: str, taken: set[int]) -> int:
    """The address slot of a new lab: a hash of its id, moved on to the next free slot if that is taken.

    Hashing spreads labs of different processes apart without coordination; ``taken`` (slots of the labs
    alive right now) removes the remaining collisions except for labs built in the same millisecond.
    """
    start = zlib.crc32(lab.encode()) % len(SLOTS)
    for step in range(len(SLOTS)):
        slot = SLOTS[(start + step) % len(SLOTS)]
        if slot not in taken:
            return slot
    return SLOTS[start]  # more live labs than slots: share one; they are isolated anyway


def slot_of(address: str) -> int | None:
    """The slot a lab IPv4 address belongs to (its second octet), or None for other addresses."""
    try:
        ip = ipaddress.IPv4Address(address)
    except ValueError:
        return None
    return int(ip.packed[1]) if ip in IPV4_SPACE and int(ip.packed[1]) in SLOTS else None


def lab_ipv4(slot: int) -> ipaddress.IPv4Network:
    """The IPv4 /16 of the lab in ``slot``."""
    _check_index(slot, SLOTS[-1], "slot", low=SLOTS[0])
    return ipaddress.IPv4Network((int(IPV4_SPACE.network_address) + ((slot - 128) << 16), 16))


def lab_ipv6(slot: int) -> ipaddress.IPv6Network:
    """The IPv6 /56 of the lab in ``slot``."""
    _check_index(slot, SLOTS[-1], "slot", low=SLOTS[0])
    return ipaddress.IPv6Network((int(IPV6_SPACE.network_address) + (slot << 72), 56))


def site_ipv4(slot: int, site_index: int) -> ipaddress.IPv4Network:
    """IPv4 /24 of a site (index 1..MAX_SITES); index 0 is the transit network between site routers."""
    _check_index(site_index, MAX_SITES, "site")
    return ipaddress.IPv4Network((int(lab_ipv4(slot).network_address) + (site_index << 8), 24))


def site_ipv6(slot: int, site_index: int) -> ipaddress.IPv6Network:
    """IPv6 /64 of a site (index 1..MAX_SITES); index 0 is the transit network between site routers."""
    _check_index(site_index, MAX_SITES, "site")
    return ipaddress.IPv6Network((int(lab_ipv6(slot).network_address) + (site_index << 64), 64))


def host_ipv4(slot: int, site_index: int, host_index: int) -> ipaddress.IPv4Address:
    """IPv4 address number ``host_index`` (1-based) in a site's /24."""
    _check_index(host_index, 254, "host", low=1)
    return site_ipv4(slot, site_index).network_address + host_index


def host_ipv6(slot: int, site_index: int, host_index: int) -> ipaddress.IPv6Address:
    """IPv6 address number ``host_index`` (1-based) in a site's /64."""
    _check_index(host_index, 254, "host", low=1)
    return site_ipv6(slot, site_index).network_address + host_index


def _check_index(value: int, high: int, what: str, low: int = 0) -> None:
    if not low <= value <= high:
        raise LabUsageError(f"{what} index {value} is outside {low}..{high}")


_RATE_UNITS = {
    "bit": 1,
    "kbit": 1_000,
    "mbit": 1_000_000,
    "gbit": 1_000_000_000,
    "bps": 8,
    "kbps": 8_000,
    "mbps": 8_000_000,
    "gbps": 8_000_000_000,
}
_RATE_RE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([a-z]*)\s*$")


def parse_rate(rate: int | str) -> int:
    """A rate in bits per second, from an int (bits/s) or a tc-style string.

    Units follow tc: ``kbit``/``mbit``/``gbit`` are bits, ``kbps``/``mbps``/``gbps`` are *bytes* per second
    (powers of 1000). A bare number is bits per second. Tests compare measured throughput with the result,
    so the lab never passes the caller's text to tc unparsed.

    >>> parse_rate("8mbit"), parse_rate("1mbps"), parse_rate(64000)
    (8000000, 8000000, 64000)
    """
    if isinstance(rate, bool):
        raise LabUsageError(f"rate must be an int or a string like '8mbit', not {rate!r}")
    if isinstance(rate, int):
        bps = rate
    else:
        m = _RATE_RE.match(rate.lower())
        if m is None or m.group(2) not in {"", *_RATE_UNITS}:
            raise LabUsageError(f"rate {rate!r} is not a number with a unit in {sorted(_RATE_UNITS)}")
        bps = int(float(m.group(1)) * _RATE_UNITS.get(m.group(2), 1))
    if bps < 8_000:
        raise LabUsageError(f"rate {rate!r} is below 8 kbit/s; tbf cannot shape that usefully")
    return bps


def tbf_burst_bytes(rate_bps: int) -> int:
    """Bucket size for tbf at ``rate_bps``: 20 ms of traffic, and never less than 16 KiB.

    tbf needs a bucket of at least one timer tick of traffic and larger than one full frame; 16 KiB covers both
    with room while still keeping the first burst small next to a transfer of a few hundred KiB.
    """
    return max(rate_bps // 8 // 50, 16 * 1024)
