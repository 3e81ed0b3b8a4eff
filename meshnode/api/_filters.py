"""Flow filters (Hubble-style): fields inside one filter ANDed, values inside a field ORed, filters ORed,
result = (any whitelist filter, or all when none) minus (any blacklist filter).

Requests are validated here, once: a bad CIDR or an unknown enum value raises ``FilterError`` naming the
field (``whitelist[1].dst``), which the servicer turns into INVALID_ARGUMENT. Valid filters are handed to
the store as SQL (``Selector.row_filters``), so rows that do not match are never decoded; the Python
``matches`` is the same logic for live records (follow streams, events) and re-checks every stored one.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from meshnode._model import FlowRecord
from meshnode.sensor import EventRecord
from meshnode.store import FlowQuery, RowFilter
from meshnode.v1 import flow_pb2

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class FilterError(ValueError):
    """A malformed filter or request field; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


@lru_cache(maxsize=65536)
def _addr(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None


def _enum_names(enum: object, values: Sequence[int], field: str, zero_ok: bool = False) -> frozenset[str]:
    names = []
    for v in values:
        try:
            name: str = enum.Name(v)  # type: ignore[attr-defined]
        except ValueError:
            raise FilterError(field, f"unknown value {v}") from None
        if v == 0 and not zero_ok:
            raise FilterError(field, f"{name} is not a value to filter on")
        names.append(name.lower())
    return frozenset(names)


_PROTO_NAMES = {6: "tcp", 17: "udp"}


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """One validated ``FlowFilter``."""

    comm: frozenset[str]
    pid: frozenset[int]
    dst_addrs: frozenset[str]
    dst_nets: tuple[IPNetwork, ...]
    dport: frozenset[int]
    sport: frozenset[int]
    outcome: frozenset[str]
    proto: frozenset[str]
    direction: frozenset[str]
    cgroup: tuple[str, ...]
    port: frozenset[int]
    event_type: frozenset[str]

    def matches(self, rec: FlowRecord) -> bool:
        """True when every set field matches ``rec``."""
        if self.comm and rec.comm not in self.comm:
            return False
        if self.pid and rec.pid not in self.pid:
            return False
        if self.dport and rec.dport not in self.dport:
            return False
        if self.sport and rec.sport not in self.sport:
            return False
        if self.port and rec.dport not in self.port and rec.sport not in self.port:
            return False
        if self.outcome and rec.outcome not in self.outcome:
            return False
        if self.proto and rec.proto not in self.proto:
            return False
        if self.direction and rec.direction not in self.direction:
            return False
        if self.cgroup and not any(_under(rec.cgroup, p) for p in self.cgroup):
            return False
        if self.dst_addrs or self.dst_nets:
            if rec.dst in self.dst_addrs:
                return True
            addr = _addr(rec.dst)
            if addr is None or not any(addr in net for net in self.dst_nets):
                return False
        return True

    def matches_event(self, ev: EventRecord) -> bool:
        """True when the event's type and its flow match."""
        if self.event_type and ev.type not in self.event_type:
            return False
        return self.matches(ev.flow)

    def row_filter(self) -> RowFilter:
        """The same filter for the store's SQL."""
        equals: dict[str, list[int | str]] = {}
        for name in ("comm", "pid", "dport", "sport", "outcome", "proto", "direction"):
            values = getattr(self, name)
            if values:
                equals[name] = sorted(values)
        return RowFilter(
            equals=equals, any_port=sorted(self.port), cgroup_prefixes=self.cgroup,
            dst=[*sorted(self.dst_addrs), *(str(n) for n in self.dst_nets)],
        )


def _under(path: str, prefix: str) -> bool:
    path = path or "/"
    prefix = prefix.rstrip("/")
    return not prefix or path == prefix or path.startswith(prefix + "/")


def compile_filter(f: flow_pb2.FlowFilter, field: str) -> CompiledFilter:
    """Validate one filter; ``field`` is its name in the request (``whitelist[0]``)."""
    addrs: set[str] = set()
    nets: list[IPNetwork] = []
    for i, d in enumerate(f.dst):
        if "/" in d:
            try:
                nets.append(ipaddress.ip_network(d, strict=False))
            except ValueError:
                raise FilterError(f"{field}.dst[{i}]", f"{d!r} is not a CIDR such as 10.0.0.0/8") from None
        else:
            a = _addr(d)
            if a is None:
                raise FilterError(f"{field}.dst[{i}]", f"{d!r} is not an IP address or CIDR") from None
            addrs.add(str(a))
            nets.append(ipaddress.ip_network(a))
    protos = set()
    for v in f.proto:
        if v not in _PROTO_NAMES:
            raise FilterError(f"{field}.proto", f"unknown value {v}")
        protos.add(_PROTO_NAMES[v])
    for name in ("dport", "sport", "port"):
        for v in getattr(f, name):
            if v > 65535:
                raise FilterError(f"{field}.{name}", f"{v} is not a port")
    return CompiledFilter(
        comm=frozenset(f.comm), pid=frozenset(f.pid), dst_addrs=frozenset(addrs), dst_nets=tuple(nets),
        dport=frozenset(f.dport), sport=frozenset(f.sport),
        outcome=_enum_names(flow_pb2.Outcome, f.outcome, f"{field}.outcome"),
        proto=frozenset(protos),
        direction=_enum_names(flow_pb2.Direction, f.direction, f"{field}.direction"),
        cgroup=tuple(f.cgroup), port=frozenset(f.port),
        event_type=_enum_names(flow_pb2.EventType, f.event_type, f"{field}.event_type"),
    )


@dataclass(frozen=True, slots=True)
class Selector:
    """A whitelist and a blacklist of compiled filters."""

    whitelist: tuple[CompiledFilter, ...] = ()
    blacklist: tuple[CompiledFilter, ...] = ()

    @classmethod
    def from_request(
        cls, whitelist: Sequence[flow_pb2.FlowFilter], blacklist: Sequence[flow_pb2.FlowFilter]
    ) -> Selector:
        """Validate the request's filters; raises ``FilterError``."""
        return cls(
            tuple(compile_filter(f, f"whitelist[{i}]") for i, f in enumerate(whitelist)),
            tuple(compile_filter(f, f"blacklist[{i}]") for i, f in enumerate(blacklist)),
        )

    def matches(self, rec: FlowRecord) -> bool:
        """(any whitelist, or all) minus (any blacklist)."""
        if self.whitelist and not any(f.matches(rec) for f in self.whitelist):
            return False
        return not any(f.matches(rec) for f in self.blacklist)

    def matches_event(self, ev: EventRecord) -> bool:
        """The same for events (``event_type`` counts)."""
        if self.whitelist and not any(f.matches_event(ev) for f in self.whitelist):
            return False
        return not any(f.matches_event(ev) for f in self.blacklist)

    def query(self, base: FlowQuery) -> FlowQuery:
        """``base`` with this selector's filters pushed down into SQL."""
        return dataclasses.replace(
            base, allow=[f.row_filter() for f in self.whitelist], deny=[f.row_filter() for f in self.blacklist]
        )
