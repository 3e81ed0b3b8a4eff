"""The one-shot and streaming commands: status, flows, health, events, query (peers and validate: _trust;
blame: _blame).

Each ``cmd_*`` turns flags into a request, asks the node through ``cli._client``, and prints either JSON
(DESIGN field names) or a view from ``cli._views``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from meshnode.cli._client import Node
from meshnode.cli._convert import flow_json_line, message_dict
from meshnode.cli._exceptions import EXIT_OK, NotAvailable, UsageError
from meshnode.cli._output import console, emit, is_plain, print_json, print_json_line
from meshnode.cli._units import parse_time_ns
from meshnode.v1 import flow_pb2, observer_pb2

MESH_MISSING = "this node has no mesh service yet (needs meshnode with the mesh; see issue 6)"

_PROTO = {"tcp": flow_pb2.TCP, "udp": flow_pb2.UDP}


def _flat(values: list[list[str]] | None) -> list[str]:
    return [v for group in values or [] for v in group]


def flow_filter(args: argparse.Namespace) -> flow_pb2.FlowFilter | None:
    """The FlowFilter of the filter flags, or None when no filter flag was given."""
    f = flow_pb2.FlowFilter(
        comm=args.proc or [],
        pid=args.pid or [],
        dst=args.dst or [],
        port=args.port or [],
        dport=args.dport or [],
        cgroup=args.cgroup or [],
        outcome=[o.upper() for o in _flat(args.outcome)],
        proto=[_PROTO[p] for p in _flat(args.proto)],
        direction=[d.upper() for d in _flat(args.direction)],
        event_type=[t.upper() for t in _flat(getattr(args, "type", None))],
    )
    return f if f.ByteSize() else None


FLOWS_DEFAULT_SINCE_S = 15 * 60


def _time_range(args: argparse.Namespace, now_ns: int) -> tuple[int, int]:
    given = getattr(args, "since", None)
    since = parse_time_ns(given, now_ns) if given and given != "all" else 0
    until = parse_time_ns(args.until, now_ns) if getattr(args, "until", None) else 0
    if since and until and until < since:
        raise UsageError(f"--until ({args.until}) is before --since ({args.since})")
    return since, until


def cmd_status(args: argparse.Namespace, node: Node) -> int:
    doc = message_dict(node.status())
    if args.json:
        print_json(doc)
        return EXIT_OK
    from meshnode.cli._views import status_view

    c = console(wide=args.wide)
    emit(c, status_view(doc, wide=args.wide, plain=is_plain(c)))
    return EXIT_OK


def cmd_flows(args: argparse.Namespace, node: Node) -> int:
    if args.follow and args.until:
        raise UsageError("--follow and --until conflict: a followed stream has no end")
    now = time.time_ns()
    since, until = _time_range(args, now)
    if args.since is None and not until:
        # The node answers oldest first from since_ns, so "all history" would show the oldest records;
        # like hubble observe, a bare `meshctl flows` means recent ones.
        since = now - FLOWS_DEFAULT_SINCE_S * 1_000_000_000
    if args.fleet:
        from meshnode.cli import _fleet

        return int(_mesh_call(lambda: _fleet.run(args, node, since, until)))
    if args.where or args.per_site:
        raise UsageError("--where and --per-site select members of a fleet query: add --fleet")
    req = observer_pb2.FlowsRequest(number=args.limit, follow=args.follow, since_ns=since, until_ns=until,
                                    include_interim=args.interim)
    f = flow_filter(args)
    if f is not None:
        req.whitelist.append(f)
    out = sys.stdout
    if args.json:
        for batch in node.flows(req):
            out.write("".join(map(flow_json_line, batch)))
            if args.follow:
                out.flush()
        return EXIT_OK
    from meshnode.cli._flowtext import FlowPrinter

    # Columns have fixed widths, so each batch prints as it arrives and still lines up (follow or not,
    # and a 100,000-record answer never waits for one giant table).
    printer = FlowPrinter(wide=args.wide)
    header = True
    for batch in node.flows(req):
        printer.batch(batch, header=header)
        header = False
        if args.follow:
            out.flush()
    if header and not args.follow:
        printer.message("no flows match" + (f" since {args.since}" if args.since else ""))
    return EXIT_OK


def cmd_health(args: argparse.Namespace, node: Node) -> int:
    since, until = _time_range(args, time.time_ns())
    req = observer_pb2.HealthRequest(since_ns=since, until_ns=until)
    f = flow_filter(args)
    if f is not None:
        req.filter.CopyFrom(f)
    doc = message_dict(node.health(req))
    if args.json:
        print_json(doc)
        return EXIT_OK
    from meshnode.cli._views import health_view

    c = console(wide=args.wide)
    emit(c, health_view(doc, wide=args.wide, plain=is_plain(c)))
    return EXIT_OK


EVENTS_SINCE_MAX: Final = 100_000
"""Past events ``events --since`` asks for without ``--last``: every one the node holds (its store keeps
at most this many)."""


def cmd_events(args: argparse.Namespace, node: Node) -> int:
    since, _ = _time_range(args, time.time_ns())
    last = args.last if args.last is not None else (EVENTS_SINCE_MAX if since else 20)
    req = observer_pb2.EventsRequest(number=last, follow=args.follow, since_ns=since)
    f = flow_filter(args)
    if f is not None:
        req.whitelist.append(f)
    if args.json:
        def note_err(text: str) -> None:
            sys.stderr.write(f"meshctl events: note: {text}\n")

        for ev in node.events(req, note_err):
            print_json_line(message_dict(ev))
        return EXIT_OK
    from rich.text import Text

    from meshnode.cli._views import events_table

    c = console(wide=args.wide)
    plain = is_plain(c)

    def note(text: str) -> None:
        emit(c, Text(f"note: {text}", style="" if plain else "yellow"))

    if args.follow:
        header = True
        for ev in node.events(req, note):
            emit(c, events_table([message_dict(ev)], wide=args.wide, plain=plain, header=header))
            header = False
            sys.stdout.flush()
        return EXIT_OK
    rows = [message_dict(ev) for ev in node.events(req, note)]
    if not rows:
        emit(c, "no events")
        return EXIT_OK
    emit(c, events_table(rows, wide=args.wide, plain=plain))
    return EXIT_OK


def _mesh_call(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except NotAvailable:
        raise NotAvailable(MESH_MISSING) from None


def cmd_peers(args: argparse.Namespace, node: Node) -> int:
    doc = message_dict(_mesh_call(node.peers))
    if args.json:
        print_json(doc)
        return EXIT_OK
    from meshnode.cli._views import peers_view

    c = console(wide=args.wide)
    emit(c, peers_view(doc, wide=args.wide, plain=is_plain(c)))
    return EXIT_OK


def cmd_query(args: argparse.Namespace, node: Node) -> int:
    from meshnode.cli._fleet import selector as label_selector

    if args.fleet:
        args.follow = False
        return cmd_flows(args, node)
    if flow_filter(args) is not None or args.since or args.until or args.limit or args.interim or args.per_site:
        raise UsageError("filters, --since, --until, --limit, --interim and --per-site ask for flow records: "
                         "add --fleet (meshctl query without it aggregates the members' digests)")
    selector = label_selector(args.where)
    from meshnode.v1 import mesh_pb2

    req = mesh_pb2.FleetQueryRequest(destination=args.destination, selector=selector, group_by=args.group_by,
                                     deadline_ms=int(args.deadline * 1000))
    doc = message_dict(_mesh_call(lambda: node.fleet_query(req)))
    if args.json:
        print_json(doc)
        return EXIT_OK
    from meshnode.cli._views import query_view

    c = console(wide=args.wide)
    emit(c, query_view(doc, wide=args.wide, plain=is_plain(c)))
    return EXIT_OK


_COMMANDS: dict[str, Callable[[argparse.Namespace, Node], int]] = {
    "status": cmd_status,
    "flows": cmd_flows,
    "health": cmd_health,
    "events": cmd_events,
    "peers": cmd_peers,
    "query": cmd_query,
}


def run(args: argparse.Namespace) -> int:
    """Run ``args.command`` against ``args.node``."""
    with Node(args.node, timeout=args.timeout) as node:
        return _COMMANDS[args.command](args, node)
