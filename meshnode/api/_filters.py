"""Flow filters (Hubble-style): fields inside one filter ANDed, values inside a field ORed, filters ORed,
result = (any whitelist filter, or all when none) minus (any blacklist filter).

Requests are validated here, once: a bad CIDR, an unknown enum value or a filter larger than the API's
limits (``meshnode.api._limits``: 1,024 values a field, 4,096 a request) raises ``FilterError`` naming the
field (``whitelist[1].dst``), which the servicer turns into INVALID_ARGUMENT; sizes are checked before any
value is parsed. Valid filters are handed to the store as SQL (``Selector.row_filters``), so rows that do
not match are never decoded; the Python ``matches`` is the same logic for live records (follow streams,
events). Its cost per record does not grow with the number of values: addresses and networks are looked up
in sets (one lookup per prefix length), cgroup prefixes by walking the record's path up to the root.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from meshnode._dns import RCODES, is_rcode
from meshnode._model import FlowRecord
from meshnode.api._limits import MAX_FILTER_VALUES, MAX_FILTERS, MAX_REQUEST_VALUES, MAX_TEXT
from meshnode.sensor import EventRecord
from meshnode.store import DnsQuery, FlowQuery, RowFilter
from meshnode.v1 import flow_pb2, observer_pb2

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
_REPEATED: Final = tuple(f.name for f in flow_pb2.FlowFilter.DESCRIPTOR.fields)
_TEXT_FIELDS: Final = ("comm", "dst", "cgroup")


class NetSet:
    """Networks as sets of prefixes, one set per (IP version, prefix length): ``addr in nets`` costs one
    lookup per distinct prefix length, however many networks there are."""

    __slots__ = ("_groups", "networks")

    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self.networks = tuple(networks)
        groups: dict[tuple[int, int], set[int]] = {}
        for net in self.networks:
            shift = net.max_prefixlen - net.prefixlen
            groups.setdefault((net.version, shift), set()).add(int(net.network_address) >> shift)
        self._groups = tuple((version, shift, frozenset(s)) for (version, shift), s in groups.items())

    def __bool__(self) -> bool:
        return bool(self.networks)

    def __contains__(self, addr: IPAddress) -> bool:
        value = int(addr)
        return any(version == addr.version and value >> shift in prefixes
                   for version, shift, prefixes in self._groups)


def _under_any(path: str, prefixes: frozenset[str]) -> bool:
    """True when ``path`` is one of ``prefixes`` (without trailing slashes) or below one."""
    path = path or "/"
    if "" in prefixes:
        return True
    while path:
        if path in prefixes:
            return True
        cut = path.rfind("/")
        if cut <= 0:
            return False
        path = path[:cut]
    return False


def check_sizes(filters: Sequence[flow_pb2.FlowFilter], field: str, budget: int = MAX_REQUEST_VALUES) -> int:
    """Refuse filters larger than the API's limits before anything is parsed; returns the values left of
    the request's ``budget``. Raises ``FilterError`` naming the field."""
    if len(filters) > MAX_FILTERS:
        raise FilterError(field, f"{len(filters):,} filters; at most {MAX_FILTERS} are allowed")
    for i, f in enumerate(filters):
        for name in _REPEATED:
            values = getattr(f, name)
            n = len(values)
            if n > MAX_FILTER_VALUES:
                raise FilterError(f"{field}[{i}].{name}",
                                  f"{n:,} values; at most {MAX_FILTER_VALUES:,} are allowed in one field")
            budget -= n
            if budget < 0:
                raise FilterError(f"{field}[{i}].{name}",
                                  f"the request's filters hold more than {MAX_REQUEST_VALUES:,} values")
            if name in _TEXT_FIELDS:
                for j, v in enumerate(values):
                    if len(v) > MAX_TEXT:
                        raise FilterError(f"{field}[{i}].{name}[{j}]",
                                          f"{len(v):,} characters; at most {MAX_TEXT:,} are allowed")
    return budget


@dataclass(frozen=True, slots=True)
class CompiledFilter:
    """One validated ``FlowFilter``."""

    comm: frozenset[str]
    pid: frozenset[int]
    dst_addrs: frozenset[str]
    dst_nets: NetSet
    dport: frozenset[int]
    sport: frozenset[int]
    outcome: frozenset[str]
    proto: frozenset[str]
    direction: frozenset[str]
    cgroup: tuple[str, ...]
    port: frozenset[int]
    event_type: frozenset[str]
    cgroup_prefixes: frozenset[str]
    """``cgroup`` without trailing slashes, for ``matches``."""

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
        if self.cgroup and not _under_any(rec.cgroup, self.cgroup_prefixes):
            return False
        if self.dst_addrs or self.dst_nets:
            if rec.dst in self.dst_addrs:
                return True
            addr = _addr(rec.dst)
            if addr is None or (str(addr) not in self.dst_addrs and addr not in self.dst_nets):
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
            dst=[*sorted(self.dst_addrs), *(str(n) for n in self.dst_nets.networks)],
        )


def compile_filter(f: flow_pb2.FlowFilter, field: str) -> CompiledFilter:
    """Validate one filter; ``field`` is its name in the request (``whitelist[0]``).

    Call ``check_sizes`` on the request's filters first: this parses every value.
    """
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
        comm=frozenset(f.comm), pid=frozenset(f.pid), dst_addrs=frozenset(addrs), dst_nets=NetSet(nets),
        dport=frozenset(f.dport), sport=frozenset(f.sport),
        outcome=_enum_names(flow_pb2.Outcome, f.outcome, f"{field}.outcome"),
        proto=frozenset(protos),
        direction=_enum_names(flow_pb2.Direction, f.direction, f"{field}.direction"),
        cgroup=tuple(f.cgroup), port=frozenset(f.port),
        event_type=_enum_names(flow_pb2.EventType, f.event_type, f"{field}.event_type"),
        cgroup_prefixes=frozenset(p.rstrip("/") for p in f.cgroup),
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
        """Validate the request's filters (sizes first); raises ``FilterError``."""
        check_sizes(blacklist, "blacklist", check_sizes(whitelist, "whitelist"))
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

    def event_types(self) -> tuple[str, ...]:
        """The event types an event must have to pass, when every whitelist filter names some (their union,
        sorted), for a stored-event read to select in SQL before it decodes anything; () when any may."""
        if not self.whitelist or not all(f.event_type for f in self.whitelist):
            return ()
        return tuple(sorted(frozenset().union(*(f.event_type for f in self.whitelist))))

    def query(self, base: FlowQuery) -> FlowQuery:
        """``base`` with this selector's filters pushed down into SQL."""
        return dataclasses.replace(
            base, allow=[f.row_filter() for f in self.whitelist], deny=[f.row_filter() for f in self.blacklist]
        )


def dns_query(request: observer_pb2.DnsTransactionsRequest, since_ns: int, until_ns: int) -> DnsQuery:
    """A ``DnsTransactionsRequest``'s filters, validated as flow filters are (sizes first, then values);
    raises ``FilterError`` naming the field."""
    budget = MAX_REQUEST_VALUES
    for name in ("names", "rcodes", "servers"):
        values = getattr(request, name)
        if len(values) > MAX_FILTER_VALUES:
            raise FilterError(name, f"{len(values):,} values; at most {MAX_FILTER_VALUES:,} are allowed in one field")
        budget -= len(values)
        if budget < 0:
            raise FilterError(name, f"the request holds more than {MAX_REQUEST_VALUES:,} values")
        for j, v in enumerate(values):
            if len(v) > MAX_TEXT:
                raise FilterError(f"{name}[{j}]", f"{len(v):,} characters; at most {MAX_TEXT:,} are allowed")
    for j, name in enumerate(request.names):
        if not name.strip("*."):
            raise FilterError(f"names[{j}]", f"{name!r} is not a name (example: api.example.com or *.example.com)")
    rcodes = [r.upper() for r in request.rcodes]
    for j, rcode in enumerate(rcodes):
        if not is_rcode(rcode):
            raise FilterError(f"rcodes[{j}]", f"{request.rcodes[j]!r} is not an answer code "
                              f"({', '.join(RCODES.values())} or RCODE<n>)")
    for j, server in enumerate(request.servers):
        if _addr(server) is None:
            raise FilterError(f"servers[{j}]", f"{server!r} is not an IP address")
    return DnsQuery(since_ns=since_ns, until_ns=until_ns, names=tuple(request.names), rcodes=tuple(rcodes),
                    servers=tuple(str(_addr(s)) for s in request.servers), failed_only=request.failed_only)
