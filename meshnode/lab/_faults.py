"""Faults: drop, reject, random loss, blackhole routes and rate limits, on a host or a site uplink.

Every fault is applied inside a namespace the lab owns (the host's own, or its switch's / site router's for
the other end of a veth), never in the root namespace, so a test cannot break the machine it runs on and
deleting the lab's namespaces removes whatever a test forgot.

How each kind is made, and why that way:

* ``drop`` and ``loss``: nft tables of their own per fault (named ``<lab id>-f<n>``): what the host
  receives is dropped in its ``input`` hook (matching ``eth0``, so loopback keeps working); what it sends
  is dropped on the ``ingress`` hook of its switch port, i.e. on the wire, because a packet dropped in the
  sender's own ``output`` hook is a local transmit error to its TCP, not a loss (no retransmission counted).
  A site router filters in ``forward``. ``loss`` is ``numgen random mod 1000 < permille drop``: this
  kernel has no netem. One table per fault and namespace: removing it is ``nft delete table``, and faults
  compose (a drop in any base chain is final).
* ``reject``: in the host's own ``input``/``output`` hooks, ``reject with tcp reset`` for TCP (the
  connector sees ECONNREFUSED, the flow outcome is ``refused``) and ``reject with icmpx port-unreachable``
  for everything else (UDP senders see ECONNREFUSED on their next recv). The host's own RSTs, ICMP errors
  and IPv6 neighbour discovery pass: a refusing host is up and answering.
* ``blackhole``: routing, not filtering, so the sensor sees what a broken route looks like: a ``blackhole``
  (or ``unreachable``/``prohibit``) route to each peer network with a low metric so it wins over the lab's
  routes; for "all traffic" on a host, a policy rule of that type (a route cannot undercut the connected
  /24). Locally originated connects fail at once (blackhole: EINVAL; unreachable: EHOSTUNREACH, or
  ENETUNREACH from the rule; prohibit: EACCES); connects from the far side time out because the answers
  vanish. On a site router, forwarded traffic gets nothing (blackhole) or an ICMP error (unreachable).
* ``rate``: ``tbf`` on both ends of the veth (egress of the host's ``eth0`` shapes what it sends, egress of
  the switch port shapes what it receives). Between two hosts only: an ``htb`` root whose unclassified
  traffic is unshaped, one class holding the ``tbf``, and ``u32`` filters steering the peer's addresses
  there (this kernel has no ``prio`` qdisc and no ``flower`` classifier).
"""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Literal, Protocol, Self, runtime_checkable

from . import _cmd
from ._errors import LabCommandError, LabUsageError
from ._names import nft_table, parse_rate, tbf_burst_bytes

FaultKind = Literal["drop", "reject", "loss", "blackhole", "rate"]
#: ``in``: traffic arriving at the target; ``out``: traffic leaving it; ``both``: both.
Direction = Literal["both", "in", "out"]
#: One way of a ``Direction``.
Way = Literal["in", "out"]
RouteType = Literal["blackhole", "unreachable", "prohibit"]
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_DIRECTIONS: tuple[Direction, ...] = ("both", "in", "out")
_ROUTE_TYPES: tuple[RouteType, ...] = ("blackhole", "unreachable", "prohibit")
#: Metric of blackhole routes: below the lab's own routes (100 for inter-site, 256 for IPv6 connected).
_BLACKHOLE_METRIC = 1
#: Policy-rule priorities for host-wide blackholes start here (after ``local`` at 0, before ``main``).
_RULE_PREF_BASE = 1000
_TBF_LATENCY = "100ms"


@runtime_checkable
class HasNetworks(Protocol):
    """Anything a fault can be aimed at: a ``Host`` (its /32 and /128) or a ``Site`` (its /24 and /64)."""

    @property
    def name(self) -> str: ...

    def networks(self) -> list[Network]:
        """The address networks that identify this peer's traffic."""
        ...


#: A fault's peer: a host, a site, or an address / network as text ("10.130.1.2", "fd6d::/64").
Peer = HasNetworks | str


class _LabHandle(Protocol):
    """What a fault needs from its lab (kept narrow so this module does not import the lab)."""

    @property
    def id(self) -> str: ...

    @property
    def closed(self) -> bool: ...

    def _next_fault_seq(self) -> int: ...

    def _fault_added(self, fault: Fault) -> None: ...

    def _fault_removed(self, fault: Fault) -> None: ...


@dataclass(frozen=True)
class Attachment:
    """Where a target's faults go: its end of a veth, and the other end.

    Attributes:
        netns: namespace of the target's end (a host, or a site router for an uplink).
        iface: the target's end of the veth (``eth0``, ``up0``).
        far_netns: namespace of the other end (the switch, or the core).
        far_iface: the other end (``p-<host>``, ``u-<site>``).
        forwarding: True when the target routes other machines' traffic (a site router): filters then hook
            ``forward`` instead of ``input``/``output``.
    """

    netns: str
    iface: str
    far_netns: str
    far_iface: str
    forwarding: bool


def resolve_peer(peer: Peer | None) -> list[Network]:
    """The networks a fault's peer stands for; empty for "all traffic"."""
    if peer is None:
        return []
    if isinstance(peer, str):
        try:
            return [ipaddress.ip_network(peer, strict=False)]
        except ValueError as exc:
            raise LabUsageError(f"peer {peer!r} is not an IP address or network") from exc
    if isinstance(peer, HasNetworks):
        return list(peer.networks())
    raise LabUsageError(f"peer must be a Host, a Site or an address string, not {type(peer).__name__}")


def peer_label(peer: Peer | None) -> str:
    """How a peer reads in messages and reprs."""
    if peer is None:
        return "all"
    return peer if isinstance(peer, str) else peer.name


def _check_direction(direction: str) -> Direction:
    for known in _DIRECTIONS:
        if direction == known:
            return known
    raise LabUsageError(f"direction must be one of {_DIRECTIONS}, not {direction!r}")


def verdicts(kind: FaultKind, percent: float | None = None) -> list[str]:
    """nft statements that make a filter fault of ``kind`` (drop, reject, loss)."""
    if kind == "drop":
        return ["drop"]
    if kind == "reject":
        return ["meta l4proto tcp reject with tcp reset", "reject with icmpx port-unreachable"]
    if kind == "loss":
        if percent is None or not 0.1 <= percent <= 100:
            raise LabUsageError(f"loss percent must be in [0.1, 100] (nft draws per mille), not {percent!r}")
        permille = round(percent * 10)
        return [f"numgen random mod 1000 < {permille} drop"]
    raise LabUsageError(f"{kind!r} is not a filter fault")


def local_exemptions(kind: FaultKind, way: Way) -> list[str]:
    """Packets a filter fault of ``kind`` must let through on a host, in the ``input`` or ``output`` chain.

    A ``reject`` on a host answers a SYN from the peer with a RST (a datagram with an ICMP error) that leaves
    through the host's own ``output`` hook, where the same fault would swallow it and turn "refused" into
    "timeout"; and it must not reject IPv6 neighbour discovery, or the host could not even address its
    ICMP errors. A refusing host is up and answering: only ``drop`` makes it silent.
    """
    if kind != "reject":
        return []
    exempt = ["icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"]
    if way == "out":
        exempt += [
            "tcp flags & rst == rst accept",
            "icmp type destination-unreachable accept",
            "icmpv6 type destination-unreachable accept",
        ]
    return exempt


def ways(direction: Direction) -> list[Way]:
    """The one-way directions a ``Direction`` stands for."""
    return ["out", "in"] if direction == "both" else [direction]


def _addr_matches(networks: Sequence[Network], field: str) -> list[str]:
    """nft address matches for ``networks`` (one per family present), each ending in a space."""
    v4 = [str(n) for n in networks if n.version == 4]
    v6 = [str(n) for n in networks if n.version == 6]
    matches = []
    if v4:
        matches.append(f"ip {field} {{ {', '.join(v4)} }} ")
    if v6:
        matches.append(f"ip6 {field} {{ {', '.join(v6)} }} ")
    return matches


def render_filter_table(
    table: str,
    *,
    iface: str,
    forwarding: bool,
    directions: Sequence[Way],
    statements: Sequence[str],
    networks: Sequence[Network],
    exempt: Callable[[Way], Sequence[str]] = lambda way: (),
) -> str:
    """The nft ruleset (for ``nft -f``) of a filter fault in the target's own namespace.

    Args:
        table: table name; carries the lab id so a table can be traced back to its lab.
        iface: the lab interface the traffic crosses; matching it spares loopback.
        forwarding: hook ``forward`` (a router) rather than ``input``/``output`` (a host).
        directions: which ways the affected traffic goes.
        statements: the verdict statements, from ``verdicts()``.
        networks: the peer's networks; empty means all traffic on ``iface``.
        exempt: per direction, ``accept`` statements evaluated first on a host (see ``local_exemptions``).
    """
    chains: dict[str, list[str]] = {}
    for way in directions:
        hook = "forward" if forwarding else ("output" if way == "out" else "input")
        iface_match = f'{"oifname" if way == "out" else "iifname"} "{iface}"'
        addr_matches = _addr_matches(networks, "daddr" if way == "out" else "saddr") if networks else [""]
        rules = chains.setdefault(hook, [])
        if not forwarding:
            rules += [f"{iface_match} {statement}" for statement in exempt(way)]
        for addr in addr_matches:
            for statement in statements:
                rules.append(f"{iface_match} {addr}{statement}")
    lines = [f"table inet {table} {{"]
    for hook, rules in chains.items():
        lines += [f"\tchain {hook} {{", f"\t\ttype filter hook {hook} priority 0; policy accept;"]
        lines += [f"\t\t{rule}" for rule in rules]
        lines.append("\t}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def render_ingress_table(table: str, *, device: str, statements: Sequence[str], networks: Sequence[Network]) -> str:
    """The nft ruleset of a filter fault on what a host sends, placed on the switch port it arrives at.

    Dropping there rather than in the host's ``output`` hook matters: a packet dropped by the sender's own
    netfilter is reported back to its TCP as a local transmit failure (no retransmission is counted, the
    socket just stalls), while a packet lost on the wire is what real loss looks like to the sender.
    """
    matches = _addr_matches(networks, "daddr") if networks else ["meta protocol { ip, ip6 } "]
    lines = [
        f"table netdev {table} {{",
        "\tchain ingress {",
        f'\t\ttype filter hook ingress device "{device}" priority 0; policy accept;',
    ]
    lines += [f"\t\t{match}{statement}" for match in matches for statement in statements]
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


def tbf_args(rate_bps: int) -> list[str]:
    """``tc`` arguments of a tbf qdisc shaping to ``rate_bps``."""
    return ["tbf", "rate", f"{rate_bps}bit", "burst", str(tbf_burst_bytes(rate_bps)), "latency", _TBF_LATENCY]


def rate_commands(iface: str, rate_bps: int, networks: Sequence[Network], field: str) -> list[list[str]]:
    """``tc`` commands (without ``tc -n <ns>``) shaping ``iface``'s egress, all of it or only ``networks``.

    Args:
        field: ``dst`` on the target's own end (traffic it sends to the peer), ``src`` on the far end
            (traffic the peer sends to it).
    """
    if not networks:
        return [["qdisc", "add", "dev", iface, "root", "handle", "1:", *tbf_args(rate_bps)]]
    # htb, not prio: this kernel has no sch_prio. Unclassified packets go to htb's direct queue (the
    # default class 0 does not exist), i.e. unshaped; the peer's packets go to class 1:3, shaped by tbf.
    burst = str(tbf_burst_bytes(rate_bps))
    commands = [
        ["qdisc", "add", "dev", iface, "root", "handle", "1:", "htb"],
        ["class", "add", "dev", iface, "parent", "1:", "classid", "1:3", "htb",
         "rate", f"{rate_bps}bit", "ceil", f"{rate_bps}bit", "burst", burst, "quantum", "60000"],
        ["qdisc", "add", "dev", iface, "parent", "1:3", "handle", "30:", *tbf_args(rate_bps)],
    ]  # fmt: skip
    for prio, net in enumerate(networks, start=1):
        proto, match = ("ip", "ip") if net.version == 4 else ("ipv6", "ip6")
        commands.append(
            ["filter", "add", "dev", iface, "parent", "1:", "protocol", proto, "prio", str(prio),
             "u32", "match", match, field, str(net), "flowid", "1:3"]
        )  # fmt: skip
    return commands


class Fault:
    """A fault in force; remove it with ``remove()`` or by leaving its ``with`` block.

    Removal is idempotent, and after the lab is closed it is a no-op: the namespaces took the fault with them.

    Attributes:
        kind: ``drop``, ``reject``, ``loss``, ``blackhole`` or ``rate``.
        target: the host or uplink the fault is on.
        peer: what it is aimed at (``None``: all the target's traffic).
        networks: the peer's networks (empty for all traffic).
        params: kind-specific parameters (``percent``, ``rate_bps``, ``direction``, ``route_type``).
    """

    def __init__(
        self,
        kind: FaultKind,
        target: FaultTarget,
        peer: Peer | None,
        networks: list[Network],
        params: dict[str, object],
        undo: list[Callable[[], None]],
    ) -> None:
        self.kind: FaultKind = kind
        self.target = target
        self.peer = peer
        self.networks = networks
        self.params = params
        self._undo = undo
        self._active = True

    @property
    def active(self) -> bool:
        """True until the fault is removed or its lab is closed."""
        return self._active and not self.target._lab.closed

    def remove(self) -> None:
        """Undo the fault; every undo step is tried even if one fails, then the first failure is raised."""
        if not self._active:
            return
        self._active = False
        self.target._fault_gone(self)
        if self.target._lab.closed:
            return
        errors: list[LabCommandError] = []
        for step in reversed(self._undo):
            try:
                step()
            except LabCommandError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()

    def __repr__(self) -> str:
        params = "".join(f" {key}={value}" for key, value in self.params.items())
        state = "active" if self.active else "removed"
        return f"<Fault {self.kind} on {self.target.name} peer={peer_label(self.peer)}{params} {state}>"


class FaultTarget:
    """Something faults can be put on: a host (all its traffic, or its traffic with one peer) or an uplink.

    Subclasses set ``name``, ``_lab`` and ``_attach``; an uplink also overrides ``_remote_networks``.
    """

    name: str
    _lab: _LabHandle
    _attach: Attachment

    def __init__(self) -> None:
        self._faults: list[Fault] = []

    @property
    def faults(self) -> list[Fault]:
        """Faults in force on this target."""
        return [fault for fault in self._faults if fault.active]

    def drop(self, peer: Peer | None = None, *, direction: Direction = "both") -> Fault:
        """Drop packets silently: a TCP connect times out (outcome ``timeout``), UDP gets no answer.

        Args:
            peer: only traffic with this host / site / address (default: all traffic of the target, except
                loopback inside a host).
            direction: ``out`` what the target sends (dropped on the wire, at its switch port), ``in`` what
                it receives, ``both``.
        """
        return self._filter("drop", peer, direction, verdicts("drop"), {})

    def reject(self, peer: Peer | None = None, *, direction: Direction = "both") -> Fault:
        """Refuse: TCP gets a reset (connect raises ECONNREFUSED), other traffic ICMP port-unreachable.

        With ``out`` the target's own connects are refused; with ``in`` connects *to* it are; ``both``.
        """
        return self._filter("reject", peer, direction, verdicts("reject"), {})

    def loss(self, percent: float, peer: Peer | None = None, *, direction: Direction = "both") -> Fault:
        """Lose each packet with probability ``percent``/100 (0.1 % steps), in each chosen direction.

        What the target sends is lost on the wire (its TCP sees real loss and retransmits). With
        ``direction="both"`` a data segment and its ACK each run the risk, so 30 % both ways loses about half
        the round trips and bulk TCP crawls through repeated RTO backoff; to make a sender retransmit while
        still finishing quickly, use ``direction="out"`` on the sender.
        """
        statements = verdicts("loss", percent)
        return self._filter("loss", peer, direction, statements, {"percent": percent})

    def blackhole(self, peer: Peer | None = None, *, route_type: RouteType = "blackhole") -> Fault:
        """Route traffic to ``peer`` (default: everything) into a ``blackhole`` / ``unreachable`` / ``prohibit``.

        Routes only steer what the target sends, yet a connection from the peer fails too: its SYN arrives
        but the SYN-ACK has no way back. A connect from the target fails at once: ``EINVAL`` (blackhole),
        ``EHOSTUNREACH`` (unreachable; ``ENETUNREACH`` without a peer), ``EACCES`` (prohibit).
        """
        if route_type not in _ROUTE_TYPES:
            raise LabUsageError(f"route_type must be one of {_ROUTE_TYPES}, not {route_type!r}")
        self._check_open()
        networks = resolve_peer(peer)
        netns = self._attach.netns
        seq = self._lab._next_fault_seq()
        undo: list[Callable[[], None]] = []
        fault = Fault("blackhole", self, peer, networks, {"route_type": route_type}, undo)
        route_nets = networks or self._remote_networks()
        try:
            if route_nets is None:
                pref = str(_RULE_PREF_BASE + seq)
                for family in ("-4", "-6"):
                    what = f"{route_type} all traffic of {self.name}"
                    _cmd.run(["ip", "-n", netns, family, "rule", "add", "pref", pref, route_type], what=what)
                    undo.append(_undo_cmd(["ip", "-n", netns, family, "rule", "del", "pref", pref], what))
            else:
                for net in route_nets:
                    family = "-4" if net.version == 4 else "-6"
                    route = [route_type, str(net), "metric", str(_BLACKHOLE_METRIC + seq % 50)]
                    what = f"{route_type} route to {net} on {self.name}"
                    _cmd.run(["ip", "-n", netns, family, "route", "add", *route], what=what)
                    undo.append(_undo_cmd(["ip", "-n", netns, family, "route", "del", *route], what))
        except BaseException:
            _rollback(undo)
            raise
        return self._added(fault)

    def rate(self, rate: int | str, peer: Peer | None = None, *, direction: Direction = "both") -> Fault:
        """Shape the target's traffic (with ``peer``, only that) to ``rate`` with tbf.

        Args:
            rate: bits per second, or tc-style text (``"8mbit"``; ``"1mbps"`` is bytes per second).
            peer: shape only traffic with this peer; other traffic keeps full speed.
            direction: ``out`` shapes what the target sends, ``in`` what it receives.

        Raises:
            LabUsageError: a rate fault is already on this target (a veth end has one root qdisc).
        """
        direction = _check_direction(direction)
        self._check_open()
        if any(fault.kind == "rate" for fault in self.faults):
            raise LabUsageError(f"{self.name} already has a rate fault; remove it first")
        rate_bps = parse_rate(rate)
        networks = resolve_peer(peer)
        ends = []
        if direction in ("both", "out"):
            ends.append((self._attach.netns, self._attach.iface, "dst"))
        if direction in ("both", "in"):
            ends.append((self._attach.far_netns, self._attach.far_iface, "src"))
        undo: list[Callable[[], None]] = []
        params: dict[str, object] = {"rate_bps": rate_bps, "direction": direction}
        fault = Fault("rate", self, peer, networks, params, undo)
        try:
            for netns, iface, field in ends:
                what = f"rate-limit {iface} of {self.name} to {rate_bps} bit/s"
                for command in rate_commands(iface, rate_bps, networks, field):
                    _cmd.run(["tc", "-n", netns, *command], what=what)
                    if command[0] == "qdisc" and "root" in command:
                        undo.append(_undo_cmd(["tc", "-n", netns, "qdisc", "del", "dev", iface, "root"], what))
        except BaseException:
            _rollback(undo)
            raise
        return self._added(fault)

    # -- internals -------------------------------------------------------------------------------------

    def _remote_networks(self) -> list[Network] | None:
        """Networks "all traffic" means for a route-based fault; None: use a policy rule (a host)."""
        return None

    def _filter(
        self,
        kind: FaultKind,
        peer: Peer | None,
        direction: Direction,
        statements: list[str],
        params: dict[str, object],
    ) -> Fault:
        """Install a filter fault: one nft table per namespace it needs, each removed by its undo step.

        Traffic a host receives is filtered in its ``input`` hook. Traffic it sends is dropped on the switch
        port it arrives at (see ``render_ingress_table``), except for ``reject``, whose resets have to come
        from the host's own stack. A site router filters in ``forward``, which is already off the senders.
        """
        direction = _check_direction(direction)
        self._check_open()
        networks = resolve_peer(peer)
        table = nft_table(self._lab.id, self._lab._next_fault_seq())
        attach = self._attach
        what = f"{kind} on {self.name} (peer {peer_label(peer)})"
        local = ways(direction)
        rulesets: list[tuple[str, str, str]] = []  # netns, family, ruleset
        if "out" in local and not attach.forwarding and kind != "reject":
            local.remove("out")
            ruleset = render_ingress_table(table, device=attach.far_iface, statements=statements, networks=networks)
            rulesets.append((attach.far_netns, "netdev", ruleset))
        if local:
            ruleset = render_filter_table(
                table,
                iface=attach.iface,
                forwarding=attach.forwarding,
                directions=local,
                statements=statements,
                networks=networks,
                exempt=lambda way: local_exemptions(kind, way),
            )
            rulesets.append((attach.netns, "inet", ruleset))
        undo: list[Callable[[], None]] = []
        try:
            for netns, family, ruleset in rulesets:
                _cmd.nft(netns, ruleset, what=what)
                delete = _cmd.netns_argv(netns, [_cmd.tool("nft"), "delete", "table", family, table])
                undo.append(_undo_cmd(delete, f"remove {what}"))
        except BaseException:
            _rollback(undo)
            raise
        params = {**params, "direction": direction, "table": table}
        return self._added(Fault(kind, self, peer, networks, params, undo))

    def _check_open(self) -> None:
        if self._lab.closed:
            raise LabUsageError(f"lab {self._lab.id} is closed; cannot add a fault to {self.name}")

    def _added(self, fault: Fault) -> Fault:
        self._faults.append(fault)
        self._lab._fault_added(fault)
        return fault

    def _fault_gone(self, fault: Fault) -> None:
        if fault in self._faults:
            self._faults.remove(fault)
        self._lab._fault_removed(fault)


def _undo_cmd(argv: list[str], what: str) -> Callable[[], None]:
    def undo() -> None:
        _cmd.run(argv, what=f"undo {what}")

    return undo


def _rollback(undo: list[Callable[[], None]]) -> None:
    """Best-effort undo of a half-applied fault, so a failure leaves nothing behind; the first error wins."""
    for step in reversed(undo):
        with contextlib.suppress(LabCommandError):
            step()
